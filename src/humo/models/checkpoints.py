"""Trained checkpoints of the two training stages: write them, check them, load them without params.yaml.

A checkpoint folder (``artifacts/train_stage1``, ``artifacts/train_stage2``; contract (3)) holds::

    model.safetensors   the raw trained weights (every transformer parameter, frozen ones included)
    ema.safetensors     the same with the EMA of the trainable weights in their place (the sampler's default)
    config.json         {"stage", "preset", "transformer": resolved HumoDiTConfig, "params": sections used}
    run.json            {"run_id", "checkpoint", "stage", "steps", "metrics", ...} for later stages

    model = load_trained_transformer("artifacts/train_stage2")          # EMA weights
    model = load_trained_transformer("artifacts/train_stage2", use_ema=False)
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from humo.models.presets import HumoDiTConfig
from humo.models.transformer import HumoTransformer3D

logger = logging.getLogger(__name__)

MODEL_FILE = "model.safetensors"
EMA_FILE = "ema.safetensors"
CONFIG_FILE = "config.json"
RUN_FILE = "run.json"


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True, default=str))
    tmp.replace(path)


def save_trained(
    folder: Path,
    raw: dict[str, torch.Tensor],
    ema: dict[str, torch.Tensor],
    config: dict[str, Any],
    run: dict[str, Any],
) -> Path:
    """Write the four files of a trained checkpoint into ``folder``; returns ``folder``.

    Args:
        folder: output folder (created).
        raw, ema: whole transformer state dicts (CPU tensors).
        config: ``{"stage", "preset", "transformer", "params"}``.
        run: ``{"run_id", "checkpoint", ...}``.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in raw.items()}, str(folder / MODEL_FILE))
    save_file({k: v.contiguous() for k, v in ema.items()}, str(folder / EMA_FILE))
    _write_json(folder / CONFIG_FILE, config)
    _write_json(folder / RUN_FILE, run)
    return folder


def read_checkpoint_config(folder: Path) -> dict[str, Any]:
    """``config.json`` of a trained checkpoint folder.

    Raises:
        FileNotFoundError: the folder or one of its files is missing (names the stage that makes it).
    """
    folder = Path(folder)
    for name in (CONFIG_FILE, MODEL_FILE, EMA_FILE):
        if not (folder / name).is_file():
            raise FileNotFoundError(
                f"{folder} is not a trained checkpoint ({name} missing); run the training stage that writes it "
                "(humo train-stage1 for artifacts/train_stage1, humo train-stage2 for artifacts/train_stage2)"
            )
    return json.loads((folder / CONFIG_FILE).read_text())


def check_preset(folder: Path, preset: str, transformer: HumoDiTConfig) -> dict[str, Any]:
    """Refuse a checkpoint made for another model size; returns its config.

    Raises:
        ValueError: the checkpoint's preset or resolved transformer config differs from ``preset``/``transformer``.
    """
    config = read_checkpoint_config(folder)
    theirs = HumoDiTConfig.model_validate(config["transformer"])
    if config.get("preset") != preset or theirs != transformer:
        diff = {
            key: (value, getattr(transformer, key))
            for key, value in theirs.model_dump().items()
            if value != getattr(transformer, key)
        }
        raise ValueError(
            f"checkpoint {folder} was trained with preset {config.get('preset')!r} but model.preset is {preset!r}"
            f"{f' (differences checkpoint vs params: {diff})' if diff else ''}; retrain the earlier stage or set "
            "model.preset/model.overrides to match"
        )
    return config


def load_trained_transformer(
    folder: str | Path,
    use_ema: bool = True,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    in_place: bool = True,
) -> HumoTransformer3D:
    """Build the transformer from a trained checkpoint folder (no params.yaml needed).

    Args:
        folder: ``artifacts/train_stage1`` or ``artifacts/train_stage2`` (or any folder :func:`save_trained` wrote).
        use_ema: load ``ema.safetensors`` (default; what the sampler uses) instead of ``model.safetensors``.
        device, dtype: where and in which dtype to put the weights.
        in_place: build the model on the meta device and take the file's tensors (peak ~ one copy of the weights);
            False builds a randomly initialised model first and copies into it (two copies at the peak).

    Returns:
        The :class:`HumoTransformer3D` in eval mode.

    Raises:
        FileNotFoundError: not a checkpoint folder.
    """
    folder = Path(folder)
    config = read_checkpoint_config(folder)
    cfg = HumoDiTConfig.model_validate(config["transformer"])
    if in_place:
        with torch.device("meta"):
            model = HumoTransformer3D.from_preset(cfg)
    else:
        model = HumoTransformer3D.from_preset(cfg)
    state = load_file(str(folder / (EMA_FILE if use_ema else MODEL_FILE)))
    model.load_state_dict(state, strict=True, assign=in_place)
    model = model.to(device=device, dtype=dtype) if dtype is not None else model.to(device)
    logger.info("loaded %s weights of stage %s from %s", "EMA" if use_ema else "raw", config.get("stage"), folder)
    return model.eval()
