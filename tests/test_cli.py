"""The `humo` command and its agreement with dvc.yaml and params.yaml."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from humo import __version__
from humo.cli import STAGE_SECTIONS, app
from humo.config import Params

runner = CliRunner()


def _commands() -> set[str]:
    import typer.main

    return set(typer.main.get_command(app).commands)  # type: ignore[attr-defined]


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert __version__ in result.output


def test_help_lists_every_stage() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in STAGE_SECTIONS:
        assert command in result.output


def test_stage_table_matches_commands_and_sections() -> None:
    assert set(STAGE_SECTIONS) <= _commands()
    for command, sections in STAGE_SECTIONS.items():
        unknown = set(sections) - set(Params.model_fields)
        assert not unknown, f"{command} names unknown sections {unknown}"


def test_dvc_stages_call_humo_commands_with_their_sections(project_root: Path) -> None:
    dvc = yaml.safe_load((project_root / "dvc.yaml").read_text())
    for name, stage in (dvc.get("stages") or {}).items():
        argv = shlex.split(stage["cmd"])
        assert argv[0] == "humo", f"stage {name} must call `humo <command>`, got {stage['cmd']!r}"
        command = argv[1]
        assert command in _commands(), f"stage {name} calls unknown command {command!r}"
        listed = {entry if isinstance(entry, str) else next(iter(entry)) for entry in stage.get("params", [])}
        assert listed == set(STAGE_SECTIONS[command]), f"stage {name}: params {listed} != {STAGE_SECTIONS[command]}"
        assert any(dep.startswith("src/humo") for dep in stage.get("deps", [])), f"stage {name} has no code dep"


def test_data_dvc_tracks_raw_data(project_root: Path) -> None:
    tracked = yaml.safe_load((project_root / "data.dvc").read_text())
    assert [out["path"] for out in tracked["outs"]] == ["data/raw"]


def test_unknown_stage_fails() -> None:
    result = runner.invoke(app, ["no-such-stage"])
    assert result.exit_code != 0


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["synth", "synth.num_clips=-3"], "num_clips"),
        (["synth", "synth.num_clip=3"], "Allowed keys"),
        (["synth", "--params", "/nonexistent/params.yaml"], "not found"),
    ],
)
def test_bad_settings_exit_nonzero_with_message(args: list[str], fragment: str) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert fragment in result.output


def test_console_script_is_installed() -> None:
    script = Path(sys.executable).parent / "humo"
    completed = subprocess.run([str(script), "--version"], capture_output=True, text=True, check=False)
    assert completed.returncode == 0 and __version__ in completed.stdout
