"""A miniature of the paper's ablation table on SynthTalk (``humo ablation``, ``make ablation``; outside the main job).

Rows, all on the fixed evaluation set (``artifacts/eval_set``) with the same seeds:

* stage-1 model vs stage-2 model (TIA);
* stage-2 model trained without the focus-by-predicting loss (``train_stage2.mask_loss_weight=0``): trained here
  into ``artifacts/ablation/no_mask_loss/train_stage2`` from the same stage-1 model and shards (linked, not copied),
  so the main pipeline's outputs are never touched; a finished run is reused;
* time-adaptive guidance (the 17B form, the default) vs fixed guidance (the 1.7B form: static scales);
* TA vs TIA.

The paper's expectations are checked and written next to the table, whether they hold or not: stage 2 beats
stage 1 on sync; TIA beats TA on identity; text alignment stays close across rows.
Outputs: ``reports/ablation/table.md`` and ``table.json``.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from humo.config import (
    EncodersConfig,
    EvaluateConfig,
    GenerateConfig,
    ModelConfig,
    PathsConfig,
    RequestLimitsConfig,
    TrackingConfig,
    TrainConfig,
    TrainStage2Config,
)
from humo.evaluation.evalset import load_cases
from humo.evaluation.evaluate import _mean_figures, generate_and_score

logger = logging.getLogger(__name__)

ABLATION_DIR = "ablation"
NO_MASK_DIR = Path(ABLATION_DIR) / "no_mask_loss"
LINKED_INPUTS = ("precompute", "curate", "train_stage1", "train_vae")
"""Inputs of stage-2 training that the no-mask-loss run shares with the main pipeline (symlinked)."""
COLUMNS = ("sync_confidence_at_zero", "sync_distance_at_zero", "identity_similarity", "text_alignment", "sharpness")
TEXT_CLOSE = 0.15
"""Text alignment counts as close across rows when its spread is at most this."""


@dataclass(frozen=True)
class Variant:
    """One row of the table."""

    name: str
    checkpoint: str
    """Checkpoint folder relative to ``paths.artifacts``."""
    mode: str
    guidance_form: str


def variants() -> list[Variant]:
    """The rows of the miniature ablation table, in order."""
    no_mask = str(NO_MASK_DIR / "train_stage2")
    return [
        Variant("stage 1, TIA", "train_stage1", "TIA", "humo-17b"),
        Variant("stage 2, TA", "train_stage2", "TA", "humo-17b"),
        Variant("stage 2, TIA (full)", "train_stage2", "TIA", "humo-17b"),
        Variant("stage 2, TIA, fixed guidance", "train_stage2", "TIA", "humo-1.7b"),
        Variant("stage 2 w/o focus-by-predicting, TIA", no_mask, "TIA", "humo-17b"),
    ]


def train_variant(
    name: Path, train: TrainConfig, stage2: TrainStage2Config, model: ModelConfig, tracking: TrackingConfig,
    paths: PathsConfig,
) -> Path:
    """Train a stage-2 variant into ``<artifacts>/<name>/train_stage2`` from the main pipeline's stage-1 model and
    shards (linked, never touched); a finished run is reused. Returns the checkpoint folder."""
    from humo.evaluation.samples import sample_callback
    from humo.models.checkpoints import CONFIG_FILE, RUN_FILE
    from humo.training.train import recorded_params, run as train_run, samples_allowed

    folder = paths.artifacts / name
    done = folder / "train_stage2"
    if (done / RUN_FILE).is_file():
        wanted = json.loads(json.dumps(recorded_params(2, train, stage2, model), default=str))
        if json.loads((done / CONFIG_FILE).read_text()).get("params") == wanted:
            logger.info("reusing %s (trained with these settings)", done)
            return done
        logger.info("%s was trained with other settings: training it again", done)
    folder.mkdir(parents=True, exist_ok=True)
    for linked in LINKED_INPUTS:
        source, link = (paths.artifacts / linked).resolve(), folder / linked
        if not source.exists():
            raise FileNotFoundError(f"{source} not found; run the main pipeline (dvc repro train_stage2) first")
        if not link.exists():
            link.symlink_to(source, target_is_directory=True)
    variant_paths = paths.model_copy(update={"artifacts": folder})
    samples = sample_callback(2, train, tracking, variant_paths) if samples_allowed(train) else None
    result = train_run(
        2, train=train, stage_cfg=stage2, model=model, tracking=tracking, paths=variant_paths,
        callbacks=[samples] if samples is not None else (),
    )
    return Path(result.out_dir)


def train_without_mask_loss(
    train: TrainConfig, stage2: TrainStage2Config, model: ModelConfig, tracking: TrackingConfig, paths: PathsConfig
) -> Path:
    """Train stage 2 with ``mask_loss_weight=0`` into ``artifacts/ablation/no_mask_loss`` (reused when done)."""
    return train_variant(NO_MASK_DIR, train, stage2.model_copy(update={"mask_loss_weight": 0.0}), model, tracking, paths)


def expectations(rows: dict[str, dict[str, float]]) -> list[tuple[str, bool | None, str]]:
    """The paper's expectations on the table: ``(statement, holds or None when a row is missing, figures)``."""

    def value(row: str, name: str) -> float | None:
        figure = rows.get(row, {}).get(name)
        return figure if figure is not None and np.isfinite(figure) else None

    out: list[tuple[str, bool | None, str]] = []
    for statement, better, worse, name in (
        ("stage 2 beats stage 1 on sync", "stage 2, TIA (full)", "stage 1, TIA", "sync_confidence_at_zero"),
        ("TIA beats TA on identity", "stage 2, TIA (full)", "stage 2, TA", "identity_similarity"),
    ):
        a, b = value(better, name), value(worse, name)
        out.append((statement, None if a is None or b is None else a > b, f"{_fmt(a)} vs {_fmt(b)} ({name})"))
    text = [v for v in (value(row, "text_alignment") for row in rows) if v is not None]
    out.append((
        f"text alignment stays close across rows (spread <= {TEXT_CLOSE})",
        None if len(text) < 2 else max(text) - min(text) <= TEXT_CLOSE,
        f"spread {_fmt(max(text) - min(text)) if text else '-'}",
    ))
    return out


def _fmt(value: float | None) -> str:
    return "-" if value is None or not np.isfinite(value) else (f"{value:.3f}" if abs(value) < 100 else f"{value:.0f}")


def run(
    cfg: EvaluateConfig,
    generate: GenerateConfig,
    limits: RequestLimitsConfig,
    encoders: EncodersConfig,
    train: TrainConfig,
    stage2: TrainStage2Config,
    model: ModelConfig,
    tracking: TrackingConfig,
    paths: PathsConfig,
) -> dict[str, Any]:
    """Train the no-mask-loss variant if needed, evaluate every row, write ``reports/ablation/table.{md,json}``.

    Returns:
        The table document (rows, expectations, settings).
    """
    from humo.inference.generate import build_pipeline, load_model

    start = time.perf_counter()
    train_without_mask_loss(train, stage2, model, tracking, paths)
    eval_dir = paths.eval_set_dir
    cases = load_cases(eval_dir)
    rows: dict[str, dict[str, float]] = {}
    pipes: dict[str, Any] = {}
    for variant in variants():
        if variant.checkpoint not in pipes:
            transformer, _ = load_model(paths.artifacts / variant.checkpoint)
            pipes[variant.checkpoint] = build_pipeline(transformer, generate, encoders, paths.vae_dir, limits)
        settings = generate.model_copy(
            update={"guidance": generate.guidance.model_copy(update={"form": variant.guidance_form})}
        )
        scored = generate_and_score(
            pipes[variant.checkpoint], cases, eval_dir, cfg.model_copy(update={"modes": (variant.mode,)}), settings,
            limits,
        )
        rows[variant.name] = _mean_figures(scored)
        logger.info("ablation %s: %s", variant.name, {k: round(rows[variant.name].get(k, np.nan), 3) for k in COLUMNS})
    checks = expectations(rows)
    document = {
        "rows": rows,
        "expectations": [{"statement": s, "holds": h, "figures": f} for s, h, f in checks],
        "cases": len(cases),
        "steps": cfg.steps,
        "seconds": round(time.perf_counter() - start, 1),
    }
    out_dir = paths.reports / ABLATION_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "table.json").write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")
    lines = [
        "# Miniature ablation (SynthTalk evaluation set)",
        "",
        f"{len(cases)} held-out cases, {cfg.steps} denoising steps, exact SynthTalk metrics (see reports/evaluate).",
        "",
        "| variant | " + " | ".join(COLUMNS) + " |",
        "|---|" + "---|" * len(COLUMNS),
        *(f"| {name} | " + " | ".join(_fmt(figures.get(c)) for c in COLUMNS) + " |" for name, figures in rows.items()),
        "",
        "| expectation | holds | figures |",
        "|---|---|---|",
        *(f"| {s} | {'n/a' if h is None else ('yes' if h else '**no**')} | {f} |" for s, h, f in checks),
    ]
    (out_dir / "table.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    logger.info("ablation table written to %s in %.0f s", out_dir / "table.md", document["seconds"])
    return document
