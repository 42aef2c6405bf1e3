"""``humo pretrain``: a text-to-video backbone for the tiny DiT, so that stage 1 follows the paper's recipe.

HuMo starts from Wan2.1's text-to-video weights and trains only self-attention in stage 1 (minimal-invasive).
The tiny preset has no such weights; this trains them on the curated SynthTalk shards, text -> video alone:

1. the stage-1 trainer with the reference and the audio dropped on every sample (text dropout kept, so the
   backbone has a null-text branch for guidance) and every non-audio parameter trainable, from a seeded init;
2. the EMA weights and their ``config.json`` copied to ``pretrain.out`` (versioned in the repository) beside
   ``provenance.json``: the command, the seed and steps, the sha256 of the curated manifest and of the shard
   index it trained on, the git commit, the validation losses and the weights' own sha256.

``dvc repro`` then uses the file (``model.checkpoint``) without training it again: the main job stays within its
time budget. The training run itself (resumable) is in ``artifacts/pretrain``.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
from pathlib import Path
from typing import Any

from humo.config import ModelConfig, PathsConfig, PretrainConfig, TrackingConfig, TrainConfig, TrainStage1Config
from humo.hashing import file_sha256, git_commit
from humo.models.checkpoints import CONFIG_FILE, PROVENANCE_FILE

logger = logging.getLogger(__name__)

RUN_DIR = "pretrain"
"""The training run's folder under ``paths.artifacts`` (checkpoints, resumable)."""
WEIGHTS_FILE = "ema.safetensors"


def recipe(cfg: PretrainConfig, train: TrainConfig) -> tuple[TrainConfig, TrainStage1Config]:
    """The shared training settings and the stage section of a text-to-video run."""
    dropout = train.condition_dropout.model_copy(update={"image": 1.0, "audio": 1.0})
    text_only = train.model_copy(
        update={"seed": cfg.seed, "condition_dropout": dropout, "sample_every_n_steps": 0,
                "adapter": train.adapter.model_copy(update={"kind": "none"})}
    )
    return text_only, TrainStage1Config(steps=cfg.steps, learning_rate=cfg.learning_rate, trainable="backbone")


def run(
    cfg: PretrainConfig, train: TrainConfig, model: ModelConfig, tracking: TrackingConfig, paths: PathsConfig,
    command: str | None = None,
) -> dict[str, Any]:
    """Train the backbone and write ``cfg.out``; returns the provenance record."""
    from humo.training.train import run as train_run

    if model.checkpoint is not None:
        logger.info("pretrain starts from a seeded init; model.checkpoint (%s) is not used", model.checkpoint)
    settings, stage = recipe(cfg, train)
    run_dir = paths.stage_dir(RUN_DIR)
    result = train_run(
        1, train=settings, stage_cfg=stage, model=model.model_copy(update={"checkpoint": None}), tracking=tracking,
        paths=paths, out_dir=run_dir,
    )
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in (WEIGHTS_FILE, CONFIG_FILE):  # a checkpoint folder of its own (contract 3): the ablation links it
        shutil.copyfile(run_dir / name, out / name)
    trained = json.loads((run_dir / "run.json").read_text())
    record = {
        "what": "the tiny DiT trained on text -> video alone (no reference, no audio): stage 1's backbone",
        "command": command or "humo pretrain",
        "preset": model.preset,
        "model_overrides": model.overrides,
        "seed": cfg.seed,
        "steps": cfg.steps,
        "learning_rate": cfg.learning_rate,
        "batch_size": train.batch_size,
        "condition_dropout": settings.condition_dropout.model_dump(),
        "manifest_sha256": trained["shards_manifest_sha256"],
        "shard_index_sha256": _shard_index_sha256(paths.features_dir),
        "git_commit": git_commit(Path(".")),
        "python": sys.version.split()[0],
        "seconds": round(result.seconds, 1),
        "val_history": result.val_history,
        "mlflow_run_id": result.run_id,
        "weights_sha256": file_sha256(out / WEIGHTS_FILE),
    }
    (out / PROVENANCE_FILE).write_text(json.dumps(record, indent=1, default=str) + "\n", encoding="utf-8")
    logger.info("pretrained backbone written to %s (%d steps in %.0f s)", out, cfg.steps, result.seconds)
    return record


def _shard_index_sha256(features_dir: Path) -> str | None:
    from humo.features.shards import INDEX_NAME

    index = features_dir / INDEX_NAME
    return file_sha256(index) if index.is_file() else None
