"""The paper's ablation in miniature, with error bars (``humo ablation``, ``make ablation``; outside the main job).

Trained variants ([P] Table 3), each trained once per ``evaluate.ablation.training_seeds`` seed, every one from the
pretrained text -> video backbone (``model.checkpoint``, ``humo pretrain``) with the same short stages:

* **full**: stage 1 trains self-attention only (minimal-invasive), stage 2 self-attention + the audio modules
  with the focus-by-predicting loss and the task-mix ramp;
* **w/o progressive training**: no stage 1; the stage-2 recipe (both tasks mixed from the start) straight from
  the backbone, for the two stages' steps together;
* **w/o focus-by-predicting**: the full row's stage 1, stage 2 with ``mask_loss_weight = 0``;
* **full fine-tune**: every parameter trains in both stages.

Rows evaluated on the full row's models: stage 1 alone, TA (no reference), and the 17B guidance ([P] Fig. 4) with
config A only (text-dominant: the image stays in the negative), config B only (text + image) and A -> B (the
switch at ``generate.guidance.switch_timestep``, the default).

Everything runs under ``artifacts/ablation`` (the main pipeline's shards, manifest and VAE linked, never
touched): trained runs and scored rows are reused when their settings match, so a stopped run resumes. The
evaluation set is the ablation's own, ``num_cases`` held-out clips (distinct identities first), each generated with
``sampling_seeds`` noise seeds. Every figure is a mean with a two-level bootstrap interval (resampling the training
seeds, then the cases; the paired differences behind each verdict resample the same draws for both rows): an
expectation of the paper "holds" when its interval lies above zero, is "reversed" below zero, and is "within
noise" otherwise. Outputs: ``reports/ablation/table.md`` and ``table.json``.
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
    AblationConfig,
    EncodersConfig,
    EvaluateConfig,
    GenerateConfig,
    ModelConfig,
    PathsConfig,
    RequestLimitsConfig,
    TrackingConfig,
    TrainConfig,
    TrainStage1Config,
    TrainStage2Config,
)
from humo.evaluation.evalset import load_cases

logger = logging.getLogger(__name__)

ABLATION_DIR = Path("ablation")
LINKED_INPUTS = ("precompute", "curate", "train_vae")
"""Inputs of every variant's training that are the main pipeline's (symlinked, never written)."""
COLUMNS = ("sync_confidence_at_zero", "identity_similarity", "text_alignment", "sharpness")
SCORES_DIR = "scores"
"""Under ``artifacts/ablation``: one file of per-clip figures per row and training seed (reused on a rerun)."""


# ---------------------------------------------------------------------------------------------------------------
# 1. What is trained, what is evaluated, what the paper expects
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One row of the table: a trained variant's stage-``stage`` model generated in ``mode``."""

    key: str
    name: str
    variant: str
    """Trained variant: ``full``, ``no_progressive``, ``no_mask`` or ``full_fine_tune``."""
    stage: int = 2
    mode: str = "TIA"
    switch_timestep: float | None = None
    """17B guidance switch for this row (None = ``generate.guidance.switch_timestep``, the A -> B default)."""


GUIDANCE_A_ONLY = 0.0
"""``switch_timestep`` at 0: every step is above it, so config A (text-only guidance) runs throughout."""
GUIDANCE_B_ONLY = 1000.0
"""``switch_timestep`` at 1000: no step is above it, so config B (text + image guidance) runs throughout."""

ROWS = (
    Row("full", "full (progressive, self-attention only), TIA, guidance A -> B", "full"),
    Row("stage1", "full, stage 1 only, TIA", "full", stage=1),
    Row("ta", "full, TA (no reference image)", "full", mode="TA"),
    Row("guidance_a", "full, TIA, guidance A only", "full", switch_timestep=GUIDANCE_A_ONLY),
    Row("guidance_b", "full, TIA, guidance B only", "full", switch_timestep=GUIDANCE_B_ONLY),
    Row("no_progressive", "w/o progressive training (one stage), TIA", "no_progressive"),
    Row("no_mask", "w/o focus-by-predicting, TIA", "no_mask"),
    Row("full_fine_tune", "full fine-tune (every parameter), TIA", "full_fine_tune"),
)


@dataclass(frozen=True)
class Expectation:
    """The paper says row ``better`` beats row ``worse`` on ``figure``."""

    statement: str
    better: str
    worse: str
    figure: str
    source: str


EXPECTATIONS = (
    Expectation("progressive training keeps identity", "full", "no_progressive", "identity_similarity",
                "Tab. 3: ID-Cur 0.747 vs 0.724"),
    Expectation("progressive training keeps sync", "full", "no_progressive", "sync_confidence_at_zero",
                "Tab. 3: Sync-C 6.252 vs 6.106"),
    Expectation("focus-by-predicting improves sync", "full", "no_mask", "sync_confidence_at_zero",
                "Tab. 3: Sync-C 6.252 vs 5.946"),
    Expectation("focus-by-predicting improves identity", "full", "no_mask", "identity_similarity",
                "Tab. 3: ID-Cur 0.747 vs 0.730"),
    Expectation("minimal-invasive training keeps text alignment", "full", "full_fine_tune", "text_alignment",
                "Tab. 3: TVA 6.508 vs 6.157"),
    Expectation("minimal-invasive training keeps quality (sharpness for AES)", "full", "full_fine_tune", "sharpness",
                "Tab. 3: AES 0.589 vs 0.529"),
    Expectation("stage 2 brings sync", "full", "stage1", "sync_confidence_at_zero", "Sec. 3.3"),
    Expectation("the reference image carries identity (TIA vs TA)", "full", "ta", "identity_similarity", "Tab. 2"),
    Expectation("guidance B gives identity (B only vs A only)", "guidance_b", "guidance_a", "identity_similarity",
                "Fig. 4"),
    Expectation("guidance A gives the text layout (A only vs B only)", "guidance_a", "guidance_b", "text_alignment",
                "Fig. 4"),
    Expectation("A -> B keeps B's identity gain (vs A only)", "full", "guidance_a", "identity_similarity", "Fig. 4"),
    Expectation("A -> B keeps A's text alignment (vs B only)", "full", "guidance_b", "text_alignment", "Fig. 4"),
)

PAPER_TABLE3 = {
    "full": {"AES": 0.589, "TVA": 6.508, "ID-Cur": 0.747, "Sync-C": 6.252},
    "no_progressive": {"AES": 0.541, "TVA": 6.375, "ID-Cur": 0.724, "Sync-C": 6.106},
    "no_mask": {"AES": 0.587, "TVA": 6.507, "ID-Cur": 0.730, "Sync-C": 5.946},
    "full_fine_tune": {"AES": 0.529, "TVA": 6.157, "ID-Cur": 0.749, "Sync-C": 6.250},
}
"""HuMo-17B on MoCha ([P] Table 3), beside the rows of the same recipe."""


# ---------------------------------------------------------------------------------------------------------------
# 2. Training
# ---------------------------------------------------------------------------------------------------------------


def train_variant(
    name: Path, train: TrainConfig, stage_cfg: TrainStage1Config | TrainStage2Config, model: ModelConfig,
    tracking: TrackingConfig, paths: PathsConfig, stage1: Path | None = None,
) -> Path:
    """Train one stage into ``<artifacts>/<name>/train_stage{N}`` on the main pipeline's shards (linked, never
    touched); a finished run with the same settings is reused. Returns the checkpoint folder.

    Args:
        stage_cfg: the stage's section (its type says the stage).
        stage1: stage 2's start, linked as ``<name>/train_stage1`` (default: the main pipeline's stage 1).
    """
    from humo.evaluation.samples import sample_callback
    from humo.models.checkpoints import CONFIG_FILE, RUN_FILE
    from humo.training.train import recorded_params, run as train_run, samples_allowed

    stage = 1 if isinstance(stage_cfg, TrainStage1Config) else 2
    folder = paths.artifacts / name
    done = folder / f"train_stage{stage}"
    if (done / RUN_FILE).is_file():
        wanted = json.loads(json.dumps(recorded_params(stage, train, stage_cfg, model), default=str))
        if json.loads((done / CONFIG_FILE).read_text()).get("params") == wanted:
            logger.info("reusing %s (trained with these settings)", done)
            return done
        logger.info("%s was trained with other settings: training it again", done)
    folder.mkdir(parents=True, exist_ok=True)
    links = {linked: paths.artifacts / linked for linked in LINKED_INPUTS}
    if stage == 2:
        links["train_stage1"] = stage1 if stage1 is not None else paths.stage1_dir
    for linked, source in links.items():
        source, link = Path(source).resolve(), folder / linked
        if not source.exists():
            raise FileNotFoundError(f"{source} not found; run the main pipeline (dvc repro) first")
        if link.is_symlink() and link.resolve() != source:
            link.unlink()
        if not link.exists():
            link.symlink_to(source, target_is_directory=True)
    variant_paths = paths.model_copy(update={"artifacts": folder})
    samples = sample_callback(stage, train, tracking, variant_paths) if samples_allowed(train) else None
    result = train_run(
        stage, train=train, stage_cfg=stage_cfg, model=model, tracking=tracking, paths=variant_paths,
        callbacks=[samples] if samples is not None else (),
    )
    return Path(result.out_dir)


def short_stages(
    study: AblationConfig, stage1: TrainStage1Config, stage2: TrainStage2Config
) -> tuple[TrainStage1Config, TrainStage2Config]:
    """The ablation's stages: its step counts, the stage-2 audio ramp shortened in proportion."""
    ramp = max(1, round(stage2.audio_ramp_steps * study.stage2_steps / stage2.steps))
    return (
        stage1.model_copy(update={"steps": study.stage1_steps, "trainable": "self_attention"}),
        stage2.model_copy(
            update={"steps": study.stage2_steps, "audio_ramp_steps": ramp, "trainable": "self_attention"}
        ),
    )


def backbone_folder(model: ModelConfig, paths: PathsConfig) -> Path:
    """The pretrained backbone as a checkpoint folder stage 2 can start from (w/o progressive training):
    ``artifacts/ablation/backbone`` with its ``config.json`` and the weights linked as model and EMA."""
    from humo.models.checkpoints import CONFIG_FILE, EMA_FILE, MODEL_FILE

    weights = Path(model.checkpoint).resolve()
    folder = paths.artifacts / ABLATION_DIR / "backbone"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CONFIG_FILE).write_bytes((weights.parent / CONFIG_FILE).read_bytes())
    for name in (MODEL_FILE, EMA_FILE):
        link = folder / name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(weights)
    return folder


def train_seed(
    seed: int, study: AblationConfig, train: TrainConfig, stage1: TrainStage1Config, stage2: TrainStage2Config,
    model: ModelConfig, tracking: TrackingConfig, paths: PathsConfig,
) -> dict[tuple[str, int], Path]:
    """Every trained variant for one training seed: ``{(variant, stage): checkpoint folder}``."""
    settings = train.model_copy(update={"seed": seed, "sample_every_n_steps": 0})
    s1, s2 = short_stages(study, stage1, stage2)
    base = ABLATION_DIR / f"seed{seed}"
    full1 = train_variant(base / "full", settings, s1, model, tracking, paths)
    one_stage = s2.model_copy(update={"steps": s1.steps + s2.steps, "audio_ramp_steps": 2 * s2.audio_ramp_steps})
    fine1 = train_variant(base / "full_fine_tune", settings, s1.model_copy(update={"trainable": "all"}), model,
                          tracking, paths)
    return {
        ("full", 1): full1,
        ("full", 2): train_variant(base / "full", settings, s2, model, tracking, paths, stage1=full1),
        ("no_mask", 2): train_variant(base / "no_mask", settings, s2.model_copy(update={"mask_loss_weight": 0.0}),
                                      model, tracking, paths, stage1=full1),
        ("no_progressive", 2): train_variant(base / "no_progressive", settings, one_stage, model, tracking, paths,
                                             stage1=backbone_folder(model, paths)),
        ("full_fine_tune", 2): train_variant(base / "full_fine_tune", settings,
                                             s2.model_copy(update={"trainable": "all"}), model, tracking, paths,
                                             stage1=fine1),
    }


# ---------------------------------------------------------------------------------------------------------------
# 3. Scoring: per-clip figures of each row and training seed, reused on a rerun
# ---------------------------------------------------------------------------------------------------------------


def score_row(
    row: Row, seed: int, pipe: Any, checkpoint: Path, cases: list[Any], eval_dir: Path, cfg: EvaluateConfig,
    generate: GenerateConfig, limits: RequestLimitsConfig, scores_dir: Path,
) -> dict[str, np.ndarray]:
    """``{figure: (cases, sampling seeds) array}`` for ``row`` on one training seed's model."""
    from humo.evaluation.evaluate import generate_and_score
    from humo.models.checkpoints import RUN_FILE

    guidance = generate.guidance.model_copy(update={"form": "humo-17b"})
    if row.switch_timestep is not None:
        guidance = guidance.model_copy(update={"switch_timestep": row.switch_timestep})
    settings = generate.model_copy(update={"guidance": guidance, "progress_bar": False})
    study = cfg.ablation
    key = {
        "run_id": json.loads((checkpoint / RUN_FILE).read_text()).get("run_id"), "mode": row.mode,
        "guidance": guidance.model_dump(mode="json"), "cache": generate.cache.model_dump(mode="json"),
        "steps": cfg.steps, "cases": [c.case_id for c in cases],
        "sampling_seeds": study.sampling_seeds,
    }
    path = scores_dir / f"{row.key}-seed{seed}.json"
    if path.is_file() and (saved := json.loads(path.read_text()))["key"] == key:
        return {name: np.asarray(values, dtype=float) for name, values in saved["figures"].items()}
    clips = []
    for sample in range(study.sampling_seeds):
        run_cfg = cfg.model_copy(update={"modes": (row.mode,), "seed": cfg.seed + 1000 * sample})
        clips.append(generate_and_score(pipe, cases, eval_dir, run_cfg, settings, limits))
    names = sorted({name for sampled in clips for clip in sampled for name in clip.figures})
    figures = {
        name: np.array([[clip.figures.get(name, np.nan) for clip in sampled] for sampled in clips]).T for name in names
    }
    scores_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"key": key, "figures": {n: v.tolist() for n, v in figures.items()}}) + "\n")
    return figures


# ---------------------------------------------------------------------------------------------------------------
# 4. Intervals and verdicts
# ---------------------------------------------------------------------------------------------------------------


def bootstrap_draws(values: np.ndarray, resamples: int, seed: int = 0) -> np.ndarray:
    """Means of ``resamples`` two-level bootstrap draws of ``values`` (training seeds, cases[, sampling seeds]):
    the training seeds are drawn with replacement, then the cases within each drawn seed. The same ``seed`` draws
    the same indices for arrays of the same shape, so the draws of two rows can be subtracted (paired)."""
    per_case = np.nanmean(values, axis=2) if values.ndim == 3 else values
    seeds, cases = per_case.shape
    rng = np.random.default_rng(seed)
    seed_idx = rng.integers(0, seeds, size=(resamples, seeds))
    case_idx = rng.integers(0, cases, size=(resamples, seeds, cases))
    return np.nanmean(per_case[seed_idx[..., None], case_idx], axis=(1, 2))


def interval(values: np.ndarray, resamples: int, confidence: float) -> dict[str, float]:
    """Mean and the bootstrap percentile interval of ``values`` (see :func:`bootstrap_draws`)."""
    draws = bootstrap_draws(values, resamples)
    tail = (1.0 - confidence) / 2.0
    low, high = np.nanquantile(draws, [tail, 1.0 - tail])
    return {"mean": float(np.nanmean(values)), "low": float(low), "high": float(high)}


def verdict(difference: dict[str, float]) -> str:
    """``holds`` when the interval of (expected better - expected worse) lies above 0, ``reversed`` below it."""
    if difference["low"] > 0:
        return "holds"
    if difference["high"] < 0:
        return "reversed"
    return "within noise"


def judge(
    figures: dict[str, dict[str, np.ndarray]], resamples: int, confidence: float
) -> list[dict[str, Any]]:
    """Each of :data:`EXPECTATIONS` whose two rows were scored: the paired difference, its interval, the verdict."""
    out = []
    for item in EXPECTATIONS:
        if item.better not in figures or item.worse not in figures:
            continue
        difference = interval(figures[item.better][item.figure] - figures[item.worse][item.figure], resamples,
                              confidence)
        out.append({**item.__dict__, "difference": difference, "verdict": verdict(difference)})
    return out


# ---------------------------------------------------------------------------------------------------------------
# 5. The study
# ---------------------------------------------------------------------------------------------------------------


def build_eval_set(cfg: EvaluateConfig, paths: PathsConfig) -> tuple[list[Any], Path]:
    """The ablation's evaluation set, ``num_cases`` held-out clips under ``artifacts/ablation/eval_set`` (built
    from the main pipeline's curated manifest, linked; kept when it already has that many cases)."""
    from humo.evaluation import evalset

    study = paths.artifacts / ABLATION_DIR
    study_paths = paths.model_copy(update={"artifacts": study})
    eval_dir = study_paths.eval_set_dir
    if eval_dir.is_dir() and len(load_cases(eval_dir)) == cfg.ablation.num_cases:
        return load_cases(eval_dir), eval_dir
    source = (paths.artifacts / "curate").resolve()
    if not (source / paths.manifest.name).is_file():
        raise FileNotFoundError(f"{paths.manifest} not found; run the main pipeline (dvc repro) first")
    study.mkdir(parents=True, exist_ok=True)
    if not (study / "curate").exists():
        (study / "curate").symlink_to(source, target_is_directory=True)
    evalset.run(cfg.model_copy(update={"num_cases": cfg.ablation.num_cases}), study_paths)
    return load_cases(eval_dir), eval_dir


def check_inputs(model: ModelConfig, paths: PathsConfig) -> None:
    """Refuse to start without the pretrained backbone or the main pipeline's outputs, naming the fix."""
    if model.checkpoint is None:
        raise ValueError(
            "model.checkpoint is None: the ablation trains every variant from the pretrained backbone; set "
            "model.checkpoint=models/tiny-t2v/ema.safetensors (written by `humo pretrain`)"
        )
    if not (Path(model.checkpoint).parent / "config.json").is_file():
        raise FileNotFoundError(
            f"{Path(model.checkpoint).parent}/config.json not found: the backbone folder must be the one "
            "`humo pretrain` writes (weights, config.json, provenance.json)"
        )
    for linked in LINKED_INPUTS:
        if not (paths.artifacts / linked).exists():
            raise FileNotFoundError(f"{paths.artifacts / linked} not found; run the main pipeline (dvc repro) first")


def run(
    cfg: EvaluateConfig,
    generate: GenerateConfig,
    limits: RequestLimitsConfig,
    encoders: EncodersConfig,
    train: TrainConfig,
    stage1: TrainStage1Config,
    stage2: TrainStage2Config,
    model: ModelConfig,
    tracking: TrackingConfig,
    paths: PathsConfig,
) -> dict[str, Any]:
    """Train every variant for every seed (reused when done), score every row, write ``reports/ablation``.

    Returns:
        The table document (rows with intervals, expectations with verdicts, settings, durations).
    """
    from humo.evaluation.evaluate import _mean_figures, score_vae_round_trip
    from humo.inference.generate import build_pipeline, load_model

    study = cfg.ablation
    check_inputs(model, paths)
    start = time.perf_counter()
    cases, eval_dir = build_eval_set(cfg, paths)
    trained = {
        seed: train_seed(seed, study, train, stage1, stage2, model, tracking, paths) for seed in study.training_seeds
    }
    trained_at = time.perf_counter()
    scores_dir = paths.artifacts / ABLATION_DIR / SCORES_DIR
    per_seed: dict[str, list[dict[str, np.ndarray]]] = {row.key: [] for row in ROWS}
    pipe = None
    for seed, folders in trained.items():
        for checkpoint in dict.fromkeys(folders[(row.variant, row.stage)] for row in ROWS):
            transformer, _ = load_model(checkpoint)
            pipe = build_pipeline(transformer, generate, encoders, paths.vae_dir, limits)
            for row in (r for r in ROWS if folders[(r.variant, r.stage)] == checkpoint):
                per_seed[row.key].append(
                    score_row(row, seed, pipe, checkpoint, cases, eval_dir, cfg, generate, limits, scores_dir)
                )
                logger.info("ablation seed %d %s: %s", seed, row.key,
                            {c: round(float(np.nanmean(per_seed[row.key][-1][c])), 3) for c in COLUMNS})
    figures = {
        key: {name: np.stack([seeded[name] for seeded in rows]) for name in COLUMNS} for key, rows in per_seed.items()
    }
    ceiling = _mean_figures(score_vae_round_trip(pipe, cases, eval_dir, cfg)) if pipe is not None else {}
    document = {
        "rows": {
            row.key: {"name": row.name, **{c: interval(figures[row.key][c], study.bootstrap_resamples,
                                                       study.confidence) for c in COLUMNS}}
            for row in ROWS
        },
        "ceiling": {c: ceiling.get(c) for c in COLUMNS},
        "expectations": judge(figures, study.bootstrap_resamples, study.confidence),
        "paper_table3": PAPER_TABLE3,
        "settings": {
            "training_seeds": list(study.training_seeds), "stage1_steps": study.stage1_steps,
            "stage2_steps": study.stage2_steps, "cases": len(cases), "sampling_seeds": study.sampling_seeds,
            "denoising_steps": cfg.steps, "confidence": study.confidence, "backbone": str(model.checkpoint),
        },
        "seconds": {"training": round(trained_at - start, 1), "total": round(time.perf_counter() - start, 1)},
    }
    out_dir = paths.report_dir(str(ABLATION_DIR))
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "table.json").write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")
    (out_dir / "table.md").write_text(table_markdown(document), encoding="utf-8")
    logger.info("ablation table written to %s in %.0f s", out_dir / "table.md", document["seconds"]["total"])
    return document


def _fmt(figure: dict[str, float] | None) -> str:
    if figure is None or not np.isfinite(figure["mean"]):
        return "-"
    return f"{figure['mean']:.3f} ± {(figure['high'] - figure['low']) / 2:.3f}"


def table_markdown(document: dict[str, Any]) -> str:
    """The report: rows with intervals, the ceiling, the verdicts, the paper's Table 3 beside."""
    s = document["settings"]
    pct = f"{s['confidence']:.0%}"
    lines = [
        "# The paper's ablation in miniature (SynthTalk)",
        "",
        f"Every trained variant {len(s['training_seeds'])} times (training seeds {s['training_seeds']}), from the "
        f"pretrained backbone `{s['backbone']}` with stage 1 {s['stage1_steps']} + stage 2 {s['stage2_steps']} "
        f"steps; {s['cases']} held-out cases x {s['sampling_seeds']} sampling seeds, {s['denoising_steps']} "
        f"denoising steps. Figures: mean ± half the {pct} interval of a two-level bootstrap (training seeds, then "
        f"cases). Took {document['seconds']['total'] / 60:.0f} min ({document['seconds']['training'] / 60:.0f} min "
        "training).",
        "",
        "| row | " + " | ".join(COLUMNS) + " |",
        "|---|" + "---|" * len(COLUMNS),
        *(f"| {row['name']} | " + " | ".join(_fmt(row[c]) for c in COLUMNS) + " |"
          for row in document["rows"].values()),
        "| ground truth after the VAE (ceiling) | "
        + " | ".join("-" if document["ceiling"].get(c) is None else f"{document['ceiling'][c]:.3f}" for c in COLUMNS)
        + " |",
        "",
        f"Each expectation: the paired difference (expected better - expected worse), its {pct} interval, and "
        "the verdict: **holds** (interval above 0), **reversed** (below 0) or **within noise**.",
        "",
        "| expectation | rows | figure | difference | verdict | paper |",
        "|---|---|---|---|---|---|",
        *(
            f"| {e['statement']} | {e['better']} vs {e['worse']} | {e['figure']} | {e['difference']['mean']:+.3f} "
            f"[{e['difference']['low']:+.3f}, {e['difference']['high']:+.3f}] | {e['verdict']} | {e['source']} |"
            for e in document["expectations"]
        ),
        "",
        "The paper's Table 3 (HuMo-17B on MoCha) for the trained rows:",
        "",
        "| row | AES | TVA | ID-Cur | Sync-C |",
        "|---|---|---|---|---|",
        *(f"| {key} | " + " | ".join(f"{v:.3f}" for v in paper.values()) + " |"
          for key, paper in document["paper_table3"].items()),
    ]
    return "\n".join(lines) + "\n"
