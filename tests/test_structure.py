"""The shape of the package: imports only go down the layers, and every DVC stage lists the code it runs.

Both checks read the source with ``ast`` (nothing is imported), so they are fast and see lazy imports inside
functions too.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
PACKAGE = "humo"

LAYERS: tuple[tuple[str, ...], ...] = (
    ("humo", "humo.constants", "humo.config", "humo.hashing", "humo.log", "humo.tracking"),
    ("humo.data",),
    ("humo.diffusion",),
    ("humo.models",),
    ("humo.features",),
    ("humo.training",),
    ("humo.inference",),
    ("humo.evaluation",),
    ("humo.registry",),
    ("humo.cli", "humo.__main__"),
)
"""The layer order, bottom first: config and constants; data; diffusion; models; features; training; inference;
evaluation; registry; the CLI. A module may import its own layer and the layers below it, never one above."""


# =====================================================================================================================
# Reading imports
# =====================================================================================================================


@cache
def modules() -> dict[str, Path]:
    """Every module of the package: dotted name -> file (packages by their ``__init__.py``)."""
    found = {}
    for path in sorted((SRC / PACKAGE).rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _with_parents(name: str) -> set[str]:
    """``humo.a.b`` and the packages importing it runs: ``humo``, ``humo.a``."""
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts) + 1)} & set(modules())


def _resolve(node: ast.ImportFrom | ast.Import, here: str) -> set[str]:
    """The package modules an import statement loads."""
    known = modules()
    if isinstance(node, ast.Import):
        targets = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:  # relative: from .x import y
            package = here if modules()[here].name == "__init__.py" else here.rpartition(".")[0]
            for _ in range(node.level - 1):
                package = package.rpartition(".")[0]
            base = f"{package}.{base}" if base else package
        # `from humo.evaluation import metrics` loads the module humo.evaluation.metrics
        targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
    loaded: set[str] = set()
    for target in targets:
        while target and target not in known:
            target = target.rpartition(".")[0]
        if target.split(".")[0] == PACKAGE:
            loaded |= _with_parents(target)
    return loaded


def _imports_in(tree: ast.AST, here: str) -> set[str]:
    return {
        name for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom)) for name in _resolve(node, here)
    }


@cache
def imports_of(name: str) -> frozenset[str]:
    """The package modules ``name`` imports anywhere (top level, functions, TYPE_CHECKING blocks)."""
    tree = ast.parse(modules()[name].read_text(encoding="utf-8"))
    return frozenset(_imports_in(tree, name) - {name})


def layer_of(name: str) -> int:
    for index, layer in enumerate(LAYERS):
        if any(name == prefix or name.startswith(prefix + ".") for prefix in layer if prefix != PACKAGE):
            return index
    if name == PACKAGE:
        return 0
    raise AssertionError(f"module {name} is in no layer of LAYERS; add it where it belongs")


# =====================================================================================================================
# Imports go down
# =====================================================================================================================


def test_every_module_has_a_layer() -> None:
    for name in modules():
        layer_of(name)


def test_imports_only_go_down_the_layers() -> None:
    upward = sorted(
        f"{name} (layer {layer_of(name)}) imports {target} (layer {layer_of(target)})"
        for name in modules()
        for target in imports_of(name)
        if layer_of(target) > layer_of(name)
    )
    assert not upward, "imports from a lower layer to a higher one:\n" + "\n".join(upward)


def test_the_layer_check_sees_lazy_imports() -> None:
    # a function-level import counts: the check is not only about module tops
    source = "def f():\n    from humo.inference.generate import generate\n"
    assert _imports_in(ast.parse(source), "humo.training.train") >= {"humo.inference.generate"}


# =====================================================================================================================
# DVC dependencies follow the code
# =====================================================================================================================


def _cli_function(tree: ast.Module, command: str) -> ast.FunctionDef:
    """The function decorated ``@app.command("<command>")`` (or ``@app.command()`` with a matching name)."""
    for node in tree.body:
        if not isinstance(node, ast.FunctionDef):
            continue
        for decorator in node.decorator_list:
            if isinstance(decorator, ast.Call) and getattr(decorator.func, "attr", None) == "command":
                named = decorator.args[0].value if decorator.args else node.name.replace("_", "-")
                if named == command:
                    return node
    raise AssertionError(f"no CLI command {command!r} in humo.cli")


def command_modules(command: str) -> set[str]:
    """Modules ``humo <command>`` runs: the CLI's top-level imports, the imports in the command's function and
    in the CLI helpers it calls, and everything those import, transitively."""
    tree = ast.parse(modules()["humo.cli"].read_text(encoding="utf-8"))
    helpers = {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}
    top = {name for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom)) for name in _resolve(node, "humo.cli")}
    pending, seen_functions = [_cli_function(tree, command)], set()
    start = set(top) - {"humo.cli"}
    while pending:
        function = pending.pop()
        seen_functions.add(function.name)
        start |= _imports_in(function, "humo.cli")
        for call in ast.walk(function):
            if isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id in helpers:
                if call.func.id not in seen_functions:
                    pending.append(helpers[call.func.id])
    # the CLI module itself runs, but only the imports of this command (its other commands' lazy imports do not)
    closure, frontier = {"humo.cli"}, set(start)
    while frontier:
        name = frontier.pop()
        closure.add(name)
        frontier |= set(imports_of(name)) - closure
    return closure


def _stages() -> dict[str, dict]:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"]


def _covered(path: Path, deps: list[str]) -> bool:
    relative = path.relative_to(ROOT)
    return any(relative == Path(dep) or Path(dep) in relative.parents for dep in deps)


@pytest.mark.parametrize("stage", sorted(_stages()))
def test_each_stage_lists_every_module_its_command_imports(stage: str) -> None:
    spec = _stages()[stage]
    command = spec["cmd"].split()[1]
    deps = [dep if isinstance(dep, str) else next(iter(dep)) for dep in spec.get("deps", [])]
    missing = sorted(
        str(modules()[name].relative_to(ROOT))
        for name in command_modules(command)
        if not _covered(modules()[name], deps)
    )
    assert not missing, f"stage {stage} (`{spec['cmd']}`) runs code its deps do not list: {missing}"


def test_the_closure_follows_lazy_imports_of_the_command() -> None:
    # `humo evaluate` imports humo.evaluation.evaluate inside its function, which brings the generation core
    needed = command_modules("evaluate")
    assert {"humo.config", "humo.constants", "humo.inference.generate", "humo.diffusion.guidance"} <= needed
    assert "humo.registry.pyfunc" not in needed
