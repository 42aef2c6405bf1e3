"""The ``train_vae`` stage: train the embedded tiny ``AutoencoderKLWan`` on SynthTalk and check its mouths.

Upstream uses the released Wan2.1 VAE. Our embedded default cannot download it, so a VAE of the same family
(causal 3-D convolutions, 4x temporal / 8x spatial compression to 16 channels, diffusers' implementation) at a
small width is trained here on random ``clip_frames``-frame crops of SynthTalk clips of the *train* identities:

1. read the train and held-out clips (videos plus ground-truth annotations) from the raw dataset;
2. train with an L1 reconstruction loss weighted up on the mouth boxes (plus a tiny KL term, as a KL-VAE) and a
   cosine learning-rate decay, logging the loss to MLflow;
3. measure the per-channel mean and std of the latents (posterior means) on train clips and store them in the
   saved config, so :func:`humo.models.encoders.load_vae` returns normalised latents like the Wan VAE;
4. evaluate on whole clips of *held-out* identities: PSNR (whole frame and mouth region) and the **mouth
   test**: the dark mouth-opening area measured on reconstructions must still follow the ground-truth
   ``mouth_opening`` (correlation, open/closed accuracy), otherwise the DiT could not learn lip sync;
5. write ``<out>/vae`` (``save_pretrained``), ``<out>/metrics.json``, ``<reports>/train_vae.json`` and a PNG of
   originals against reconstructions.

When ``encoders.vae.kind`` is ``wan`` nothing is trained: the stage writes a note and returns.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from humo.config import TrackingConfig, TrainVaeConfig, VaeConfig
from humo.constants import LATENT_CHANNELS, VAE_TEMPORAL_STRIDE
from humo.data.media import read_video
from humo.data.synthtalk.render import MOUTH_COLOUR
from humo.models.encoders.vae import build_tiny_vae, frames_to_tensor, tensor_to_frames
from humo.tracking import mlflow_run

logger = logging.getLogger(__name__)

STAGE_NAME = "train_vae"
"""The stage's folder under ``paths.artifacts``."""
CAPTIONS_FILE = "video_caption.parquet"
VAE_DIR_NAME = "vae"
METRICS_NAME = "metrics.json"
REPORT_NAME = "train_vae.json"
FIGURE_NAME = "train_vae_reconstruction.png"
SKIP_NOTE_NAME = "SKIPPED.md"

KL_WEIGHT = 1e-6
"""Weight of the KL term: small, as in KL-VAEs for diffusion, so reconstructions stay sharp."""
FINAL_LR_FRACTION = 0.1
"""The cosine schedule decays the learning rate to this share of ``learning_rate``."""
LOG_EVERY = 10
"""Steps between loss values logged to MLflow."""
EVAL_BATCH = 4
"""Whole clips per forward pass when measuring statistics and reconstructions."""
STATS_CLIPS = 32
"""Train clips whose latents give the per-channel mean and std."""

MOUTH_COLOUR_SIGMA = 30.0
"""RGB distance scale of the soft "mouth interior" membership exp(-d^2 / (2 sigma^2)) used by the mouth test."""
OPEN_MOUTH = 0.3
"""Frames with ground-truth ``mouth_opening`` at least this are "open" in the open/closed test."""
CLOSED_MOUTH = 0.05
"""Frames with ``mouth_opening`` at most this are "closed"."""
FIGURE_CLIPS = 3
"""Held-out clips shown in the reconstruction figure."""


# =====================================================================================================
# Data
# =====================================================================================================


@dataclass
class ClipSet:
    """Whole SynthTalk clips with their mouth ground truth.

    Attributes:
        ids: clip ids, ``(N,)``.
        frames: ``(N, F, H, W, 3)`` uint8.
        openings: ``(N, F)`` ground-truth mouth opening in [0, 1].
        mouth_regions: ``(N, 4)`` int pixel boxes ``[x0, y0, x1, y1)`` holding the mouth in every frame of the clip.
    """

    ids: list[str]
    frames: np.ndarray
    openings: np.ndarray
    mouth_regions: np.ndarray


def _mouth_region(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """The union of a clip's per-frame mouth boxes ``(F, 4)``, grown to whole pixels and clipped to the frame."""
    x0, y0 = np.floor(boxes[:, :2].min(axis=0)).astype(int)
    x1, y1 = np.ceil(boxes[:, 2:].max(axis=0)).astype(int)
    return np.array([max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)])


def load_clips(raw_dir: Path, split: str, limit: int, seed: int) -> ClipSet:
    """Read up to ``limit`` clips of one split (a seeded random choice) from a SynthTalk folder.

    Args:
        raw_dir: the dataset in the HuMoSet layout with ``annotations/`` (``paths.raw``).
        split: ``"train"`` or ``"heldout"`` (identity split).
        limit: clips to read.
        seed: seed of the choice.

    Raises:
        FileNotFoundError: no ``video_caption.parquet`` (run ``humo synth``).
        ValueError: no clip of that split, clips without annotations, or clips of different sizes.
    """
    table_path = Path(raw_dir) / CAPTIONS_FILE
    if not table_path.is_file():
        raise FileNotFoundError(f"{table_path} not found; train_vae reads SynthTalk: run `humo synth` first")
    table = pd.read_parquet(table_path)
    rows = table[table["split"] == split].sort_values("video_id")
    if rows.empty:
        raise ValueError(f"{table_path} has no clip with split={split!r}; splits present: {sorted(table['split'].unique())}")
    if rows["annotation"].isna().any():
        raise ValueError(f"{table_path}: train_vae needs SynthTalk annotations (mouth ground truth) for every clip")
    chosen = np.random.default_rng(seed).permutation(len(rows))[: min(limit, len(rows))]
    rows = rows.iloc[np.sort(chosen)]
    frames, openings, regions = [], [], []
    for row in rows.itertuples():
        video, _ = read_video(Path(raw_dir) / row.video)
        annotation = json.loads((Path(raw_dir) / row.annotation).read_text(encoding="utf-8"))
        frames.append(video)
        openings.append(np.asarray(annotation["mouth_opening"], dtype=np.float32)[: len(video)])
        regions.append(_mouth_region(np.asarray(annotation["mouth_box"], dtype=np.float64), *video.shape[1:3]))
    shapes = {f.shape for f in frames}
    if len(shapes) != 1:
        raise ValueError(f"clips of split {split!r} differ in shape {sorted(shapes)}; SynthTalk clips share one size")
    return ClipSet(list(rows["video_id"]), np.stack(frames), np.stack(openings), np.stack(regions))


def random_crops(
    frames: np.ndarray,
    batch_size: int,
    clip_frames: int,
    rng: np.random.Generator,
    crop_size: int | None = None,
    mouth_regions: np.ndarray | None = None,
    mouth_weight: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch_size`` random crops of ``clip_frames`` frames (and ``crop_size`` pixels square) from random clips.

    Args:
        frames: ``(N, F, H, W, 3)`` uint8 clips.
        batch_size: crops to cut.
        clip_frames: frames per crop.
        rng: the random generator.
        crop_size: side of a square spatial crop; None = whole frames.
        mouth_regions: ``(N, 4)`` mouth boxes of the clips (``ClipSet.mouth_regions``), for the loss weights.
        mouth_weight: extra loss weight of the pixels inside a clip's mouth box (0 = uniform weights).

    Returns:
        ``[batch_size, 3, clip_frames, S, S]`` (or ``H x W``) float32 pixels in [-1, 1], and the per-pixel loss
        weights ``[batch_size, 1, 1, S, S]`` (1 outside the mouth box, ``1 + mouth_weight`` inside).
    """
    num_clips, num_frames, height, width = frames.shape[:4]
    size_h, size_w = (height, width) if crop_size is None else (crop_size, crop_size)
    if clip_frames > num_frames or size_h > height or size_w > width:
        raise ValueError(
            f"crop {clip_frames}x{size_h}x{size_w} (frames x height x width) does not fit the clips "
            f"({num_frames}x{height}x{width}); lower train_vae.clip_frames or train_vae.crop_size"
        )
    clips = rng.integers(0, num_clips, batch_size)
    starts = rng.integers(0, num_frames - clip_frames + 1, batch_size)
    tops = rng.integers(0, height - size_h + 1, batch_size)
    lefts = rng.integers(0, width - size_w + 1, batch_size)
    crops = np.stack([
        frames[c, s : s + clip_frames, y : y + size_h, x : x + size_w]
        for c, s, y, x in zip(clips, starts, tops, lefts, strict=True)
    ])
    pixels = frames_to_tensor(crops.reshape(-1, *crops.shape[2:])).unflatten(1, (batch_size, clip_frames)).transpose(0, 1)
    weights = torch.ones(batch_size, 1, 1, size_h, size_w)
    if mouth_regions is not None and mouth_weight > 0:
        for i, (c, y, x) in enumerate(zip(clips, tops, lefts, strict=True)):
            x0, y0, x1, y1 = mouth_regions[c]
            weights[i, ..., max(y0 - y, 0) : max(y1 - y, 0), max(x0 - x, 0) : max(x1 - x, 0)] += mouth_weight
    return pixels, weights


def _whole_clips(frames: np.ndarray) -> torch.Tensor:
    """``(B, F, H, W, 3)`` uint8 -> ``[B, 3, F', H, W]`` in [-1, 1], cut to the longest 4k+1 length."""
    usable = (frames.shape[1] - 1) // VAE_TEMPORAL_STRIDE * VAE_TEMPORAL_STRIDE + 1
    batch = frames[:, :usable]
    return frames_to_tensor(batch.reshape(-1, *batch.shape[2:])).unflatten(1, batch.shape[:2]).transpose(0, 1)


# =====================================================================================================
# Training and evaluation
# =====================================================================================================


def train_steps(
    vae, frames: np.ndarray, cfg: TrainVaeConfig, log_metric, mouth_regions: np.ndarray | None = None
) -> list[float]:
    """Optimise ``vae`` (a ``diffusers.AutoencoderKLWan``) for ``cfg.steps`` steps on random crops.

    The loss is an L1 reconstruction of the posterior mean (the latent that precompute and inference use; a
    sampled latent buried the untrained encoder's small signal in unit noise) weighted up by
    ``cfg.mouth_weight`` inside the mouth boxes (the lips are a few percent of a frame and carry the sync), plus
    a tiny KL term.

    Args:
        vae: the model, trained in place.
        frames: ``(N, F, H, W, 3)`` uint8 training clips.
        cfg: the ``train_vae`` section (steps, batch size, crop length, learning rate, seed, mouth weight).
        log_metric: ``log_metric(name, value, step)``, e.g. ``mlflow.log_metric``.
        mouth_regions: ``(N, 4)`` mouth boxes of the clips; None = uniform weights.

    Returns:
        The loss of every step.
    """
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=cfg.learning_rate, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: FINAL_LR_FRACTION + (1 - FINAL_LR_FRACTION) * 0.5 * (1 + math.cos(math.pi * step / cfg.steps)),
    )
    vae.train()
    losses: list[float] = []
    bar = tqdm(range(cfg.steps), desc="train_vae", unit="step", mininterval=2.0)
    for step in bar:
        batch, weights = random_crops(
            frames, cfg.batch_size, cfg.clip_frames, rng, cfg.crop_size, mouth_regions, cfg.mouth_weight
        )
        posterior = vae.encode(batch).latent_dist
        recon = vae.decode(posterior.mode()).sample
        reconstruction = ((recon - batch).abs() * weights).mean() / weights.mean()
        loss = reconstruction + KL_WEIGHT * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if step % LOG_EVERY == 0 or step == cfg.steps - 1:
            log_metric("train/l1", reconstruction.item(), step)
            log_metric("train/loss", losses[-1], step)
            bar.set_postfix(l1=f"{reconstruction.item():.4f}")
    vae.eval()
    return losses


@torch.no_grad()
def latent_statistics(vae, frames: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of the posterior means of whole clips ``(N, F, H, W, 3)`` (over clips, time, space)."""
    latents = [
        vae.encode(_whole_clips(frames[i : i + EVAL_BATCH])).latent_dist.mode()
        for i in range(0, len(frames), EVAL_BATCH)
    ]
    flat = torch.cat(latents).transpose(0, 1).reshape(LATENT_CHANNELS, -1).double()
    return flat.mean(dim=1).tolist(), flat.std(dim=1).clamp_min(1e-6).tolist()


@torch.no_grad()
def reconstruct(vae, frames: np.ndarray) -> np.ndarray:
    """Round trip of whole clips ``(N, F, H, W, 3)`` uint8 through ``vae`` (posterior means) -> same layout."""
    out = []
    for i in range(0, len(frames), EVAL_BATCH):
        video = _whole_clips(frames[i : i + EVAL_BATCH])
        decoded = vae.decode(vae.encode(video).latent_dist.mode()).sample
        out.extend(tensor_to_frames(clip) for clip in decoded)
    return np.stack(out)


def psnr(reference: np.ndarray, test: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB of two uint8 arrays of one shape (peak 255)."""
    mse = np.mean((reference.astype(np.float64) - test.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def mouth_area(frames: np.ndarray, region: np.ndarray) -> np.ndarray:
    """Soft area in pixels of the dark mouth interior inside ``region`` for frames ``(F, H, W, 3)`` uint8 -> ``(F,)``.

    A pixel counts by how close its colour is to SynthTalk's mouth colour (a Gaussian in RGB distance), so a
    blurred reconstruction still gets partial credit: an open mouth gives hundreds of pixels, closed lips few.
    """
    x0, y0, x1, y1 = region
    crop = frames[:, y0:y1, x0:x1].astype(np.float64)
    distance2 = ((crop - np.asarray(MOUTH_COLOUR, dtype=np.float64)) ** 2).sum(axis=-1)
    return np.exp(-distance2 / (2 * MOUTH_COLOUR_SIGMA**2)).sum(axis=(1, 2))


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    if a.std() == 0 or b.std() == 0:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])


def mouth_metrics(clips: ClipSet, reconstructions: np.ndarray) -> dict[str, float]:
    """The mouth test: do open and closed mouths stay distinguishable after a VAE round trip?

    The mouth area (:func:`mouth_area`) is measured on originals and reconstructions of every frame. Reported:

    * ``mouth_corr_reconstructed`` / ``mouth_corr_original``: Pearson correlation between the area and the
      ground-truth ``mouth_opening`` over all frames (the original is the ceiling);
    * ``mouth_open_closed_accuracy``: frames with opening >= 0.3 ("open") or <= 0.05 ("closed") classified by
      thresholding the reconstruction's area at the midpoint of the two class means measured on the
      *originals* (so the threshold is fixed before looking at reconstructions); chance is the majority share;
    * ``mouth_area_error_px``: mean absolute difference of the area, reconstruction vs original.
    """
    frames_used = reconstructions.shape[1]
    original = np.concatenate(
        [mouth_area(clips.frames[i, :frames_used], clips.mouth_regions[i]) for i in range(len(clips.ids))]
    )
    recon = np.concatenate(
        [mouth_area(reconstructions[i], clips.mouth_regions[i]) for i in range(len(clips.ids))]
    )
    opening = clips.openings[:, :frames_used].reshape(-1)
    is_open, is_closed = opening >= OPEN_MOUTH, opening <= CLOSED_MOUTH
    labelled = is_open | is_closed
    metrics = {
        "mouth_corr_reconstructed": _pearson(recon, opening),
        "mouth_corr_original": _pearson(original, opening),
        "mouth_area_error_px": float(np.abs(recon - original).mean()),
        "mouth_open_frames": int(is_open.sum()),
        "mouth_closed_frames": int(is_closed.sum()),
    }
    if is_open.any() and is_closed.any():
        threshold = 0.5 * (original[is_open].mean() + original[is_closed].mean())
        metrics["mouth_threshold_px"] = float(threshold)
        metrics["mouth_open_closed_accuracy"] = float(((recon > threshold) == is_open)[labelled].mean())
        metrics["mouth_open_closed_accuracy_original"] = float(((original > threshold) == is_open)[labelled].mean())
        metrics["mouth_open_closed_chance"] = float(max(is_open.sum(), is_closed.sum()) / labelled.sum())
    return metrics


def evaluate(vae, clips: ClipSet) -> tuple[dict[str, float], np.ndarray]:
    """PSNR (whole frame, mouth region) and the mouth test on held-out whole clips; returns (metrics, reconstructions)."""
    reconstructions = reconstruct(vae, clips.frames)
    frames_used = reconstructions.shape[1]
    originals = clips.frames[:, :frames_used]
    psnrs = [psnr(originals[i], reconstructions[i]) for i in range(len(clips.ids))]
    mouth_psnrs = []
    for i, (x0, y0, x1, y1) in enumerate(clips.mouth_regions):
        mouth_psnrs.append(psnr(originals[i, :, y0:y1, x0:x1], reconstructions[i, :, y0:y1, x0:x1]))
    metrics = {
        "psnr_heldout": float(np.mean(psnrs)),
        "psnr_heldout_min": float(np.min(psnrs)),
        "psnr_mouth_heldout": float(np.mean(mouth_psnrs)),
        "num_heldout_clips": len(clips.ids),
        **mouth_metrics(clips, reconstructions),
    }
    return metrics, reconstructions


def save_figure(clips: ClipSet, reconstructions: np.ndarray, path: Path) -> Path:
    """A PNG: for a few held-out clips, originals (top) and reconstructions (bottom) at closed and open frames."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = min(FIGURE_CLIPS, len(clips.ids))
    per_clip = 4
    fig, axes = plt.subplots(2, shown * per_clip, figsize=(1.6 * shown * per_clip, 3.6), squeeze=False)
    for c in range(shown):
        opening = clips.openings[c, : reconstructions.shape[1]]
        order = np.argsort(opening)
        picks = sorted({int(order[0]), int(order[len(order) // 2]), int(order[-2]), int(order[-1])})
        picks = (picks + [int(order[-1])] * per_clip)[:per_clip]
        for k, frame in enumerate(picks):
            col = c * per_clip + k
            axes[0, col].imshow(clips.frames[c, frame])
            axes[1, col].imshow(reconstructions[c, frame])
            axes[0, col].set_title(f"{clips.ids[c]} f{frame}\nopening {opening[frame]:.2f}", fontsize=6)
            for row in (0, 1):
                axes[row, col].set_xticks([])
                axes[row, col].set_yticks([])
    axes[0, 0].set_ylabel("original", fontsize=8)
    axes[1, 0].set_ylabel("tiny VAE", fontsize=8)
    fig.suptitle("train_vae: held-out identities, original vs round trip", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# =====================================================================================================
# Stage
# =====================================================================================================


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def run(
    cfg: TrainVaeConfig,
    vae_cfg: VaeConfig,
    raw_dir: Path,
    out_dir: Path,
    reports_dir: Path,
    tracking: TrackingConfig,
) -> dict[str, Any]:
    """Train the tiny VAE on SynthTalk, or skip when the real Wan VAE is configured.

    Args:
        cfg: the ``train_vae`` section.
        vae_cfg: ``encoders.vae``; ``kind: wan`` skips training.
        raw_dir: the SynthTalk dataset (``paths.raw``).
        out_dir: the stage folder (``artifacts/train_vae``): ``vae/`` and ``metrics.json`` go here.
        reports_dir: ``paths.reports``: ``train_vae.json`` (DVC metrics) and the reconstruction PNG go here.
        tracking: MLflow settings.

    Returns:
        The metrics (also written to ``metrics.json``), or ``{"skipped": True, ...}``.

    Raises:
        FileNotFoundError: the dataset is missing.
        ValueError: ``clip_frames`` longer than the clips, or a dataset without the needed splits/annotations.
    """
    out_dir, reports_dir = Path(out_dir), Path(reports_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if vae_cfg.kind != "tiny":
        note = (
            f"# train_vae skipped\n\nencoders.vae.kind is {vae_cfg.kind!r}: the VAE is loaded from {vae_cfg.path}/vae, "
            "nothing is trained. Set encoders.vae.kind=tiny to train the embedded VAE on SynthTalk.\n"
        )
        (out_dir / SKIP_NOTE_NAME).write_text(note, encoding="utf-8")
        metrics = {"skipped": True, "reason": f"encoders.vae.kind={vae_cfg.kind}"}
        _write_json(out_dir / METRICS_NAME, metrics)
        _write_json(reports_dir / REPORT_NAME, metrics)
        logger.info("train_vae skipped: encoders.vae.kind=%s", vae_cfg.kind)
        return metrics
    (out_dir / SKIP_NOTE_NAME).unlink(missing_ok=True)

    started = time.perf_counter()
    train = load_clips(raw_dir, "train", cfg.num_train_clips, cfg.seed)
    heldout = load_clips(raw_dir, "heldout", cfg.num_val_clips, cfg.seed)
    logger.info(
        "train_vae: %d train clips, %d held-out clips of %s frames; %d steps of %d x %d-frame crops",
        len(train.ids), len(heldout.ids), train.frames.shape[1:], cfg.steps, cfg.batch_size, cfg.clip_frames,
    )
    torch.manual_seed(cfg.seed)
    vae = build_tiny_vae(cfg.base_dim)
    with mlflow_run(tracking, "train_vae", params={"train_vae": cfg.model_dump(), "vae": vae_cfg.model_dump(mode="json")}) as active:
        import mlflow

        train_started, cpu_started = time.perf_counter(), time.process_time()
        losses = train_steps(vae, train.frames, cfg, mlflow.log_metric, train.mouth_regions)
        train_seconds = time.perf_counter() - train_started
        train_cpu_seconds = time.process_time() - cpu_started

        mean, std = latent_statistics(vae, train.frames[:STATS_CLIPS])
        vae.register_to_config(latents_mean=mean, latents_std=std)
        vae.save_pretrained(out_dir / VAE_DIR_NAME)

        metrics, reconstructions = evaluate(vae, heldout)
        metrics.update(
            final_loss=float(np.mean(losses[-LOG_EVERY:])),
            train_seconds=train_seconds,
            seconds_per_step=train_seconds / cfg.steps,
            cpu_seconds_per_step=train_cpu_seconds / cfg.steps,
            total_seconds=time.perf_counter() - started,
            num_parameters=sum(p.numel() for p in vae.parameters()),
            mlflow_run_id=active.info.run_id,
        )
        mlflow.log_metrics({k: v for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)})
        figure = save_figure(heldout, reconstructions, reports_dir / FIGURE_NAME)
        _write_json(out_dir / METRICS_NAME, metrics)
        _write_json(reports_dir / REPORT_NAME, metrics)
        mlflow.log_artifact(str(figure))
        mlflow.log_artifact(str(out_dir / METRICS_NAME))
    logger.info(
        "train_vae: held-out PSNR %.2f dB (mouth %.2f dB), mouth corr %.3f (original %.3f), open/closed acc %.3f, "
        "%.1f s",
        metrics["psnr_heldout"], metrics["psnr_mouth_heldout"], metrics["mouth_corr_reconstructed"],
        metrics["mouth_corr_original"], metrics.get("mouth_open_closed_accuracy", float("nan")),
        metrics["total_seconds"],
    )
    return metrics
