"""Stage 2 as a LoRA adapter vs full stage-2 fine-tuning, on SynthTalk (``humo lora-study``, ``make lora-study``).

Outside the main job, like the ablation (:mod:`humo.evaluation.ablation`): after ``make run`` it

1. trains stage 2 once more with ``train.adapter.kind: lora`` (rank, alpha, targets from ``train.adapter``) from the
   same stage-1 model and shards, with the same learning rate and ``evaluate.lora_study.steps`` steps (the wall-time
   budget of full stage 2), into ``artifacts/lora_study/`` (inputs linked; a run with the same settings is reused);
2. reads both stages' ``run.json``: trainable parameters and their share, optimizer-state bytes, seconds per step;
3. generates the evaluation set with both models in ``evaluate.lora_study.mode`` for ``seeds`` seeds each (the
   same requests for both) and scores sync, identity and text alignment with the exact SynthTalk metrics;
4. writes ``reports/lora/table.md`` and ``table.json``: the two rows side by side, with the seed-to-seed standard
   deviation of the full model's figures as the noise to read differences against.
"""

from __future__ import annotations

import json
import logging
import time
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
from humo.evaluation.ablation import train_variant
from humo.evaluation.evalset import load_cases
from humo.evaluation.evaluate import _mean_figures, generate_and_score

logger = logging.getLogger(__name__)

STUDY_DIR = Path("lora_study")
"""Under ``paths.artifacts``: the LoRA stage 2 and links to the main pipeline's inputs."""
REPORT_DIR = "lora"
FIGURES = ("sync_confidence_at_zero", "identity_similarity", "text_alignment", "face_presence")


ADAM_STATE_BYTES = 2 * 4
"""AdamW's state per trainable float32 element (two moments), plus one float32 step per tensor."""


def _trainable_from_checkpoint(folder: Path, stage: int) -> dict[str, Any]:
    """For a full-fine-tuning ``run.json`` written before it recorded its trainable parameters: the same figures
    from the stage's parameter rule (what AdamW holds for them, as measured by ``optimizer_state_bytes``)."""
    from humo.models.checkpoints import load_trained_transformer
    from humo.training.system import trainable_parameter_names

    model = load_trained_transformer(folder)
    params = dict(model.named_parameters())
    names = trainable_parameter_names(model, stage)
    count = sum(params[name].numel() for name in names)
    return {
        "trainable_parameters": count,
        "trainable_share": count / sum(p.numel() for p in params.values()),
        "optimizer_state_bytes": ADAM_STATE_BYTES * count + 4 * len(names),
    }


def training_row(folder: Path) -> dict[str, Any]:
    """What a stage's ``run.json`` says about its cost: trainable parameters, share, optimizer state, s/step."""
    run = json.loads((folder / "run.json").read_text())
    trainable = run.get("trainable") or _trainable_from_checkpoint(folder, int(run["stage"]))
    history = run.get("val_history") or [[0, float("nan")]]
    return {
        "steps": run["steps"],
        "seconds": run["seconds"],
        "seconds_per_step": run["seconds"] / run["steps"],
        "trainable_parameters": trainable.get("trainable_parameters"),
        "trainable_share": trainable.get("trainable_share"),
        "optimizer_state_bytes": trainable.get("optimizer_state_bytes"),
        "val_loss_last": history[-1][1],
    }


def score_seeds(
    pipe: Any, cases: list, eval_dir: Path, cfg: EvaluateConfig, generate: GenerateConfig, limits: RequestLimitsConfig
) -> dict[str, Any]:
    """Mean figures over ``cfg.lora_study.seeds`` seeds of every case, and the sd of the per-seed means."""
    study = cfg.lora_study
    per_seed = []
    for seed in range(study.seeds):
        seeded = cfg.model_copy(update={"modes": (study.mode,), "seed": cfg.seed + seed * len(cases)})
        per_seed.append(_mean_figures(generate_and_score(pipe, cases, eval_dir, seeded, generate, limits)))
    figures = {name: float(np.mean([s[name] for s in per_seed])) for name in FIGURES if all(name in s for s in per_seed)}
    spread = {name: float(np.std([s[name] for s in per_seed], ddof=1)) if study.seeds > 1 else float("nan") for name in figures}
    return {"figures": figures, "seed_sd": spread}


def table_markdown(document: dict[str, Any]) -> str:
    """The side-by-side table of :func:`run`'s document."""
    rows = document["rows"]
    noise = rows["full"]["seed_sd"]
    lines = [
        "# Stage 2: LoRA adapter vs full fine-tuning (SynthTalk)",
        "",
        f"{document['cases']} held-out cases x {document['seeds']} seeds, {document['mode']}, {document['steps']} "
        f"denoising steps; adapter {document['adapter']}. The seed sd of the full model is the noise.",
        "",
        "| stage 2 | trainable | share | optimizer state | s / step | train s | val loss | "
        + " | ".join(FIGURES) + " |",
        "|---|---:|---:|---:|---:|---:|---:|" + "---:|" * len(FIGURES),
    ]
    for name, row in rows.items():
        train = row["training"]
        figures = " | ".join(f"{row['figures'].get(f, float('nan')):.3f}" for f in FIGURES)
        lines.append(
            f"| {name} | {train['trainable_parameters']:,} | {train['trainable_share']:.1%} | "
            f"{train['optimizer_state_bytes'] / 1e6:.2f} MB | {train['seconds_per_step']:.3f} | {train['seconds']:.0f} | "
            f"{train['val_loss_last']:.4f} | {figures} |"
        )
    lines.append("| seed sd (full) | | | | | | | " + " | ".join(f"{noise.get(f, float('nan')):.3f}" for f in FIGURES) + " |")
    return "\n".join(lines) + "\n"


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
    """Train the LoRA stage 2 if needed, evaluate it beside full stage 2, write ``reports/lora/table.{md,json}``.

    Raises:
        FileNotFoundError: the main pipeline has not run (no stage-1 or stage-2 model, no evaluation set).
    """
    from humo.inference.generate import build_pipeline, load_model

    start = time.perf_counter()
    adapter = train.adapter.model_copy(update={"kind": "lora"})
    lora_stage2 = stage2.model_copy(update={"steps": cfg.lora_study.steps or stage2.steps})
    lora_dir = train_variant(STUDY_DIR, train.model_copy(update={"adapter": adapter}), lora_stage2, model, tracking, paths)
    cases = load_cases(paths.eval_set_dir)
    rows = {}
    for name, folder in (("full", paths.candidate_dir), (f"LoRA r{adapter.rank}", lora_dir)):
        transformer, _ = load_model(folder)
        pipe = build_pipeline(transformer, generate, encoders, paths.vae_dir, limits)
        rows[name] = {"training": training_row(folder), **score_seeds(pipe, cases, paths.eval_set_dir, cfg, generate, limits)}
        logger.info("lora study %s: %s", name, {k: round(v, 3) for k, v in rows[name]["figures"].items()})
    document = {
        "rows": rows,
        "adapter": f"rank {adapter.rank}, alpha {adapter.effective_alpha:g}, default stage-2 targets"
        if adapter.target_modules is None else f"rank {adapter.rank}, alpha {adapter.effective_alpha:g}, {list(adapter.target_modules)}",
        "cases": len(cases),
        "seeds": cfg.lora_study.seeds,
        "mode": cfg.lora_study.mode,
        "steps": cfg.steps,
        "seconds": round(time.perf_counter() - start, 1),
    }
    out_dir = paths.report_dir(REPORT_DIR)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "table.json").write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")
    (out_dir / "table.md").write_text(table_markdown(document), encoding="utf-8")
    logger.info("lora study written to %s in %.0f s", out_dir / "table.md", document["seconds"])
    return document
