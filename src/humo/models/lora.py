"""LoRA adapters for the HuMo DiT: inject them for training (peft), read and write them, apply them at inference.

One in-memory form, :class:`LoraWeights` (module path -> ``down (r, in)``, ``up (out, r)``, ``alpha``), and one
file layout, the one ComfyUI and diffusion-pipe read (scale-notes section 3.1)::

    diffusion_model.blocks.0.self_attn.q.lora_A.weight    (r, in)     "down"
    diffusion_model.blocks.0.self_attn.q.lora_B.weight    (out, r)    "up"
    diffusion_model.blocks.0.self_attn.q.alpha            ()          scale = alpha / r

:func:`read_lora` also takes peft's own files (``base_model.model.<module>.lora_A[.default].weight``, with the
``adapter_config.json`` beside them for alpha), DiffSynth's bare ``blocks.…`` keys, kohya/musubi
``lora_unet_<module_with_underscores>.lora_down/lora_up.weight`` and diffusers' ``transformer.…`` names (through
:data:`humo.models.convert.DIFFUSERS_TO_HUMO`). Module paths are upstream's, so a LoRA trained elsewhere for Wan's
self-attention lands on the same modules here.

The update of a linear layer is ``W x + scale * (alpha / r) * up @ down @ x``; no alpha means alpha = r (scale 1),
as every Wan trainer reads it. :func:`apply_adapters` either folds the update into the weights (``merge``) or wraps
the layers with peft's LoRA layers, one adapter name per file, all active at once.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

logger = logging.getLogger(__name__)

FILE_PREFIX = "diffusion_model."
"""Prefix of every key of the LoRA files humo writes (ComfyUI's name for the DiT)."""
DOWN_SUFFIX, UP_SUFFIX, ALPHA_SUFFIX = ".lora_A.weight", ".lora_B.weight", ".alpha"
PEFT_CONFIG_FILE = "adapter_config.json"
"""peft's sidecar of ``adapter_model.safetensors`` (``r``, ``lora_alpha``, ``use_rslora``)."""
TRAIN_ADAPTER_NAME = "default"
"""peft adapter name of the LoRA a training stage injects."""

BLOCK_TARGETS: tuple[str, ...] = (
    "self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o",
    "cross_attn.q", "cross_attn.k", "cross_attn.v", "cross_attn.o",
    "ffn.0", "ffn.2",
)
"""Every linear of a block's self-attention, text cross-attention and FFN (what musubi-tuner and diffusion-pipe
target in a ``WanAttentionBlock``)."""
AUDIO_TARGETS: tuple[str, ...] = (
    "audio_cross_attn_wrapper.audio_cross_attn.q",
    "audio_cross_attn_wrapper.audio_cross_attn.k",
    "audio_cross_attn_wrapper.audio_cross_attn.v",
    "audio_cross_attn_wrapper.audio_cross_attn.o",
    "audio_proj.audio_proj_glob_1.layer",
    "audio_proj.audio_proj_glob_2.layer",
    "audio_proj.audio_proj_glob_3.layer",
    "mask_predictor.heads.*.proj",
)
"""Stage 2 adds the audio path: each block's audio cross-attention, the audio projection and the mask head."""

# key layouts read by read_lora: (prefix to strip, whether module names are diffusers')
_PREFIXES: tuple[tuple[str, bool], ...] = (
    ("model.diffusion_model.", False),
    ("diffusion_model.", False),
    ("base_model.model.", False),
    ("pipe.dit.", False),
    ("transformer.", True),
    ("", False),
)
_SUFFIXES: tuple[tuple[str, str], ...] = (
    (".lora_A.default.weight", "down"),
    (".lora_B.default.weight", "up"),
    (DOWN_SUFFIX, "down"),
    (UP_SUFFIX, "up"),
    (".lora_down.weight", "down"),
    (".lora_up.weight", "up"),
    (ALPHA_SUFFIX, "alpha"),
)
_KOHYA_PREFIX = "lora_unet_"


class LoraFormatError(ValueError):
    """A LoRA file this module cannot read, or one that does not fit the model (names the key and the fix)."""


# =====================================================================================================================
# The in-memory form
# =====================================================================================================================


@dataclass(frozen=True)
class LoraFactors:
    """The low-rank update of one linear layer: ``delta W = (alpha / r) * up @ down``."""

    down: torch.Tensor
    """``(r, in_features)``: peft's ``lora_A``."""
    up: torch.Tensor
    """``(out_features, r)``: peft's ``lora_B``."""
    alpha: float

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    def delta(self, scale: float = 1.0) -> torch.Tensor:
        """``scale * alpha / r * up @ down`` in float32, ``(out, in)``."""
        return (scale * self.alpha / self.rank) * (self.up.float() @ self.down.float())


@dataclass
class LoraWeights:
    """A whole adapter: module path (upstream names, e.g. ``blocks.0.self_attn.q``) -> its factors."""

    modules: dict[str, LoraFactors] = field(default_factory=dict)

    @property
    def ranks(self) -> set[int]:
        return {factors.rank for factors in self.modules.values()}

    def num_parameters(self) -> int:
        return sum(f.down.numel() + f.up.numel() for f in self.modules.values())

    def to_file_state(self) -> dict[str, torch.Tensor]:
        """The ComfyUI / diffusion-pipe layout (:data:`FILE_PREFIX` + module + ``lora_A/lora_B/alpha``)."""
        state: dict[str, torch.Tensor] = {}
        for module, factors in sorted(self.modules.items()):
            key = FILE_PREFIX + module
            state[key + DOWN_SUFFIX] = factors.down.detach().contiguous()
            state[key + UP_SUFFIX] = factors.up.detach().contiguous()
            state[key + ALPHA_SUFFIX] = torch.tensor(float(factors.alpha))
        return state


def save_lora(path: Path | str, weights: LoraWeights, metadata: Mapping[str, str] | None = None) -> Path:
    """Write ``weights`` as one ``.safetensors`` file in :data:`FILE_PREFIX` layout (``metadata`` as strings)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(weights.to_file_state(), str(path), metadata=dict(metadata or {}))
    return path


# =====================================================================================================================
# Targets and injection (training)
# =====================================================================================================================


def default_targets(stage: int) -> tuple[str, ...]:
    """The modules a stage's LoRA adapts by default: the block linears, plus the audio path in stage 2."""
    return BLOCK_TARGETS + (AUDIO_TARGETS if stage == 2 else ())


def resolve_targets(model: nn.Module, patterns: Iterable[str]) -> list[str]:
    """Full names of the ``nn.Linear`` modules matching ``patterns``.

    A pattern matches a module name exactly or as its dotted suffix (``self_attn.q`` -> ``blocks.3.self_attn.q``);
    ``*`` stands for one name part (``mask_predictor.heads.*.proj``).

    Raises:
        LoraFormatError: a pattern that matches no linear layer (names a few that exist).
    """
    linears = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    chosen: set[str] = set()
    for pattern in patterns:
        body = r"\.".join("[^.]+" if part == "*" else re.escape(part) for part in pattern.split("."))
        regex = re.compile(rf"^(.*\.)?{body}$")
        found = [name for name in linears if regex.match(name)]
        if not found:
            raise LoraFormatError(
                f"LoRA target {pattern!r} matches no linear layer of the model; linear layers look like "
                f"{linears[:6]} (use a dotted suffix such as 'self_attn.q')"
            )
        chosen.update(found)
    return sorted(chosen, key=linears.index)


def inject_lora(
    model: nn.Module,
    targets: Sequence[str],
    rank: int,
    alpha: float,
    dropout: float = 0.0,
    adapter_name: str = TRAIN_ADAPTER_NAME,
) -> list[str]:
    """Wrap the linear layers ``targets`` (full names) with trainable peft LoRA layers, in place.

    ``lora_B`` starts at zero, so the model computes exactly what it computed before. Inject before FSDP sharding
    (scale-notes 3.5). Returns the names of the new parameters (``…lora_A.<adapter>.weight`` and ``lora_B``).
    """
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(targets), bias="none")
    inject_adapter_in_model(config, model, adapter_name=adapter_name)
    return [name for name, _ in model.named_parameters() if f".lora_A.{adapter_name}." in name or f".lora_B.{adapter_name}." in name]


def lora_from_state(state: Mapping[str, torch.Tensor], alpha: float, adapter_name: str = TRAIN_ADAPTER_NAME) -> LoraWeights:
    """The adapter inside a state dict of a peft-injected model (``<module>.lora_A.<adapter>.weight`` ...)."""
    down_tail, up_tail = f".lora_A.{adapter_name}.weight", f".lora_B.{adapter_name}.weight"
    modules = {}
    for key, value in state.items():
        if key.endswith(down_tail):
            module = key[: -len(down_tail)]
            modules[module] = LoraFactors(down=value.detach().cpu(), up=state[module + up_tail].detach().cpu(), alpha=alpha)
    return LoraWeights(modules)


def base_state(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A peft-injected model's state dict with the adapters left out and upstream names restored
    (``<module>.base_layer.weight`` -> ``<module>.weight``)."""
    out = {}
    for key, value in state.items():
        if ".lora_A." in key or ".lora_B." in key or ".lora_dropout." in key:
            continue
        out[key.replace(".base_layer.", ".")] = value
    return out


# =====================================================================================================================
# Reading files of any common layout
# =====================================================================================================================


def _peft_alpha(path: Path) -> tuple[float | None, bool]:
    """``(lora_alpha / r factor, use_rslora)`` from a peft ``adapter_config.json`` next to ``path``."""
    config_path = path.parent / PEFT_CONFIG_FILE
    if not config_path.is_file():
        return None, False
    config = json.loads(config_path.read_text())
    return config.get("lora_alpha"), bool(config.get("use_rslora"))


def _diffusers_module(module: str) -> str | None:
    from humo.models.convert import DIFFUSERS_TO_HUMO

    for theirs, ours in DIFFUSERS_TO_HUMO:
        pattern = "^" + re.escape(theirs).replace(re.escape("{i}"), r"(?P<i>\d+)") + "$"
        match = re.match(pattern, module)
        if match:
            return ours.replace("{i}", match["i"]) if "{i}" in ours else ours
    return None


def _split_key(key: str, kohya: Mapping[str, str]) -> tuple[str, str]:
    """``(module path in our names, down|up|alpha)`` of one file key."""
    for suffix, kind in _SUFFIXES:
        if key.endswith(suffix):
            body = key[: -len(suffix)]
            break
    else:
        raise LoraFormatError(
            f"LoRA key {key!r} is not a lora_A/lora_B/lora_down/lora_up/alpha entry (full-weight .diff, .diff_b and "
            "DoRA entries are not supported); convert the file to plain LoRA"
        )
    if body.startswith(_KOHYA_PREFIX):
        flat = body[len(_KOHYA_PREFIX):]
        if flat not in kohya:
            raise LoraFormatError(f"kohya LoRA key {key!r} names no module of the model ({flat!r})")
        return kohya[flat], kind
    for prefix, diffusers in _PREFIXES:
        if body.startswith(prefix):
            module = body[len(prefix):]
            if diffusers:
                mapped = _diffusers_module(module)
                if mapped is None:
                    raise LoraFormatError(f"diffusers LoRA key {key!r}: module {module!r} has no HuMo counterpart")
                module = mapped
            return module, kind
    raise AssertionError("unreachable: the empty prefix matches every key")


def find_lora_file(folder: Path) -> Path:
    """The LoRA file in a folder: peft's ``adapter_model.safetensors``, else its only ``.safetensors`` file.

    Raises:
        FileNotFoundError: none, or several without ``adapter_model.safetensors``.
    """
    peft_file = folder / "adapter_model.safetensors"
    if peft_file.is_file():
        return peft_file
    found = sorted(folder.glob("*.safetensors"))
    if len(found) != 1:
        raise FileNotFoundError(
            f"{folder} holds {len(found)} .safetensors files ({[p.name for p in found][:5]}); give the LoRA file itself"
        )
    return found[0]


def read_lora(path: Path | str, model: nn.Module | None = None) -> LoraWeights:
    """Read a LoRA file of any layout in the module docstring into :class:`LoraWeights`.

    Args:
        path: a ``.safetensors`` file (a folder: its ``adapter_model.safetensors`` or only ``.safetensors`` file).
        model: the model it is for; needed for kohya names (underscores are ambiguous) and checked against when
            given (every module must exist and be a linear layer of the right shape).

    Raises:
        FileNotFoundError: no such file.
        LoraFormatError: an unknown key, a module without its pair, a shape that does not fit ``model``.
    """
    path = Path(path)
    if path.is_dir():
        path = find_lora_file(path)
    if not path.is_file():
        raise FileNotFoundError(f"LoRA file {path} not found; give a .safetensors file written by a LoRA trainer")
    linears = {name: module for name, module in model.named_modules() if isinstance(module, nn.Linear)} if model else {}
    kohya = {name.replace(".", "_"): name for name in linears}
    parts: dict[str, dict[str, torch.Tensor]] = {}
    with safe_open(str(path), framework="pt") as handle:
        for key in handle.keys():
            module, kind = _split_key(key, kohya)
            parts.setdefault(module, {})[kind] = handle.get_tensor(key)
    file_alpha, rslora = _peft_alpha(path)
    weights = LoraWeights()
    for module, entry in parts.items():
        if "down" not in entry or "up" not in entry:
            raise LoraFormatError(f"LoRA file {path}: module {module!r} has {sorted(entry)} but needs both down and up")
        rank = int(entry["down"].shape[0])
        if "alpha" in entry:
            alpha = float(entry["alpha"])
        elif file_alpha is not None:
            alpha = float(file_alpha) * (math.sqrt(rank) if rslora else 1.0)
        else:
            alpha = float(rank)
        weights.modules[module] = LoraFactors(down=entry["down"].float(), up=entry["up"].float(), alpha=alpha)
    if model is not None:
        check_fits(weights, model, source=str(path))
    logger.info("read LoRA %s: %d modules, rank %s", path, len(weights.modules), sorted(weights.ranks))
    return weights


def check_fits(weights: LoraWeights, model: nn.Module, source: str = "adapter") -> None:
    """Refuse an adapter whose modules the model lacks or whose factors do not fit the layer's shape."""
    linears = {name: module for name, module in model.named_modules() if isinstance(module, nn.Linear)}
    problems = []
    for module, factors in weights.modules.items():
        layer = linears.get(module)
        if layer is None:
            problems.append(f"{module}: no such linear layer")
        elif (factors.up.shape[0], factors.down.shape[1]) != (layer.out_features, layer.in_features):
            problems.append(
                f"{module}: adapter ({factors.up.shape[0]}, {factors.down.shape[1]}) vs layer "
                f"({layer.out_features}, {layer.in_features})"
            )
        elif factors.up.shape[1] != factors.rank:
            problems.append(f"{module}: up {tuple(factors.up.shape)} and down {tuple(factors.down.shape)} disagree on rank")
    if problems:
        raise LoraFormatError(
            f"{source} does not fit this model ({len(problems)} problem(s)): {'; '.join(problems[:8])}; use the "
            "adapter with the base model it was trained for"
        )


# =====================================================================================================================
# Applying adapters (inference) and folding them into weights
# =====================================================================================================================


def merge_into_state(
    state: Mapping[str, torch.Tensor], adapters: Sequence[tuple[LoraWeights, float]]
) -> dict[str, torch.Tensor]:
    """A copy of ``state`` with every adapter folded in: ``W += scale * alpha / r * up @ down`` (float32 maths)."""
    out = dict(state)
    for weights, scale in adapters:
        for module, factors in weights.modules.items():
            key = f"{module}.weight"
            if key not in out:
                raise LoraFormatError(f"adapter module {module!r} has no weight {key!r} in the base state dict")
            base = out[key]
            out[key] = (base.float() + factors.delta(scale)).to(base.dtype)
    return out


@torch.no_grad()
def apply_adapters(model: nn.Module, adapters: Sequence[tuple[LoraWeights, float]], merge: bool) -> nn.Module:
    """Put ``adapters`` (each with its strength) on ``model`` in place and return it.

    ``merge=True`` folds each update into the layer weights (no cost per forward); ``merge=False`` wraps the
    layers with peft LoRA layers (``adapter0``, ``adapter1``, ...), all active, the strength in their scaling.
    """
    for index, (weights, _) in enumerate(adapters):
        check_fits(weights, model, source=f"adapter {index}")
    if merge:
        for weights, scale in adapters:
            for module, factors in weights.modules.items():
                layer = model.get_submodule(module)
                layer.weight.copy_((layer.weight.float() + factors.delta(scale).to(layer.weight.device)).to(layer.weight.dtype))
        return model
    from peft import LoraConfig, inject_adapter_in_model
    from peft.tuners.lora import LoraLayer

    for index, (weights, scale) in enumerate(adapters):
        name = f"adapter{index}"
        targets = sorted(weights.modules)
        config = LoraConfig(
            r=max(weights.ranks),
            target_modules=targets,
            rank_pattern={re.escape(m): f.rank for m, f in weights.modules.items()},
            alpha_pattern={re.escape(m): f.alpha for m, f in weights.modules.items()},
        )
        inject_adapter_in_model(config, model, adapter_name=name)
        for module, factors in weights.modules.items():
            layer = model.get_submodule(module)
            device, dtype = layer.base_layer.weight.device, layer.base_layer.weight.dtype
            layer.lora_A[name].weight.copy_(factors.down.to(device, dtype))
            layer.lora_B[name].weight.copy_(factors.up.to(device, dtype))
            layer.scaling[name] = scale * factors.alpha / factors.rank
    names = [f"adapter{i}" for i in range(len(adapters))]
    for module in model.modules():
        if isinstance(module, LoraLayer):
            module.set_adapter([n for n in names if n in module.lora_A])
    model.requires_grad_(False)
    return model


def describe(weights: LoraWeights) -> dict[str, object]:
    """A short JSON-able summary (modules, ranks, alphas, parameters) for sidecars, tags and logs."""
    return {
        "modules": len(weights.modules),
        "ranks": sorted(weights.ranks),
        "alphas": sorted({f.alpha for f in weights.modules.values()}),
        "parameters": weights.num_parameters(),
    }
