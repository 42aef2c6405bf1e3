"""Trained checkpoints of the two training stages: write them, check them, load them without params.yaml.

A checkpoint folder (``artifacts/train_stage1``, ``artifacts/train_stage2``; contract (3)) holds::

    model.safetensors   the raw trained weights (every transformer parameter, frozen ones included)
    ema.safetensors     the same with the EMA of the trainable weights in their place (the sampler's default)
    config.json         {"stage", "preset", "transformer": resolved HumoDiTConfig, "params": sections used}
    run.json            {"run_id", "checkpoint", "stage", "steps", "metrics", ...} for later stages

    model = load_trained_transformer("artifacts/train_stage2")          # EMA weights
    model = load_trained_transformer("artifacts/train_stage2", use_ema=False)

A stage trained with a LoRA adapter (``train.adapter.kind: lora``) writes an **adapter folder** instead: no copy of
the model, but the adapter and the base it needs::

    adapter.safetensors      the EMA of the adapter (humo.models.lora file layout: diffusion_model.*.lora_A/B)
    adapter_raw.safetensors  the adapter as trained
    config.json              as above, plus "adapter": {rank, alpha, targets, "base": {kind, path, sha256}}
    run.json

:func:`load_trained_transformer` reads both kinds: an adapter folder loads its base (a trained folder or released
weights, checked against the recorded sha256) and puts the adapter on it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from humo.hashing import file_sha256
from humo.models import lora
from humo.models.presets import HumoDiTConfig
from humo.models.transformer import HumoTransformer3D

logger = logging.getLogger(__name__)

MODEL_FILE = "model.safetensors"
EMA_FILE = "ema.safetensors"
CONFIG_FILE = "config.json"
RUN_FILE = "run.json"
ADAPTER_FILE = "adapter.safetensors"
ADAPTER_RAW_FILE = "adapter_raw.safetensors"
PROVENANCE_FILE = "provenance.json"
"""Beside versioned weights (``humo pretrain``): how they were made, and their sha256."""
WEIGHT_FILES = (MODEL_FILE, EMA_FILE, ADAPTER_FILE, ADAPTER_RAW_FILE)


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


def save_adapter(
    folder: Path,
    raw: lora.LoraWeights,
    ema: lora.LoraWeights,
    config: dict[str, Any],
    run: dict[str, Any],
) -> Path:
    """Write an adapter folder (``config["adapter"]`` names the base); weight files of an earlier full run go."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name in (MODEL_FILE, EMA_FILE):
        (folder / name).unlink(missing_ok=True)
    metadata = {"humo.base_sha256": str(config["adapter"]["base"]["sha256"])}
    lora.save_lora(folder / ADAPTER_RAW_FILE, raw, metadata)
    lora.save_lora(folder / ADAPTER_FILE, ema, metadata)
    _write_json(folder / CONFIG_FILE, config)
    _write_json(folder / RUN_FILE, run)
    return folder


def is_adapter_folder(folder: Path) -> bool:
    """Whether ``folder`` holds a trained adapter (rather than whole weights)."""
    config_path = Path(folder) / CONFIG_FILE
    return config_path.is_file() and "adapter" in json.loads(config_path.read_text())


def weights_file(folder: Path, use_ema: bool = True) -> Path:
    """The file that holds a trained folder's own weights: the (EMA) model, or the (EMA) adapter."""
    folder = Path(folder)
    if is_adapter_folder(folder):
        return folder / (ADAPTER_FILE if use_ema else ADAPTER_RAW_FILE)
    return folder / (EMA_FILE if use_ema else MODEL_FILE)


def read_adapter(path: Path | str, model: torch.nn.Module | None = None) -> tuple[lora.LoraWeights, Path]:
    """A LoRA for ``model`` from a file of any layout :func:`humo.models.lora.read_lora` reads, or from an adapter
    folder a LoRA stage wrote (its EMA adapter); returns the weights and the file they came from."""
    path = Path(path)
    if path.is_dir() and is_adapter_folder(path):
        path = weights_file(path)
    elif path.is_dir() and (path / EMA_FILE).is_file() and (path / CONFIG_FILE).is_file():
        raise lora.LoraFormatError(
            f"{path} is a checkpoint with whole weights, not a LoRA adapter; load it as the model (--model {path})"
        )
    if path.is_dir():
        path = lora.find_lora_file(path)
    return lora.read_lora(path, model), path


def read_checkpoint_config(folder: Path) -> dict[str, Any]:
    """``config.json`` of a trained checkpoint folder (whole weights or an adapter).

    Raises:
        FileNotFoundError: the folder or one of its files is missing (names the stage that makes it).
    """
    folder = Path(folder)
    adapter = is_adapter_folder(folder)
    for name in (CONFIG_FILE, *((ADAPTER_FILE, ADAPTER_RAW_FILE) if adapter else (MODEL_FILE, EMA_FILE))):
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
    merge_adapter: bool = True,
    base: Path | None = None,
) -> HumoTransformer3D:
    """Build the transformer from a trained checkpoint folder (no params.yaml needed).

    Args:
        folder: ``artifacts/train_stage1`` or ``artifacts/train_stage2`` (or any folder :func:`save_trained` wrote).
        use_ema: load ``ema.safetensors`` (default; what the sampler uses) instead of ``model.safetensors``.
        device, dtype: where and in which dtype to put the weights.
        in_place: build the model on the meta device and take the file's tensors (peak ~ one copy of the weights);
            False builds a randomly initialised model first and copies into it (two copies at the peak).
        merge_adapter: for an adapter folder, fold the adapter into the base weights (default) or keep it beside
            the layers (peft LoRA layers).
        base: for an adapter folder, where its base is when not at the recorded path (a registered copy).

    Returns:
        The :class:`HumoTransformer3D` in eval mode.

    Raises:
        FileNotFoundError: not a checkpoint folder.
    """
    folder = Path(folder)
    config = read_checkpoint_config(folder)
    cfg = HumoDiTConfig.model_validate(config["transformer"])
    if "adapter" in config:
        model = _load_base(config["adapter"]["base"], cfg, base, in_place)
        weights = lora.read_lora(weights_file(folder, use_ema), model)
        lora.apply_adapters(model, [(weights, 1.0)], merge=merge_adapter)
        model = model.to(device=device, dtype=dtype) if dtype is not None else model.to(device)
        logger.info(
            "loaded the %s adapter of stage %s from %s on its base (%s)",
            "EMA" if use_ema else "raw", config.get("stage"), folder, "merged" if merge_adapter else "beside the layers",
        )
        return model.eval()
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


def _load_base(record: dict[str, Any], cfg: HumoDiTConfig, base: Path | None, in_place: bool) -> torch.nn.Module:
    """The base an adapter was trained on: a trained folder (its EMA weights) or released weights.

    Raises:
        FileNotFoundError: the base is not at ``base`` nor at the recorded path.
        ValueError: the base's weights differ from the ones the adapter was trained on (sha256).
    """
    path = Path(base) if base is not None else Path(record["path"])
    if not path.exists():
        raise FileNotFoundError(
            f"the adapter's base {path} is not there; it was trained on {record['path']} (sha256 "
            f"{str(record['sha256'])[:12]}...); put that model there or pass its folder as base"
        )
    if record["kind"] == "trained":
        found = file_sha256(weights_file(path))
        model = load_trained_transformer(path, in_place=in_place)
    else:
        from humo.models.convert import checkpoint_files, load_humo_checkpoint

        found = released_sha256(checkpoint_files(path))
        model = load_humo_checkpoint(path, cfg)
    if found != record["sha256"]:
        raise ValueError(
            f"the adapter's base {path} has other weights (sha256 {found[:12]}...) than the one it was trained on "
            f"({str(record['sha256'])[:12]}...); use the base it was trained for"
        )
    return model


def released_sha256(files: list[Path]) -> str:
    """One sha256 over the files of released weights (one file's own hash; several: the hash of their hashes)."""
    if len(files) == 1:
        return file_sha256(files[0])
    import hashlib

    return hashlib.sha256("".join(file_sha256(f) for f in files).encode()).hexdigest()


def base_record(stage: int, init_dir: Path, released: Path | None) -> dict[str, Any]:
    """What an adapter of ``stage`` is trained on: stage 1's folder (stage 2) or the released weights (stage 1).

    Raises:
        ValueError: stage 1 with no released weights (a LoRA needs a trained base).
    """
    if stage == 2:
        return {"kind": "trained", "path": str(init_dir), "sha256": file_sha256(weights_file(init_dir))}
    if released is None:
        raise ValueError(
            "train.adapter.kind=lora in stage 1 needs a trained base: set model.checkpoint to released HuMo weights "
            "(a LoRA on a random init learns nothing the base can use), or use train.adapter.kind=none"
        )
    from humo.models.convert import checkpoint_files

    return {"kind": "released", "path": str(released), "sha256": released_sha256(checkpoint_files(released))}


def check_provenance(weights: Path) -> dict[str, Any] | None:
    """The provenance record beside ``weights`` (None when there is none); refuses weights that differ from it."""
    record_path = Path(weights).parent / PROVENANCE_FILE
    if not record_path.is_file():
        return None
    record = json.loads(record_path.read_text())
    found = file_sha256(weights)
    if record.get("weights_sha256") not in (None, found):
        raise ValueError(
            f"{weights} has sha256 {found[:12]}..., its {PROVENANCE_FILE} records {record['weights_sha256'][:12]}...: "
            "the file was changed after `humo pretrain` wrote it; run `humo pretrain` again"
        )
    return record
