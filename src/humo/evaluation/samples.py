"""Sample videos during training: fixed validation requests rendered every N steps, logged to MLflow.

:class:`SampleVideos` is a Lightning callback (rank 0, single-process training). At every
``train.sample_every_n_steps``-th global step, and once more at the end of training:

1. (first time only) pick the requests (:func:`pick_sample_requests`: the first ``train.num_samples`` held-out
   clips of the curated manifest by clip id, with caption, reference image, audio and face boxes) and build a
   :class:`~humo.inference.pipeline.HumoPipeline` around a CPU copy of the transformer with the encoders the
   shards were made with and the trained tiny VAE; when the VAE folder (or anything else) is missing, log one
   warning and switch sampling off for the run: sampling never stops training;
2. load the EMA weights (``HumoSystem.full_state_dicts``; the raw weights before the EMA exists) into the copy;
3. generate each request through :func:`humo.inference.generate.generate` with a fixed seed,
   ``train.sample_steps`` solver steps and the default guidance of :class:`~humo.config.GenerateConfig`, in mode
   TIA for stage 2 and TI for stage 1 (a stage-1 model never heard audio), and write ``step_{N:06d}_{clip}.mp4``
   with the clip's audio muxed;
4. write ``step_{N:06d}_mouth.png``: per request, the mouth opening measured in the sample
   (:func:`humo.evaluation.probes.mouth_opening` over the union of the clip's mouth regions), the ground-truth
   clip's, and the audio envelope per frame; the mean Pearson correlation of sample mouth and envelope is logged
   as the metric ``samples/mouth_envelope_corr``;
5. log the files as artifacts under ``samples/`` of the stage's MLflow run.

The training stage does not import this module: the CLI builds the callback (:func:`sample_callback`) and hands
it to :func:`humo.training.train.run`. Sampling does not change training: it runs under ``torch.no_grad`` on a
separate model copy in eval mode, and the torch, numpy and Python random states are saved before and restored after it, so a run with sampling ends
with bitwise the same weights as one without.
"""

from __future__ import annotations

import contextlib
import logging
import random
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch

from humo.config import EncodersConfig, GenerateConfig, PathsConfig, RequestLimitsConfig, TrackingConfig, TrainConfig
from humo.constants import AUDIO_SAMPLE_RATE
from humo.inference.pipeline import SIZE_MULTIPLE

logger = logging.getLogger(__name__)

HELDOUT_SPLITS = ("heldout", "validation", "val", "test")
"""Manifest splits the requests are taken from, in order of preference (any split when none has clips)."""
MOUTH_MARGIN_PX = 1.0
"""Margin around the union of a clip's mouth regions for the mouth-opening probe."""
ARTIFACT_DIR = "samples"
SAMPLE_SEED = 1234
"""Seed of request ``i``'s initial noise: ``SAMPLE_SEED + i`` (the same at every step, so samples compare)."""


@dataclass
class SampleRequest:
    """One fixed validation request: the conditions of a held-out clip and what the probes need."""

    clip_id: str
    prompt: str
    image: np.ndarray
    """``(H, W, 3)`` uint8 reference image."""
    audio: np.ndarray
    """``(S,)`` float32 16 kHz audio of the clip, sample 0 with frame 0."""
    fps: float
    height: int
    width: int
    num_frames: int
    """Frames to generate (4k+1, at most the clip's)."""
    mouth_region: np.ndarray
    """``(4,)`` one mouth box for all frames, in the generated video's pixels."""
    truth_mouth: np.ndarray
    """``(num_frames,)`` mouth opening of the ground-truth clip in ``mouth_region``."""


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """Restore the torch (CPU and CUDA), numpy and Python random states on exit."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    cuda_states = torch.cuda.get_rng_state_all() if cuda else None
    with torch.random.fork_rng(devices=[]):
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)
            if cuda_states is not None:
                torch.cuda.set_rng_state_all(cuda_states)


def _mouth_region(face_boxes: np.ndarray, scale_x: float, scale_y: float, height: int, width: int) -> np.ndarray:
    """Union over frames of the mouth part of each face box (:data:`humo.data.sync.MOUTH_REGION`), scaled."""
    from humo.data.sync import MOUTH_REGION
    from humo.evaluation.probes import union_box

    boxes = np.asarray(face_boxes, dtype=np.float64).reshape(-1, 4)
    boxes = boxes[np.isfinite(boxes).all(axis=1)]
    if len(boxes) == 0:  # no face found: the lower middle of the frame
        return np.array([0.25 * width, 0.55 * height, 0.75 * width, 0.95 * height])
    rx0, ry0, rx1, ry1 = MOUTH_REGION
    bw, bh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    mouths = np.stack(
        [boxes[:, 0] + rx0 * bw, boxes[:, 1] + ry0 * bh, boxes[:, 0] + rx1 * bw, boxes[:, 1] + ry1 * bh], axis=1
    ) * np.array([scale_x, scale_y, scale_x, scale_y])
    return union_box(mouths, margin=MOUTH_MARGIN_PX)


def pick_sample_requests(
    manifest_path: Path, project_root: Path, num: int, max_frames: int = 97
) -> list[SampleRequest]:
    """The first ``num`` clips (by clip id) of the manifest's held-out split, as generation requests.

    Args:
        manifest_path: ``artifacts/curate/manifest.parquet``.
        project_root: where relative manifest paths start.
        num: how many requests.
        max_frames: cap on generated frames (one window).

    Raises:
        FileNotFoundError: no manifest, or a clip's video or reference image is missing.
        ValueError: the manifest lacks a column the requests need, or has no clip.
    """
    from PIL import Image

    from humo.data.manifest import read_manifest, resolve_path
    from humo.data.media import read_clip
    from humo.evaluation.probes import mouth_opening

    manifest = read_manifest(manifest_path)
    needed = {"clip_id", "split", "video", "caption", "reference_image", "face_boxes"}
    missing = needed - set(manifest.columns)
    if missing:
        raise ValueError(
            f"manifest {manifest_path} lacks the columns {sorted(missing)} that sample requests need; "
            "re-run `humo curate`"
        )
    if manifest.empty:
        raise ValueError(f"manifest {manifest_path} has no clip to sample from; re-run `humo curate`")
    manifest = manifest.sort_values("clip_id", kind="stable")
    chosen = manifest.iloc[0:0]
    for split in HELDOUT_SPLITS:
        chosen = manifest[manifest["split"] == split]
        if len(chosen):
            break
    if chosen.empty:
        logger.warning("manifest %s has no held-out clip: sample requests are taken from any split", manifest_path)
        chosen = manifest
    elif len(chosen) < num:
        logger.info("only %d held-out clip(s) for %d sample requests: sampling those", len(chosen), num)
    requests = []
    for row in chosen.head(num).itertuples(index=False):
        clip = read_clip(resolve_path(row.video, project_root))
        frames = clip.frames
        audio = clip.audio
        if audio is None:
            logger.warning("clip %s has no audio: its sample request uses silence", row.video)
            audio = np.zeros(int(round(len(frames) / clip.fps * AUDIO_SAMPLE_RATE)), dtype=np.float32)
        image = np.array(Image.open(resolve_path(row.reference_image, project_root)).convert("RGB"))
        clip_h, clip_w = frames.shape[1:3]
        height = max(SIZE_MULTIPLE, clip_h // SIZE_MULTIPLE * SIZE_MULTIPLE)
        width = max(SIZE_MULTIPLE, clip_w // SIZE_MULTIPLE * SIZE_MULTIPLE)
        num_frames = (min(len(frames), max_frames) - 1) // 4 * 4 + 1
        face_boxes = row.face_boxes if row.face_boxes is not None else []
        boxes = np.array([np.asarray(box, dtype=np.float64) for box in face_boxes]).reshape(-1, 4)
        region = _mouth_region(boxes, width / clip_w, height / clip_h, height, width)
        # the ground truth is measured at its own size: the region scaled back
        truth_region = region * np.array([clip_w / width, clip_h / height, clip_w / width, clip_h / height])
        caption = row.caption if isinstance(row.caption, str) and row.caption.strip() else "a person talks"
        requests.append(
            SampleRequest(
                clip_id=str(row.clip_id),
                prompt=caption,
                image=image,
                audio=np.asarray(audio, dtype=np.float32),
                fps=float(clip.fps),
                height=height,
                width=width,
                num_frames=num_frames,
                mouth_region=region,
                truth_mouth=mouth_opening(frames[:num_frames], truth_region),
            )
        )
    return requests


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 2 or np.std(a) < 1e-12 or np.std(b) < 1e-12:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def plot_mouth_vs_audio(path: Path, rows: list[dict[str, Any]], step: int) -> Path:
    """One panel per request: sample and ground-truth mouth opening (left axis) and audio envelope (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(rows), 1, figsize=(7, 2.4 * len(rows)), squeeze=False)
    for ax, row in zip(axes[:, 0], rows, strict=True):
        frames = np.arange(len(row["mouth"]))
        ax.plot(frames, row["mouth"], color="tab:red", label="sample mouth")
        ax.plot(frames, row["truth_mouth"], color="grey", linestyle="--", label="ground-truth mouth")
        ax.set_ylabel("mouth opening")
        corr = f"{row['corr']:.2f}" if np.isfinite(row["corr"]) else "n/a"
        ax.set_title(f"{row['clip_id']} (step {step}, {row['mode']}): corr {corr}", fontsize=9)
        twin = ax.twinx()
        twin.plot(frames, row["envelope"], color="tab:blue", alpha=0.6, label="audio envelope")
        twin.set_ylabel("audio RMS")
        lines = ax.get_lines() + twin.get_lines()
        ax.legend(lines, [line.get_label() for line in lines], fontsize=7, loc="upper right")
    axes[-1, 0].set_xlabel("frame")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


class SampleVideos(L.Callback):
    """Render fixed validation requests every ``every_n_steps`` steps (and at the end); log them to MLflow.

    Args:
        every_n_steps: sampling cadence in global steps (> 0).
        stage: 1 (mode TI) or 2 (mode TIA).
        manifest_path: the curated manifest the requests come from.
        project_root: where relative manifest paths start.
        num_samples: requests per sampling step.
        num_inference_steps: solver steps per sample.
        encoders: the encoders the shards were made with (text and audio widths must fit the model).
        paths: ``artifacts`` (absolute) holds ``train_vae/vae`` for the tiny VAE.
        run_id: the MLflow run the artifacts go to; None: the training's (its MLflow logger's run, read at setup).
        tracking_uri: the MLflow store.
        generate: solver, shift and guidance (default: :class:`~humo.config.GenerateConfig`'s).
        seed: request ``i`` starts from the noise of seed ``seed + i``.
        limits: what a request may ask for (default: :class:`~humo.config.RequestLimitsConfig`'s; the samples
            are sized from the clips).
    """

    def __init__(
        self,
        every_n_steps: int,
        stage: int,
        manifest_path: Path,
        project_root: Path,
        num_samples: int,
        num_inference_steps: int,
        encoders: EncodersConfig,
        paths: PathsConfig,
        run_id: str | None,
        tracking_uri: str | None,
        generate: GenerateConfig | None = None,
        seed: int = SAMPLE_SEED,
        limits: RequestLimitsConfig | None = None,
    ) -> None:
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}; leave the callback out to switch off")
        if stage not in (1, 2):
            raise ValueError(f"stage must be 1 or 2, got {stage}")
        self.every = every_n_steps
        self.mode = "TIA" if stage == 2 else "TI"
        self.manifest_path = Path(manifest_path)
        self.project_root = Path(project_root)
        self.num_samples = num_samples
        self.num_inference_steps = num_inference_steps
        self.encoders = encoders
        self.paths = paths
        self.run_id = run_id
        self.tracking_uri = tracking_uri
        self.generate = generate or GenerateConfig(progress_bar=False)
        self.limits = limits or RequestLimitsConfig()
        self.seed = seed
        self.disabled = False
        self.logged: list[str] = []
        """Artifact paths logged so far (``samples/<file>``)."""
        self._pipe: Any = None
        self._requests: list[SampleRequest] | None = None
        self._last_step: int | None = None

    # ------------------------------------------------------------------------------------------------
    # Lightning hooks
    # ------------------------------------------------------------------------------------------------

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.run_id is None:
            self.run_id = getattr(trainer.logger, "run_id", None)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        step = trainer.global_step
        if step > 0 and step % self.every == 0:
            self.sample(trainer, pl_module, step)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.sample(trainer, pl_module, trainer.global_step)

    # ------------------------------------------------------------------------------------------------
    # Sampling
    # ------------------------------------------------------------------------------------------------

    def sample(self, trainer: L.Trainer, system: L.LightningModule, step: int) -> list[Path]:
        """Render, write and log the samples of ``step`` (once per step; rank 0 only); returns the files."""
        if self.disabled or not trainer.is_global_zero or step == self._last_step:
            return []
        self._last_step = step
        start = time.perf_counter()
        with preserved_rng(), torch.no_grad(), tempfile.TemporaryDirectory(prefix="humo-samples-") as tmp:
            if not self._prepare(system):
                return []
            try:
                files, corr = self._render(system, step, Path(tmp))
                self._log(files, step, corr)
            except Exception as err:  # noqa: BLE001 - a failed sample must never stop training
                logger.warning("sampling at step %d failed (%s: %s); sampling is off for this run",
                               step, type(err).__name__, err)
                self.disabled = True
                return []
        logger.info("step %d: %d sample(s) rendered and logged in %.1f s", step, len(self._requests or []),
                    time.perf_counter() - start)
        return files

    def _prepare(self, system: L.LightningModule) -> bool:
        """Pick the requests and build the pipeline once; False (sampling off, one warning) when impossible."""
        if self._pipe is not None:
            return True
        from humo.inference.generate import build_pipeline
        from humo.models.transformer import HumoTransformer3D

        vae_dir = self.paths.vae_dir
        tiny_default = self.encoders.vae.kind == "tiny" and self.encoders.vae.path is None
        if tiny_default and not (vae_dir / "config.json").is_file():
            logger.warning(
                "sample videos are off: the tiny VAE %s is missing; run `humo train-vae` first (or set "
                "train.sample_every_n_steps=0)", vae_dir,
            )
            self.disabled = True
            return False
        try:
            self._requests = pick_sample_requests(
                self.manifest_path, self.project_root, self.num_samples, self.generate.max_frames
            )
            transformer = HumoTransformer3D.from_preset(system.transformer.humo_config)
            self._pipe = build_pipeline(transformer.eval(), self.generate, self.encoders, vae_dir)
        except Exception as err:  # noqa: BLE001 - sampling is optional; training goes on without it
            logger.warning("sample videos are off: %s: %s", type(err).__name__, err)
            self.disabled = True
            return False
        logger.info(
            "sample videos every %d steps: %d request(s) (%s), mode %s, %d solver steps",
            self.every, len(self._requests), ", ".join(r.clip_id for r in self._requests), self.mode,
            self.num_inference_steps,
        )
        return True

    def _render(self, system: L.LightningModule, step: int, out_dir: Path) -> tuple[list[Path], float]:
        from humo.data.media import write_video
        from humo.data.sync import audio_envelope
        from humo.evaluation.probes import mouth_opening
        from humo.inference.generate import GenerationRequest, generate

        _, ema = system.full_state_dicts()  # EMA in place of the trained weights (raw ones before the EMA exists)
        transformer = self._pipe.transformer
        transformer.load_state_dict(ema, strict=True)
        transformer.eval()
        files, rows = [], []
        for index, request in enumerate(self._requests or []):
            asked = GenerationRequest(
                id=request.clip_id, prompt=request.prompt, mode=self.mode, image=request.image,
                audio=request.audio if "A" in self.mode else None, seed=self.seed + index,
                steps=self.num_inference_steps, num_frames=request.num_frames, height=request.height,
                width=request.width,
            )
            output = generate(self._pipe, asked, self.generate, self.limits, output_type="np", progress=False).output
            frames = output.frames
            samples = int(round(len(frames) / request.fps * AUDIO_SAMPLE_RATE))
            audio = np.pad(request.audio, (0, max(0, samples - len(request.audio))))[:samples]
            path = write_video(out_dir / f"step_{step:06d}_{request.clip_id}.mp4", frames, request.fps, audio,
                               AUDIO_SAMPLE_RATE, crf=self.generate.crf)
            files.append(path)
            mouth = mouth_opening(frames, request.mouth_region)
            envelope = audio_envelope(request.audio, len(frames), request.fps, AUDIO_SAMPLE_RATE)
            rows.append({
                "clip_id": request.clip_id, "mode": self.mode, "mouth": mouth, "envelope": envelope,
                "truth_mouth": request.truth_mouth[: len(frames)], "corr": _correlation(mouth, envelope),
            })
        files.append(plot_mouth_vs_audio(out_dir / f"step_{step:06d}_mouth.png", rows, step))
        corrs = [row["corr"] for row in rows if np.isfinite(row["corr"])]
        return files, float(np.mean(corrs)) if corrs else float("nan")

    def _log(self, files: list[Path], step: int, corr: float) -> None:
        if self.run_id is None:
            logger.warning("step %d: no MLflow run to log the samples to; they are discarded", step)
            return
        from mlflow.tracking import MlflowClient

        client = MlflowClient(self.tracking_uri)
        for path in files:
            client.log_artifact(self.run_id, str(path), artifact_path=ARTIFACT_DIR)
            self.logged.append(f"{ARTIFACT_DIR}/{path.name}")
        if np.isfinite(corr):
            client.log_metric(self.run_id, "samples/mouth_envelope_corr", corr, step=step)


def sample_callback(
    stage: int, train: TrainConfig, tracking: TrackingConfig, paths: PathsConfig, root: Path = Path(".")
) -> SampleVideos:
    """The sample-video callback for a training stage, as the CLI hands it to :func:`humo.training.train.run`.

    The encoders are the ones the shards were made with (``index.json`` provenance; defaults when absent), so the
    text and audio widths fit the model; solver and guidance are :class:`~humo.config.GenerateConfig`'s defaults
    (the training stages do not read the ``generate`` section). The MLflow run is the training's own.
    """
    from humo.features.shards import ShardIndex

    artifacts = paths.artifacts if paths.artifacts.is_absolute() else root / paths.artifacts
    local = paths.model_copy(update={"artifacts": artifacts})
    recorded = ShardIndex.load(local.features_dir).provenance.get("encoders") if local.features_dir.is_dir() else None
    if recorded is None:
        logger.info("the shard index records no encoders: sample videos use the default encoders")
    return SampleVideos(
        every_n_steps=train.sample_every_n_steps,
        stage=stage,
        manifest_path=local.manifest,
        project_root=root,
        num_samples=train.num_samples,
        num_inference_steps=train.sample_steps,
        encoders=EncodersConfig.model_validate(recorded) if recorded is not None else EncodersConfig(),
        paths=local,
        run_id=None,
        tracking_uri=tracking.uri,
        seed=train.seed,
    )
