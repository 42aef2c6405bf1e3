"""The ``evaluate`` stage: generate the evaluation set with the candidate in several modes, score, gate, report.

Steps of :func:`run`:

1. load the fixed evaluation set (``artifacts/eval_set``, stage ``eval_set``) and score its ground-truth clips
   (the ceiling row of the report: what the metrics give a perfect generator), raw and after a VAE round trip
   (what any generator decoding through this VAE can reach at best);
2. load the candidate (``artifacts/train_stage2``, EMA weights) into a :class:`~humo.inference.HumoPipeline`
   with the configured encoders and the ``generate`` section's solver and guidance;
3. generate every case in every mode of ``evaluate.modes`` (TA, TI, TIA by default) with a fixed seed per case,
   and score each video with :func:`score_clip` (sync against the case's audio in every mode, so TI, which
   never hears it, shows what "no sync" scores);
4. write ``reports/evaluate/metrics.json`` (DVC metrics: per-mode means, the ground-truth row, and the gate
   mode's figures at the top level), ``gate.json`` (:func:`humo.evaluation.gates.passes`), DVC plot data,
   the Markdown report with PNG charts and frame strips (:mod:`humo.evaluation.report`);
5. log the figures and the report to the training's MLflow run (``run_id`` from ``train_stage2/run.json``).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from humo.config import (
    EncodersConfig,
    EvaluateConfig,
    GenerateConfig,
    PathsConfig,
    RequestLimitsConfig,
    TrackingConfig,
)
from humo.data.media import read_audio, read_clip
from humo.data.sync import scorer_view
from humo.evaluation import metrics, probes, report
from humo.evaluation.evalset import EvalCase, load_cases
from humo.evaluation.gates import GateDecision, passes
from humo.evaluation.metrics import ScoredClip
from humo.inference.generate import GenerationRequest, build_pipeline, generate, load_model

logger = logging.getLogger(__name__)

REPORT_DIR = "evaluate"
SPEED_REPORT_DIR = "speed"
"""Folder of the speed study's outputs under ``paths.reports`` (``humo.evaluation.speed`` writes it)."""
SPEED_TABLE_FILE = "table.md"
GROUND_TRUTH = "ground_truth"
"""Name of the report row scoring the evaluation set's own clips."""
VAE_ROUND_TRIP = "vae_round_trip"
"""Name of the report row scoring the evaluation set's clips after a VAE encode-decode (the VAE's ceiling)."""


@dataclass
class Evaluators:
    """Optional real evaluator models configured in ``evaluate`` (provenance ``model``); all may be None."""

    sync: Any = None
    image: Any = None
    text: Any = None

    @classmethod
    def from_config(cls, cfg: EvaluateConfig) -> Evaluators:
        """Load the plug-ins named by ``evaluate.sync_scorer``, ``image_embedder`` and ``text_scorer``."""
        from humo.data.sync import make_scorer
        from humo.evaluation.embedders import ClipTextScorer, HFImageEmbedder

        return cls(
            sync=make_scorer(cfg.sync_scorer, cfg.sync_max_offset, weights=cfg.syncnet_weights) if cfg.sync_scorer else None,
            image=HFImageEmbedder(cfg.image_embedder) if cfg.image_embedder else None,
            text=ClipTextScorer(cfg.text_scorer) if cfg.text_scorer else None,
        )


def score_clip(
    frames: np.ndarray,
    audio: np.ndarray,
    reference: np.ndarray,
    case: EvalCase,
    cfg: EvaluateConfig,
    evaluators: Evaluators | None = None,
) -> tuple[dict[str, float], np.ndarray]:
    """Every figure of :data:`~humo.evaluation.metrics.METRICS` for one video of a case (real models excepted).

    Args:
        frames: ``(F, H, W, 3)`` uint8 video (generated or ground truth).
        audio: ``(S,)`` float32 16 kHz speech of the case, sample 0 with frame 0.
        reference: ``(H, W, 3)`` uint8 reference image of the case.
        case: the case (boxes, caption).
        cfg: the ``evaluate`` section (sync search range, mouth margin).
        evaluators: optional real models adding ``sync_model_*``, ``embedding_similarity``, ``text_model_score``.

    Returns:
        ``(figures, sync_scores)``: flat name -> value, and the ``(2K+1,)`` exact-sync distance per offset.
    """
    face_boxes = np.asarray(case.face_boxes, dtype=np.float64)[: len(frames)]
    if len(face_boxes) < len(frames):
        face_boxes = np.concatenate([face_boxes, np.repeat(face_boxes[-1:], len(frames) - len(face_boxes), 0)])
    region = probes.union_box(case.mouth_boxes, margin=cfg.mouth_margin_px)
    reference_box = np.asarray(case.reference_face_box, dtype=np.float64)
    exact = metrics.sync_exact(frames, region, audio, case.fps, 16_000, cfg.sync_max_offset)
    motion = metrics.sync_motion(frames, face_boxes, audio, case.fps, 16_000, cfg.sync_max_offset)
    figures = {
        **metrics.sync_figures(exact),
        "sync_motion_confidence_at_zero": metrics.sync_figures(motion)["sync_confidence_at_zero"],
        **metrics.identity_exact(reference, reference_box, frames, face_boxes),
        **metrics.text_alignment_exact(case.caption, frames, face_boxes),
        **metrics.quality_figures(frames),
        "face_presence": metrics.face_presence_synthtalk(reference, reference_box, frames, face_boxes),
    }
    if evaluators is not None:
        from humo.evaluation.embedders import embedding_similarity

        if evaluators.sync is not None:
            view, boxes = scorer_view(evaluators.sync, frames, face_boxes)
            estimate = evaluators.sync(view, boxes, audio, case.fps, 16_000)
            figures.update(metrics.sync_figures(estimate, prefix="sync_model"))
        if evaluators.image is not None:
            figures.update(embedding_similarity(evaluators.image, reference, reference_box, frames, face_boxes))
        if evaluators.text is not None:
            figures["text_model_score"] = evaluators.text(case.caption, frames)
    return figures, np.asarray(exact.scores)


def _mean_figures(clips: list[ScoredClip]) -> dict[str, float]:
    names = sorted({name for clip in clips for name in clip.figures})
    return {
        name: float(np.nanmean([clip.figures.get(name, np.nan) for clip in clips]))
        for name in names
        if any(np.isfinite(clip.figures.get(name, np.nan)) for clip in clips)
    }


def _case_inputs(eval_dir: Path, case: EvalCase) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image

    reference = np.array(Image.open(eval_dir / case.reference).convert("RGB"))  # writable: torch wraps it
    audio = read_audio(eval_dir / case.audio)
    samples = int(round(case.num_frames / case.fps * 16_000))
    audio = np.pad(audio, (0, max(0, samples - len(audio))))[:samples]
    return reference, audio


def generate_and_score(
    pipe: Any,
    cases: list[EvalCase],
    eval_dir: Path,
    cfg: EvaluateConfig,
    settings: GenerateConfig,
    limits: RequestLimitsConfig,
    evaluators: Evaluators | None = None,
    speed: str | None = None,
) -> list[ScoredClip]:
    """Generate every case in every mode of ``cfg.modes`` with ``pipe`` and score the videos.

    Every video goes through :func:`humo.inference.generate.generate` (latents out); they are decoded by the VAE
    in batches of ``cfg.decode_batch``: the causal VAE decodes frame by frame, so one batched decode costs little
    more than a single one on a CPU.

    Args:
        pipe: a :class:`~humo.inference.pipeline.HumoPipeline`.
        cases: the evaluation set.
        eval_dir: its folder.
        cfg: the ``evaluate`` section (modes, steps, seed, decode batch).
        settings: the ``generate`` section (guidance settings).
        limits: the ``limits`` section.
        evaluators: optional real evaluator models (see :func:`score_clip`).
        speed: the requests' ``speed`` (None: the configured one).
    """
    import torch

    from humo.models.encoders import tensor_to_frames

    inputs = {case.case_id: _case_inputs(eval_dir, case) for case in cases}
    jobs: list[tuple[str, EvalCase, torch.Tensor, dict[str, float]]] = []
    for mode in cfg.modes:
        for index, case in enumerate(tqdm(cases, desc=f"generate {mode}", disable=not settings.progress_bar)):
            reference, audio = inputs[case.case_id]
            request = GenerationRequest(
                id=case.case_id, prompt=case.caption, mode=mode, image=reference if "I" in mode else None,
                audio=audio if "A" in mode else None, seed=cfg.seed + index, steps=cfg.steps,
                num_frames=case.num_frames, height=case.height, width=case.width, speed=speed,
            )
            result = generate(pipe, request, settings, limits, output_type="latent", progress=False)
            cost = {"dit_forwards": result.output.dit_forwards, "seconds": result.output.timings["total"]}
            jobs.append((mode, case, result.output.frames, cost))
    scored = []
    for first in range(0, len(jobs), cfg.decode_batch):
        chunk = jobs[first : first + cfg.decode_batch]
        with torch.no_grad():
            videos = pipe.decode_latents(torch.stack([latents for _, _, latents, _ in chunk]))
        for (mode, case, _, cost), video in zip(chunk, videos, strict=True):
            frames = tensor_to_frames(video)[: case.num_frames]
            reference, audio = inputs[case.case_id]
            figures, scores = score_clip(frames, audio, reference, case, cfg, evaluators)
            scored.append(ScoredClip(case.case_id, mode, figures, scores, frames, cost))
            logger.info(
                "%s %s: sync %.3f identity %.3f text %.2f",
                mode, case.case_id, figures["sync_confidence_at_zero"], figures["identity_similarity"],
                figures.get("text_alignment", float("nan")),
            )
    return scored


def score_ground_truth(
    cases: list[EvalCase], eval_dir: Path, cfg: EvaluateConfig, evaluators: Evaluators | None = None
) -> list[ScoredClip]:
    """Score the evaluation set's own clips (the ceiling the generated videos are read against)."""
    scored = []
    for case in cases:
        reference, audio = _case_inputs(eval_dir, case)
        frames = read_clip(eval_dir / case.truth_video).frames
        figures, scores = score_clip(frames, audio, reference, case, cfg, evaluators)
        scored.append(ScoredClip(case.case_id, GROUND_TRUTH, figures, scores, frames))
    return scored


def score_vae_round_trip(
    pipe: Any, cases: list[EvalCase], eval_dir: Path, cfg: EvaluateConfig, evaluators: Evaluators | None = None
) -> list[ScoredClip]:
    """Score the ground-truth clips after a VAE encode-decode round trip: the ceiling any generator can reach
    through this VAE (a VAE that blurs mouths or colours caps sync, identity and text figures here)."""
    import torch

    from humo.models.encoders import frames_to_tensor, tensor_to_frames

    clips = [read_clip(eval_dir / case.truth_video).frames for case in cases]
    scored = []
    for first in range(0, len(cases), cfg.decode_batch):
        chunk = list(range(first, min(first + cfg.decode_batch, len(cases))))
        with torch.no_grad():
            latents = pipe.vae.encode(torch.stack([frames_to_tensor(clips[i]) for i in chunk]))
            videos = pipe.decode_latents(latents)
        for i, video in zip(chunk, videos, strict=True):
            reference, audio = _case_inputs(eval_dir, cases[i])
            frames = tensor_to_frames(video)[: cases[i].num_frames]
            figures, scores = score_clip(frames, audio, reference, cases[i], cfg, evaluators)
            scored.append(ScoredClip(cases[i].case_id, VAE_ROUND_TRIP, figures, scores, frames))
    return scored


def summarise(scored: list[ScoredClip], gate_mode: str) -> dict[str, Any]:
    """The DVC metrics document: per-row means, and the gate mode's means again at the top level."""
    rows: dict[str, dict[str, float]] = {}
    for name in dict.fromkeys(clip.mode for clip in scored):
        rows[name] = _mean_figures([clip for clip in scored if clip.mode == name])
    document: dict[str, Any] = dict(rows.get(gate_mode, {}))
    document.update(rows)
    return document


def _log_to_mlflow(
    tracking: TrackingConfig, run_file: Path, document: dict[str, Any], decision: GateDecision, report_dir: Path
) -> str | None:
    """Log the figures (``eval.<row>.<name>``), the gate and the report to the training run; returns its id."""
    if not run_file.is_file():
        logger.warning("%s not found: the evaluation is not logged to MLflow", run_file)
        return None
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    run_id = json.loads(run_file.read_text(encoding="utf-8")).get("run_id")
    if not run_id:
        logger.warning("%s has no run_id: the evaluation is not logged to MLflow", run_file)
        return None
    mlflow.set_tracking_uri(tracking.uri)
    client = MlflowClient()
    timestamp = int(time.time() * 1000)
    flat = {
        f"eval.{row}.{name}": value
        for row, figures in document.items()
        if isinstance(figures, dict)
        for name, value in figures.items()
        if np.isfinite(value)
    }
    flat["eval.gate_passed"] = float(decision.passed)
    try:
        client.get_run(run_id)
    except MlflowException:
        logger.warning("training run %s is not in the tracking store %s: the evaluation is not logged", run_id, tracking.uri)
        return None
    client.log_batch(
        run_id, metrics=[mlflow.entities.Metric(key, float(value), timestamp, 0) for key, value in flat.items()]
    )
    client.set_tag(run_id, "humo.gate", "passed" if decision.passed else "failed")
    client.log_artifacts(run_id, str(report_dir), artifact_path="evaluate")
    return str(run_id)


def _speed_table(paths: PathsConfig) -> str | None:
    """The speed study's table when that stage has run (``reports/speed/table.md``), else None."""
    path = paths.report_dir(SPEED_REPORT_DIR) / SPEED_TABLE_FILE
    return path.read_text(encoding="utf-8") if path.is_file() else None


def run(
    cfg: EvaluateConfig,
    settings: GenerateConfig,
    limits: RequestLimitsConfig,
    encoders: EncodersConfig,
    paths: PathsConfig,
    tracking: TrackingConfig,
    candidate: Path | None = None,
) -> GateDecision:
    """The ``evaluate`` stage (see the module docstring).

    Args:
        cfg, settings (``generate``), limits, encoders, paths, tracking: params sections.
        candidate: checkpoint folder to evaluate (default ``<artifacts>/train_stage2``).

    Returns:
        The gate decision (also written to ``reports/evaluate/gate.json``).

    Raises:
        FileNotFoundError: no evaluation set or no candidate checkpoint.
    """
    start, cpu_start = time.perf_counter(), time.process_time()
    eval_dir = paths.eval_set_dir
    cases = load_cases(eval_dir)
    candidate = Path(candidate or paths.candidate_dir)
    transformer, info = load_model(candidate)
    pipe = build_pipeline(transformer, settings, encoders, paths.vae_dir, limits)
    evaluators = Evaluators.from_config(cfg)
    scored = score_ground_truth(cases, eval_dir, cfg, evaluators)
    scored += score_vae_round_trip(pipe, cases, eval_dir, cfg, evaluators)
    scored += generate_and_score(pipe, cases, eval_dir, cfg, settings, limits, evaluators)
    document = summarise(scored, cfg.gate.mode)
    decision = passes(document.get(cfg.gate.mode, {}), cfg.gate)
    seconds = time.perf_counter() - start

    report_dir = paths.report_dir(REPORT_DIR)
    report.write_report(
        report_dir,
        scored=scored,
        document=document,
        decision=decision,
        cases=cases,
        eval_dir=eval_dir,
        candidate=f"{candidate} ({info.version})",
        cfg=cfg,
        seconds=seconds,
        cpu_seconds=time.process_time() - cpu_start,
        speed_table=_speed_table(paths),
    )
    run_id = _log_to_mlflow(tracking, candidate / "run.json", document, decision, report_dir)
    logger.info(
        "evaluation of %s in %.0f s: gate %s (%s)%s",
        candidate, seconds, "passed" if decision.passed else "failed", decision.reason,
        f", logged to MLflow run {run_id}" if run_id else "",
    )
    return decision
