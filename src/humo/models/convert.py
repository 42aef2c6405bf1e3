"""Loading released HuMo weights, and the one key map between diffusers' Wan transformer and ours.

Our parameter names *are* upstream's (humo-reference.md section 1.7), so the released files load without renaming:

- ``HuMo-1.7B/ema.pth``: a torch state dict (possibly nested under ``"module"``/``"state_dict"``/...);
- ``HuMo-17B/``: sharded safetensors with a ``*.safetensors.index.json`` (or a single ``.safetensors`` file).

Loading is strict on our side: every parameter of the model must come from the file, except the prefixes named
in ``allow_missing`` (by default only our ``mask_predictor.``, which no release has); those keep their initial
values. Tensors in the file the model does not use are listed in a warning (upstream loads with ``strict=False``).
A tensor of the wrong shape (a checkpoint of another preset) is an error naming the key and both shapes.

diffusers' ``WanTransformer3DModel`` uses other names; :data:`DIFFUSERS_TO_HUMO` is the single table between the
two, used to load diffusers-format Wan2.1 folders (the plain-Wan starting point of stage 1) and by the parity test.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import NamedTuple

import torch
from safetensors.torch import load_file

from humo.models.memory import dequantize_scaled_fp8, is_scaled_fp8
from humo.models.presets import PRESETS, HumoDiTConfig, get_preset
from humo.models.transformer import HumoTransformer3D

logger = logging.getLogger(__name__)

HUMO_ONLY_PREFIXES: tuple[str, ...] = ("audio_proj.", "mask_predictor.")
"""Top-level modules of ours with no Wan counterpart (besides each block's audio branch, see below)."""
AUDIO_BRANCH_PATTERN = re.compile(r"blocks\.\d+\.audio_cross_attn_wrapper\.")
NEW_MODULE_PREFIXES: tuple[str, ...] = (*HUMO_ONLY_PREFIXES, "audio_cross_attn_wrapper.")
"""``allow_missing`` value for starting from plain Wan2.1 weights: the audio path and the mask head start at init."""
DEFAULT_ALLOW_MISSING: tuple[str, ...] = ("mask_predictor.",)
"""No released HuMo file has the focus-by-predicting head (humo-reference.md section 1.6)."""
NESTED_STATE_KEYS: tuple[str, ...] = ("state_dict", "module", "model", "ema", "model_state_dict")
"""Keys under which training scripts commonly nest the weights of a ``.pth`` file."""
WRAPPER_PREFIXES: tuple[str, ...] = ("module.", "model.", "_orig_mod.")
"""Prefixes added by DDP, Lightning and torch.compile; stripped when every key carries one."""
MAX_LISTED_KEYS = 40
"""Keys quoted in one error or warning message (the count of the rest follows)."""
TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
SAFETENSORS_SUFFIX = ".safetensors"
INDEX_SUFFIX = ".safetensors.index.json"

# =====================================================================================================================
# The key map: diffusers WanTransformer3DModel <-> HumoTransformer3D (module prefixes; "{i}" is a block index)
# =====================================================================================================================

DIFFUSERS_TO_HUMO: tuple[tuple[str, str], ...] = (
    ("patch_embedding", "patch_embedding"),
    ("condition_embedder.time_embedder.linear_1", "time_embedding.0"),
    ("condition_embedder.time_embedder.linear_2", "time_embedding.2"),
    ("condition_embedder.time_proj", "time_projection.1"),
    ("condition_embedder.text_embedder.linear_1", "text_embedding.0"),
    ("condition_embedder.text_embedder.linear_2", "text_embedding.2"),
    ("blocks.{i}.scale_shift_table", "blocks.{i}.modulation"),
    ("blocks.{i}.attn1.to_q", "blocks.{i}.self_attn.q"),
    ("blocks.{i}.attn1.to_k", "blocks.{i}.self_attn.k"),
    ("blocks.{i}.attn1.to_v", "blocks.{i}.self_attn.v"),
    ("blocks.{i}.attn1.to_out.0", "blocks.{i}.self_attn.o"),
    ("blocks.{i}.attn1.norm_q", "blocks.{i}.self_attn.norm_q"),
    ("blocks.{i}.attn1.norm_k", "blocks.{i}.self_attn.norm_k"),
    ("blocks.{i}.attn2.to_q", "blocks.{i}.cross_attn.q"),
    ("blocks.{i}.attn2.to_k", "blocks.{i}.cross_attn.k"),
    ("blocks.{i}.attn2.to_v", "blocks.{i}.cross_attn.v"),
    ("blocks.{i}.attn2.to_out.0", "blocks.{i}.cross_attn.o"),
    ("blocks.{i}.attn2.norm_q", "blocks.{i}.cross_attn.norm_q"),
    ("blocks.{i}.attn2.norm_k", "blocks.{i}.cross_attn.norm_k"),
    ("blocks.{i}.norm2", "blocks.{i}.norm3"),  # the affine LayerNorm before the text cross-attention
    ("blocks.{i}.ffn.net.0.proj", "blocks.{i}.ffn.0"),
    ("blocks.{i}.ffn.net.2", "blocks.{i}.ffn.2"),
    ("proj_out", "head.head"),
    ("scale_shift_table", "head.modulation"),
)
"""Module prefixes, diffusers name -> ours; parameter suffixes (``.weight``, ``.bias``) carry over unchanged.

diffusers keys outside this table (the I2V CLIP branch: ``condition_embedder.image_embedder.*``,
``attn2.add_k_proj``, ...) have no HuMo counterpart: HuMo-17B dropped the CLIP branch (humo-reference.md 1.1).
"""


def _listing(keys: Iterable[str]) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:MAX_LISTED_KEYS])
    return shown + (f", ... and {len(keys) - MAX_LISTED_KEYS} more" if len(keys) > MAX_LISTED_KEYS else "")


def _prefix_regex(template: str) -> re.Pattern[str]:
    body = re.escape(template).replace(re.escape("{i}"), r"(?P<i>\d+)")
    return re.compile(rf"^{body}(?P<suffix>\..+)?$")


def is_humo_only_key(key: str) -> bool:
    """Whether a parameter of ours belongs to a module Wan does not have (audio projection/branch, mask head)."""
    return key.startswith(HUMO_ONLY_PREFIXES) or AUDIO_BRANCH_PATTERN.match(key) is not None


def _rename(
    state_dict: Mapping[str, torch.Tensor], pairs: Iterable[tuple[str, str]], drop_humo_only: bool, what: str
) -> dict[str, torch.Tensor]:
    compiled = [(_prefix_regex(source), target) for source, target in pairs]
    renamed: dict[str, torch.Tensor] = {}
    unmapped = []
    for key, tensor in state_dict.items():
        for pattern, target in compiled:
            match = pattern.match(key)
            if match:
                index = match.groupdict().get("i")
                name = target.replace("{i}", index) if index is not None else target
                renamed[name + (match["suffix"] or "")] = tensor
                break
        else:
            if not (drop_humo_only and is_humo_only_key(key)):
                unmapped.append(key)
    if unmapped:
        raise ValueError(f"{len(unmapped)} {what} key(s) have no counterpart in the key map: {_listing(unmapped)}")
    return renamed


def diffusers_to_humo_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a diffusers ``WanTransformer3DModel`` state dict (Wan2.1 T2V layout) to our names.

    Raises:
        ValueError: keys outside :data:`DIFFUSERS_TO_HUMO` (e.g. the Wan I2V CLIP branch), listed by name.
    """
    return _rename(state_dict, DIFFUSERS_TO_HUMO, drop_humo_only=False, what="diffusers")


def humo_to_diffusers_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename our state dict to diffusers' Wan names, dropping the HuMo-only modules (audio path, mask head).

    Raises:
        ValueError: keys of the backbone that the table does not cover.
    """
    return _rename(state_dict, ((ours, theirs) for theirs, ours in DIFFUSERS_TO_HUMO), True, "HuMo")


# =====================================================================================================================
# Reading checkpoint files
# =====================================================================================================================


def checkpoint_files(path: Path | str) -> list[Path]:
    """The weight files behind ``path``: a ``.pth``/``.safetensors`` file, a shard index, or a folder of either.

    Raises:
        FileNotFoundError: the path does not exist, or a folder holds no (or several ambiguous) weight files.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist; give a .pth/.safetensors file or a shard folder")
    if path.is_dir():
        for pattern in (f"*{INDEX_SUFFIX}", f"*{SAFETENSORS_SUFFIX}", *(f"*{suffix}" for suffix in TORCH_SUFFIXES)):
            found = sorted(path.glob(pattern))
            if len(found) == 1:
                return checkpoint_files(found[0])
            if len(found) > 1 and pattern == f"*{INDEX_SUFFIX}":
                raise FileNotFoundError(f"{path} holds several shard indexes {[p.name for p in found]}; give one")
            if len(found) > 1 and pattern != f"*{SAFETENSORS_SUFFIX}":
                raise FileNotFoundError(f"{path} holds several weight files {[p.name for p in found]}; give one")
            if len(found) > 1:
                raise FileNotFoundError(
                    f"{path} holds {len(found)} .safetensors files but no *{INDEX_SUFFIX} saying how they form one "
                    "checkpoint; add the index or give one file"
                )
        raise FileNotFoundError(
            f"{path} holds no weight file (*{INDEX_SUFFIX}, *{SAFETENSORS_SUFFIX}, *.pth); found "
            f"{sorted(p.name for p in path.iterdir())[:10]}"
        )
    if path.name.endswith(INDEX_SUFFIX):
        weight_map = json.loads(path.read_text())["weight_map"]
        shards = [path.parent / name for name in sorted(set(weight_map.values()))]
        absent = [shard.name for shard in shards if not shard.is_file()]
        if absent:
            raise FileNotFoundError(f"shard index {path} names shards that are not there: {absent}")
        return shards
    if path.suffix == SAFETENSORS_SUFFIX or path.suffix in TORCH_SUFFIXES:
        return [path]
    raise FileNotFoundError(f"{path} is not a .pth/.pt/.safetensors file or a *{INDEX_SUFFIX} index")


def _unnest(obj: object, source: Path) -> dict[str, torch.Tensor]:
    """The flat tensor dict inside a loaded ``.pth`` object (descending into a known container key if needed)."""
    while isinstance(obj, Mapping) and not any(isinstance(value, torch.Tensor) for value in obj.values()):
        containers = [key for key in NESTED_STATE_KEYS if isinstance(obj.get(key), Mapping)]
        if not containers:
            raise ValueError(
                f"{source} holds no tensors at its top level and none of the containers {NESTED_STATE_KEYS}; "
                f"top-level keys: {sorted(map(str, obj))[:10]}"
            )
        logger.info("%s: weights nested under %r", source, containers[0])
        obj = obj[containers[0]]
    if not isinstance(obj, Mapping):
        raise ValueError(f"{source} holds a {type(obj).__name__}, not a state dict")
    return {key: value for key, value in obj.items() if isinstance(value, torch.Tensor)}


def read_state_dict(path: Path | str, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint (file, shard index or folder), names normalised, optionally cast file by file.

    Container nesting (``{"module": {...}}``) and a wrapper prefix shared by every key (``module.``, ``model.``,
    ``_orig_mod.``) are removed. ``.pth`` files are memory-mapped, so only what is kept is read.

    Args:
        path: see :func:`checkpoint_files`.
        dtype: cast every floating tensor to this dtype as it is read (None keeps the file's dtypes).

    Returns:
        name -> tensor.
    """
    state: dict[str, torch.Tensor] = {}
    for file in checkpoint_files(path):
        if file.suffix == SAFETENSORS_SUFFIX:
            tensors = load_file(str(file))
        else:
            tensors = _unnest(torch.load(file, map_location="cpu", mmap=True, weights_only=True), file)
        if is_scaled_fp8(tensors):
            logger.info("%s is a scaled-fp8 file (ComfyUI layout): weights dequantized as they are read", file.name)
            tensors = dequantize_scaled_fp8(tensors, dtype)
        for key, tensor in tensors.items():
            if key in state:
                raise ValueError(f"tensor {key!r} appears in more than one shard ({file.name} and an earlier one)")
            state[key] = tensor.to(dtype) if dtype is not None and tensor.is_floating_point() else tensor
    for prefix in WRAPPER_PREFIXES:
        if state and all(key.startswith(prefix) for key in state):
            logger.info("stripping the prefix %r shared by every key of %s", prefix, path)
            state = {key[len(prefix) :]: value for key, value in state.items()}
    return state


class _Figure(NamedTuple):
    """One dimension readable from a state dict: ``state[key].shape[axis]`` (a tensor of ``ndim`` dims)."""

    name: str
    key: str
    ndim: int
    axis: int
    expected: Callable[[HumoDiTConfig], int]


LAYOUT_FIGURES: tuple[_Figure, ...] = (
    _Figure("dim", "patch_embedding.weight", 5, 0, lambda cfg: cfg.dim),  # [dim, in_channels, pt, ph, pw]
    _Figure("in_channels", "patch_embedding.weight", 5, 1, lambda cfg: cfg.in_channels),
    _Figure("ffn_dim", "blocks.0.ffn.0.weight", 2, 0, lambda cfg: cfg.ffn_dim),  # [ffn_dim, dim]
    _Figure("text_dim", "text_embedding.0.weight", 2, 1, lambda cfg: cfg.text_dim),  # [dim, text_dim]
    # [inner_dim, window * audio_groups * audio_channels]: the flattened audio window of one latent frame
    _Figure("audio_inner_dim", "audio_proj.audio_proj_glob_1.layer.weight", 2, 0, lambda cfg: cfg.audio_inner_dim),
    _Figure(
        "audio_input_dim",
        "audio_proj.audio_proj_glob_1.layer.weight",
        2,
        1,
        lambda cfg: cfg.audio_window * cfg.audio_groups * cfg.audio_channels,
    ),
    _Figure(
        "audio_context_dim", "audio_proj.audio_proj_glob_norm.layer.weight", 1, 0, lambda cfg: cfg.audio_context_dim
    ),
)
"""The dimensions :func:`_describe_layout` reads besides ``num_layers`` (counted from the ``blocks.N.`` keys);
``num_heads`` leaves no trace in the shapes."""
BLOCK_KEY = re.compile(r"blocks\.(\d+)\.")


def _read_layout(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, int], list[str]]:
    """The dimensions a state dict reveals (name -> value; ``num_layers`` last) and the names of those it hides."""
    found: dict[str, int] = {}
    for figure in LAYOUT_FIGURES:
        tensor = state.get(figure.key)
        if tensor is not None and tensor.ndim == figure.ndim:
            found[figure.name] = int(tensor.shape[figure.axis])
    blocks = {int(match[1]) for key in state if (match := BLOCK_KEY.match(key))}
    if blocks:
        found["num_layers"] = max(blocks) + 1
    names = [figure.name for figure in LAYOUT_FIGURES] + ["num_layers"]
    return found, [name for name in names if name not in found]


def _preset_figures(cfg: HumoDiTConfig) -> dict[str, int]:
    """What :func:`_read_layout` would read from a state dict of ``cfg``."""
    return {figure.name: figure.expected(cfg) for figure in LAYOUT_FIGURES} | {"num_layers": cfg.num_layers}


def _differences(found: Mapping[str, int], expected: Mapping[str, int]) -> list[str]:
    """``"name file vs preset"`` for each figure read that differs from the preset's."""
    return [f"{name} {value} vs {expected[name]}" for name, value in found.items() if value != expected[name]]


def _describe_layout(state: Mapping[str, torch.Tensor]) -> str:
    """Which preset a state dict looks like, comparing every dimension its shapes reveal (for error messages).

    Read: ``patch_embedding.weight [dim, in_channels, pt, ph, pw]``, ``blocks.0.ffn.0.weight [ffn_dim, dim]``,
    ``text_embedding.0.weight [dim, text_dim]``, ``audio_proj.audio_proj_glob_1.layer.weight [audio_inner_dim,
    audio_window * audio_groups * audio_channels]``, ``audio_proj.audio_proj_glob_norm.layer.weight
    [audio_context_dim]`` and the number of ``blocks.N.`` indices. A preset matches when every figure read equals
    its own; missing tensors are not compared (and named). Otherwise the closest preset (fewest differing figures)
    is named with the figures that differ, as ``file vs preset``.
    """
    found, unread = _read_layout(state)
    if not found:
        return "the file has none of the tensors that reveal the model's dimensions (no patch_embedding, blocks, ...)"
    figures = ", ".join(f"{name} {value}" for name, value in found.items())
    not_read = f"; could not read {', '.join(unread)}" if unread else ""
    differences = {name: _differences(found, _preset_figures(cfg)) for name, cfg in PRESETS.items()}
    matches = [repr(name) for name, differing in differences.items() if not differing]
    if matches:
        return f"the file looks like preset {' or '.join(matches)} ({figures}{not_read})"
    closest = min(differences, key=lambda name: len(differences[name]))
    return (
        f"the file has {figures}{not_read}; no known preset matches; closest {closest!r} differs in "
        f"{', '.join(differences[closest])}"
    )


def _cfg_name(cfg: HumoDiTConfig) -> str:
    """A preset's name for messages (``custom`` when the config equals no named preset)."""
    return next((repr(name) for name, preset in PRESETS.items() if preset == cfg), "(custom config)")


# =====================================================================================================================
# Loading into the model
# =====================================================================================================================


def load_humo_checkpoint(
    path: Path | str,
    preset: str | HumoDiTConfig,
    *,
    allow_missing: tuple[str, ...] = DEFAULT_ALLOW_MISSING,
    dtype: torch.dtype = torch.float32,
) -> HumoTransformer3D:
    """Build the model of ``preset`` and fill it from a released (or our own) checkpoint.

    The model is built on the meta device and takes the file's tensors without a copy (``assign=True``), so peak
    memory is about one model. diffusers-format Wan2.1 weights are recognised and renamed by
    :data:`DIFFUSERS_TO_HUMO`.

    Args:
        path: ``HuMo-1.7B/ema.pth``, the ``HuMo-17B`` shard folder (or its index), a ``.safetensors`` file, or a
            diffusers ``transformer/`` folder.
        preset: preset name or config.
        allow_missing: prefixes of our parameter names (matched at the start or after a block index, e.g.
            ``"audio_cross_attn_wrapper."``) that the file may lack; they keep their initial values. Use
            :data:`NEW_MODULE_PREFIXES` to start from plain Wan2.1 weights.
        dtype: dtype of the returned model's parameters.

    Returns:
        The loaded model in eval mode.

    Raises:
        ValueError: parameters missing from the file (listed), or tensors whose shape differs from the model's
            (key, expected and found shapes, and which preset the file looks like).
        FileNotFoundError: see :func:`checkpoint_files`.
    """
    cfg = get_preset(preset) if isinstance(preset, str) else preset
    state = read_state_dict(path, dtype=dtype)
    if any(key.startswith("condition_embedder.") for key in state):
        logger.info("%s is in diffusers' Wan layout; renaming with DIFFUSERS_TO_HUMO", path)
        state = diffusers_to_humo_state_dict(state)

    with torch.device("meta"):
        model = HumoTransformer3D.from_preset(cfg)
    expected = {key: tuple(value.shape) for key, value in model.state_dict().items()}

    def allowed(key: str) -> bool:
        block_local = re.sub(r"^blocks\.\d+\.", "", key)
        return key.startswith(allow_missing) or block_local.startswith(allow_missing)

    missing = [key for key in expected if key not in state]
    forbidden = [key for key in missing if not allowed(key)]
    if forbidden:
        raise ValueError(
            f"checkpoint {path} lacks {len(forbidden)} parameter(s) of preset {_cfg_name(cfg)}: {_listing(forbidden)}. "
            f"{_describe_layout(state)}. To start the new HuMo modules from scratch on plain Wan weights, pass "
            f"allow_missing=NEW_MODULE_PREFIXES"
        )
    mismatched = [
        f"{key}: model {list(shape)} vs file {list(state[key].shape)}"
        for key, shape in expected.items()
        if key in state and tuple(state[key].shape) != shape
    ]
    if mismatched:
        raise ValueError(
            f"checkpoint {path} does not fit preset {_cfg_name(cfg)}; {len(mismatched)} shape mismatch(es): "
            f"{_listing(mismatched)}. {_describe_layout(state)}; load it with the matching preset"
        )
    unexpected = [key for key in state if key not in expected]
    if unexpected:
        logger.warning(
            "checkpoint %s has %d tensor(s) the model does not use (ignored, as upstream loads non-strictly): %s",
            path,
            len(unexpected),
            _listing(unexpected),
        )

    model.load_state_dict({key: state[key] for key in expected if key in state}, strict=False, assign=True)
    if missing:
        logger.info("initialising %d parameter(s) absent from %s: %s", len(missing), path, _listing(missing))
        missing_modules = {key.rsplit(".", 1)[0] if "." in key else "" for key in missing}
        for name, module in model.named_modules():
            if name in missing_modules:
                if any(not param.is_meta for param in module.parameters(recurse=False)):
                    raise ValueError(
                        f"checkpoint {path} has only some of the parameters of module {name!r}; give all or none"
                    )
                module.to_empty(device="cpu", recurse=False)
                model.init_module(name, module)
                module.to(dtype)
    still_meta = [key for key, value in model.state_dict().items() if value.is_meta]
    if still_meta:
        raise RuntimeError(f"internal error: parameters left uninitialised after loading: {_listing(still_meta)}")
    return model.eval()  # the file's tensors were cast to dtype as they were read

