"""``humo export``: a model leaves humo in the files people already load (upstream's code, ComfyUI, LoRA loaders).

    humo export artifacts/train_stage2 --out exports/humo-tiny           # the DiT in upstream's layout + card
    humo export artifacts/lora_study/train_stage2 --out exports/lora      # an adapter: the LoRA file (+ --merge)
    humo export /models/HuMo-17B --out exports/17b-fp8 --fp8 model.preset=humo-17b

What ``SRC`` may be, and what lands in ``--out``:

* a **training output folder** with whole weights (``ema.safetensors``), or **any checkpoint humo loads**
  (``HuMo-1.7B/ema.pth``, a ``HuMo-17B`` shard folder, a ``.safetensors`` file; read with ``model.preset`` /
  ``model.overrides`` as for loading): the EMA DiT with upstream's flat key names and no prefix, which upstream's
  model code loads strictly and both ComfyUI loaders detect as HuMo (``audio_proj.audio_proj_glob_1.layer.*``,
  scale-notes 3.2). The 1.7B layout (temporal reference) is one ``humo.safetensors``; the 17B layout (channel
  reference) is ``humo-0000k-of-0000n.safetensors`` shards with ``humo.safetensors.index.json``, as released. Our
  focus-by-predicting head (``mask_predictor.*``) is a training aid no release has, so it is left out.
* an **adapter folder** (a LoRA stage's output): ``humo_lora.safetensors`` in the
  ``diffusion_model.<module>.lora_A/lora_B/alpha`` layout ComfyUI and diffusion-pipe read; with ``--merge`` also
  the DiT with the adapter folded into its base.

``--fp8`` writes the DiT in ComfyUI's ``scaled_fp8`` layout instead (block linears in e4m3 with a per-tensor
``scale_weight``). Every export writes ``README.md`` (a model card: source, architecture, files with sha256, how
to load them, the training stages, data hashes and metrics found, the base's licence) and ``export.json``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from humo import __version__
from humo.config import ModelConfig
from humo.hashing import file_sha256
from humo.models import lora
from humo.models.checkpoints import (
    CONFIG_FILE,
    RUN_FILE,
    is_adapter_folder,
    load_trained_transformer,
    read_checkpoint_config,
    weights_file,
)
from humo.models.presets import HumoDiTConfig, get_preset, matching_preset

logger = logging.getLogger(__name__)

SINGLE_FILE = "humo.safetensors"
SHARD_NAME = "humo-{index:05d}-of-{count:05d}.safetensors"
INDEX_FILE = "humo.safetensors.index.json"
LORA_FILE = "humo_lora.safetensors"
CARD_FILE = "README.md"
RECORD_FILE = "export.json"
MAX_SHARD_BYTES = 10 * 1024**3
"""Largest shard of a sharded export (the 17B DiT in bf16, 34 GB, becomes four files)."""
DROPPED_PREFIXES = ("mask_predictor.",)
"""Our modules no released file has (upstream's model would refuse them in a strict load)."""
HUMO_DETECTION_KEY = "audio_proj.audio_proj_glob_1.layer.weight"
"""The key the ComfyUI HuMo loaders look for (scale-notes 3.2)."""
BASE_LICENCE = (
    "The released HuMo and Wan2.1 weights are published under the Apache-2.0 licence; check the model page of "
    "the weights this model started from for their exact terms."
)
OWN_LICENCE = "Trained by humo from a random initialisation on its own data: no third-party weights (Apache-2.0)."


@dataclass(frozen=True)
class ExportSource:
    """What ``SRC`` is: ``trained`` (whole weights), ``adapter`` (a LoRA stage's folder) or ``released``."""

    kind: str
    path: Path
    config: dict[str, Any]
    """The folder's ``config.json`` (empty for released weights)."""


def classify(src: Path) -> ExportSource:
    """Tell a training output, an adapter folder and released weights apart.

    Raises:
        FileNotFoundError: ``src`` does not exist.
    """
    src = Path(src)
    if not src.exists():
        raise FileNotFoundError(f"export source {src} does not exist; give a training output folder or a checkpoint")
    if src.is_dir() and (src / CONFIG_FILE).is_file() and (
        is_adapter_folder(src) or weights_file(src).is_file()
    ):
        config = read_checkpoint_config(src)
        return ExportSource("adapter" if "adapter" in config else "trained", src, config)
    return ExportSource("released", src, {})


# =====================================================================================================================
# Writing the DiT
# =====================================================================================================================


def upstream_state(model: torch.nn.Module, fp8: bool = False) -> dict[str, torch.Tensor]:
    """The DiT's weights under upstream's flat names, without our training-only modules; ``fp8``: scaled-fp8."""
    if fp8:
        from humo.models.memory import scaled_fp8_state_dict

        state = scaled_fp8_state_dict(model)
    else:
        state = {key: value.detach() for key, value in model.state_dict().items()}
    return {key: value.contiguous() for key, value in state.items() if not key.startswith(DROPPED_PREFIXES)}


def write_dit(state: dict[str, torch.Tensor], out: Path, sharded: bool, max_shard_bytes: int = MAX_SHARD_BYTES) -> list[Path]:
    """Write ``state`` as one file or as shards with an index (upstream's 17B layout); returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    metadata = {"format": "pt", "humo_version": __version__}
    if not sharded:
        save_file(state, str(out / SINGLE_FILE), metadata=metadata)
        return [out / SINGLE_FILE]
    groups: list[list[str]] = [[]]
    size = 0
    for key in sorted(state):  # in key order: blocks stay together
        nbytes = state[key].numel() * state[key].element_size()
        if groups[-1] and size + nbytes > max_shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append(key)
        size += nbytes
    files, weight_map = [], {}
    for index, keys in enumerate(groups, start=1):
        name = SHARD_NAME.format(index=index, count=len(groups))
        save_file({key: state[key] for key in keys}, str(out / name), metadata=metadata)
        weight_map.update({key: name for key in keys})
        files.append(out / name)
    total = sum(value.numel() * value.element_size() for value in state.values())
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (out / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    return [*files, out / INDEX_FILE]


def _sharded_layout(cfg: HumoDiTConfig, layout: str) -> bool:
    if layout == "auto":
        return cfg.reference_mode == "channel"  # the 17B layout ships as shards
    return layout == "sharded"


# =====================================================================================================================
# The model card
# =====================================================================================================================


def _training_chain(source: ExportSource) -> list[dict[str, Any]]:
    """The stages behind a trained folder, newest first: its own ``run.json`` and, for an adapter, its base's."""
    chain: list[dict[str, Any]] = []
    folder: Path | None = source.path if source.kind != "released" else None
    while folder is not None and (folder / RUN_FILE).is_file():
        run = json.loads((folder / RUN_FILE).read_text())
        config = json.loads((folder / CONFIG_FILE).read_text())
        chain.append({"folder": str(folder), "config": config, "run": run})
        base = config.get("adapter", {}).get("base")
        if base:
            folder = Path(base["path"]) if base["kind"] == "trained" else None
        else:  # a full stage 2 started from the stage-1 folder beside it (the pipeline's layout)
            sibling = folder.parent / "train_stage1"
            folder = sibling if config.get("stage") == 2 and sibling != folder else None
    return chain


def _stage_lines(chain: list[dict[str, Any]]) -> list[str]:
    lines = []
    for entry in chain:
        config, run = entry["config"], entry["run"]
        stage = config.get("stage")
        settings = config.get("params", {}).get(f"train_stage{stage}", {})
        adapter = config.get("adapter")
        what = f"LoRA r{adapter['rank']} (alpha {adapter['alpha']:g}, {len(adapter['targets'])} layers)" if adapter else "full fine-tuning"
        history = run.get("val_history") or []
        loss = f"; validation loss {history[0][1]:.4f} -> {history[-1][1]:.4f}" if history else ""
        lines.append(
            f"- stage {stage} ({what}): {run.get('steps')} steps, learning rate {settings.get('learning_rate', '?')}, "
            f"{run.get('seconds', '?')} s{loss}; MLflow run `{run.get('run_id')}`; shards manifest sha256 "
            f"`{run.get('shards_manifest_sha256', '?')}`"
        )
    return lines


def _metric_lines(evaluation: Path | None) -> list[str]:
    if evaluation is None or not (evaluation / "metrics.json").is_file():
        return ["- no evaluation report was found beside this model (`humo evaluate` writes reports/evaluate)"]
    metrics = json.loads((evaluation / "metrics.json").read_text())
    gate = json.loads((evaluation / "gate.json").read_text()) if (evaluation / "gate.json").is_file() else {}
    names = ("sync_confidence_at_zero", "identity_similarity", "text_alignment", "face_presence", "flicker")
    shown = ", ".join(f"{name} {metrics[name]:.3f}" for name in names if isinstance(metrics.get(name), (int, float)))
    lines = [f"- SynthTalk evaluation ({evaluation}): {shown}"]
    if gate:
        lines.append(f"- promotion gate: {'passed' if gate.get('passed') else 'failed'} ({gate.get('reason', '')})")
    return lines


def model_card(
    source: ExportSource,
    cfg: HumoDiTConfig,
    files: list[Path],
    data_hashes: dict[str, str],
    evaluation: Path | None,
    fp8: bool,
) -> str:
    """The README.md of an export: what it is, how to load it, where it came from."""
    preset = matching_preset(cfg) or "custom"
    chain = _training_chain(source)
    released_base = any(e["config"].get("adapter", {}).get("base", {}).get("kind") == "released" for e in chain)
    from_released = source.kind == "released" or released_base or any(
        e["config"].get("params", {}).get("model", {}).get("checkpoint") for e in chain
    )
    rows = [f"| `{f.name}` | {f.stat().st_size / 1e6:.1f} MB | `{file_sha256(f)[:16]}…` |" for f in files]
    has_dit = any(f.name in (SINGLE_FILE, INDEX_FILE) for f in files)
    has_lora = any(f.name == LORA_FILE for f in files)
    lines = [
        f"# HuMo DiT ({preset}), exported by humo {__version__}",
        "",
        f"Source: `{source.path}` ({source.kind}). Architecture: dim {cfg.dim}, {cfg.num_layers} blocks, "
        f"{cfg.num_heads} heads, reference layout `{cfg.reference_mode}`.",
        "",
        "| file | size | sha256 |",
        "|---|---:|---|",
        *rows,
        "",
        "## Loading",
    ]
    if has_dit:
        lines += [
            f"- The DiT has upstream's flat key names without a prefix{' in scaled fp8' if fp8 else ''}; "
            f"`{HUMO_DETECTION_KEY}` marks it as HuMo for ComfyUI (native) and the WanVideo wrapper. Put "
            f"`{INDEX_FILE if any(f.name == INDEX_FILE for f in files) else SINGLE_FILE}` "
            "(and its shards) in `models/diffusion_models`.",
            "- Upstream HuMo: load the state dict into its `WanModel` with `strict=True` (the focus-by-predicting "
            "head, a training aid, is not in the file).",
            f"- humo: `model.checkpoint=<this folder>` (training) or `humo.models.load_humo_checkpoint(path, "
            f"'{preset}')`.",
        ]
    if has_lora:
        lines += [
            f"- `{LORA_FILE}`: `diffusion_model.<module>.lora_A.weight` / `lora_B.weight` / `.alpha` (ComfyUI "
            "LoraLoader, diffusion-pipe); strength 1 applies `alpha / r * B A`. In humo: `model.adapters=[{path: "
            f"{LORA_FILE}, scale: 1.0}}]`. Modules of the audio path keep upstream's names "
            "(`audio_cross_attn_wrapper.*`, `audio_proj.*`); loaders without HuMo support skip or refuse them.",
        ]
    lines += ["", "## Training", *(_stage_lines(chain) or ["- released weights, not trained here"])]
    if data_hashes:
        lines += [f"- data: {', '.join(f'{k} `{v}`' for k, v in sorted(data_hashes.items()))}"]
    lines += ["", "## Metrics", *_metric_lines(evaluation), "", "## Licence", BASE_LICENCE if from_released else OWN_LICENCE, ""]
    return "\n".join(lines)


# =====================================================================================================================
# The command
# =====================================================================================================================


def _load_source(source: ExportSource, model: ModelConfig) -> tuple[torch.nn.Module, HumoDiTConfig]:
    if source.kind == "released":
        from humo.models.convert import load_humo_checkpoint

        cfg = get_preset(model.preset, **model.overrides)
        return load_humo_checkpoint(source.path, cfg), cfg
    transformer = load_trained_transformer(source.path)  # an adapter comes merged into its base
    return transformer, transformer.humo_config


def run(
    src: Path,
    out: Path,
    model: ModelConfig,
    fp8: bool = False,
    merge: bool = False,
    layout: str = "auto",
    max_shard_bytes: int = MAX_SHARD_BYTES,
    root: Path = Path("."),
    evaluation: Path | None = None,
) -> dict[str, Any]:
    """Export ``src`` into ``out`` (see the module docstring); returns the record written to ``export.json``.

    Args:
        src: a training output folder (whole weights or an adapter) or any checkpoint humo loads.
        out: the output folder (created).
        model: ``preset`` and ``overrides`` to read released weights with.
        fp8: the DiT in scaled fp8.
        merge: for an adapter, also write the DiT with the adapter folded into its base.
        layout: ``auto`` (the released layout of the architecture), ``single`` or ``sharded``.
        max_shard_bytes: largest shard of a sharded DiT.
        root: the project root, for the data hashes (data.dvc, dvc.lock) in the card.
        evaluation: an evaluation report folder to quote in the card (``reports/evaluate``).

    Raises:
        FileNotFoundError, ValueError: a bad source (names it and the fix).
    """
    from humo.registry.register import dataset_hashes

    if layout not in ("auto", "single", "sharded"):
        raise ValueError(f"layout must be auto, single or sharded, got {layout!r}")
    source = classify(Path(src))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []
    if source.kind == "adapter":
        weights, path = lora.read_lora(weights_file(source.path)), weights_file(source.path)
        files.append(lora.save_lora(out / LORA_FILE, weights, {"humo.base_sha256": source.config["adapter"]["base"]["sha256"]}))
        logger.info("export: LoRA %s (%d modules) -> %s", path, len(weights.modules), files[-1])
    if source.kind != "adapter" or merge:
        transformer, cfg = _load_source(source, model)
        files += write_dit(upstream_state(transformer, fp8), out, _sharded_layout(cfg, layout), max_shard_bytes)
    else:  # the LoRA file alone: the architecture comes from the folder's config
        cfg = HumoDiTConfig.model_validate(source.config["transformer"])
    card = model_card(source, cfg, files, dataset_hashes(Path(root)), evaluation, fp8)
    (out / CARD_FILE).write_text(card, encoding="utf-8")
    record = {
        "humo_version": __version__,
        "source": {"kind": source.kind, "path": str(source.path)},
        "preset": matching_preset(cfg),
        "fp8": fp8,
        "files": {f.name: {"bytes": f.stat().st_size, "sha256": file_sha256(f)} for f in files},
    }
    (out / RECORD_FILE).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    logger.info("export: %d file(s) and a model card in %s", len(files), out)
    return record
