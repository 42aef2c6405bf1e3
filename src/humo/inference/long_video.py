"""Videos longer than one window: sliding windows over the latent sequence (an item upstream lists as still open).

Upstream HuMo trains at 97 frames and degrades past it; community workarounds glitch roughly every window
(humo-reference.md 6.3). Here a long request is generated window by window in latent space:

1. The audio features of the WHOLE video are computed and windowed once, so every window's audio rows are the
   global rows of its latent frames (the audio continues across windows, no restart at a window's edge).
2. Window ``k`` covers latent frames ``[start_k, start_k + W)`` with ``start_{k+1} = start_k + W - overlap``
   (the last window is aligned to the end, so it may overlap more). Every window sees the same prompt and the
   same reference image (appended as its reference frame).
3. Window ``k > 0`` is conditioned on the previous windows by inpainting: its first latent frames (those already
   generated) are held at every step to the clean latents noised to the current noise level with the window's
   own initial noise (:class:`~humo.inference.pipeline.KnownPrefix`), and set to the clean latents at the end.
   Only the frames after the prefix are new.
4. The assembled latent sequence is decoded ONCE by the causal VAE, so no seam comes from decoding.

:func:`seam_statistics` measures whether seams jump: the mean absolute difference between consecutive frames
across each seam against the same figure inside windows.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from humo.constants import AUDIO_SAMPLE_RATE, VAE_TEMPORAL_STRIDE
from humo.diffusion.guidance import GuidanceSchedule, build_guidance
from humo.inference.pipeline import (
    NUM_REF_FRAMES,
    HumoPipeline,
    HumoPipelineOutput,
    KnownPrefix,
    OutputType,
    audio_is_silent,
    frames_for_audio,
    latent_frames,
)

logger = logging.getLogger(__name__)


def plan_windows(num_latent: int, window_latent: int, overlap: int) -> list[tuple[int, int]]:
    """Latent ``[start, stop)`` of each window covering ``num_latent`` frames.

    Args:
        num_latent: latent frames of the whole video.
        window_latent: latent frames per window.
        overlap: latent frames shared with the previous window (at least; the last window may share more).

    Raises:
        ValueError: ``overlap`` not in ``[1, window_latent)``.
    """
    if not 1 <= overlap < window_latent:
        raise ValueError(f"overlap={overlap} latent frames must be in [1, {window_latent}) (the window length)")
    if num_latent <= window_latent:
        return [(0, num_latent)]
    windows = [(0, window_latent)]
    while windows[-1][1] < num_latent:
        start = min(windows[-1][1] - overlap, num_latent - window_latent)
        windows.append((start, start + window_latent))
    return windows


def seam_frames(windows: list[tuple[int, int]]) -> list[int]:
    """Pixel frame index where each window's new content starts (latent ``p >= 1`` covers frames 4p-3..4p)."""
    return [VAE_TEMPORAL_STRIDE * windows[k - 1][1] - (VAE_TEMPORAL_STRIDE - 1) for k in range(1, len(windows))]


@dataclass(frozen=True)
class SeamStatistics:
    """Consecutive-frame differences at seams against inside windows (mean absolute difference, 0..255 scale)."""

    seam_mean: float
    inside_mean: float

    @property
    def ratio(self) -> float:
        """``seam_mean / inside_mean``: about 1 means the seams do not jump."""
        return self.seam_mean / self.inside_mean if self.inside_mean > 0 else float("inf")


def seam_statistics(frames: np.ndarray, seams: list[int]) -> SeamStatistics:
    """Mean |frame[i] - frame[i-1]| for ``i`` in ``seams`` against every other ``i``.

    Args:
        frames: ``(F, H, W, 3)`` uint8.
        seams: frame indices ``i >= 1`` where a new window's content begins.

    Raises:
        ValueError: no seams or a seam index out of range.
    """
    if not seams or min(seams) < 1 or max(seams) >= len(frames):
        raise ValueError(f"seams {seams} must be frame indices in [1, {len(frames) - 1}]")
    diffs = np.abs(np.diff(frames.astype(np.float32), axis=0)).mean(axis=(1, 2, 3))  # diffs[i-1] = |f_i - f_{i-1}|
    at_seam = np.zeros(len(diffs), dtype=bool)
    at_seam[np.asarray(seams) - 1] = True
    return SeamStatistics(seam_mean=float(diffs[at_seam].mean()), inside_mean=float(diffs[~at_seam].mean()))


@torch.no_grad()
def generate_long(
    pipeline: HumoPipeline,
    prompt: str,
    audio: np.ndarray,
    image: Image.Image | np.ndarray | None = None,
    mode: str | None = None,
    height: int = 64,
    width: int = 64,
    num_inference_steps: int = 50,
    guidance: GuidanceSchedule | None = None,
    generator: torch.Generator | None = None,
    window_frames: int = 97,
    overlap_latent_frames: int = 2,
    max_total_frames: int = 1001,
    num_frames: int | None = None,
    output_type: OutputType = "np",
    output_path: str | Path | None = None,
    progress: bool = True,
    crf: int = 18,
    condition_on_previous: bool = True,
) -> tuple[HumoPipelineOutput, list[int]]:
    """Generate a video as long as ``audio`` (up to ``max_total_frames``) in sliding latent windows.

    Args:
        pipeline: the pipeline whose encoders, DiT and solver are used.
        prompt, audio, image, mode, height, width, num_inference_steps, guidance, generator: as
            :meth:`HumoPipeline.__call__`.
        window_frames: video frames per window (4k+1).
        overlap_latent_frames: latent frames each window takes from the previous one.
        max_total_frames: cap on the whole video's frames.
        num_frames: explicit total frames (4k+1), else from the audio.
        output_type, output_path, progress, crf: as :meth:`HumoPipeline.__call__`.
        condition_on_previous: hold each window's first frames to the previous window (the method); False
            generates the windows independently and just cuts them together (the baseline seams are measured
            against).

    Returns:
        ``(output, seams)``: the pipeline output for the whole video and the pixel frames where windows join.
    """
    start = time.perf_counter()
    mode = mode or pipeline.infer_mode(image, audio)
    pipeline.check_inputs(
        prompt, image, audio, mode, height, width, num_frames, num_inference_steps, max_total_frames=max_total_frames
    )
    notes: list[str] = []
    if num_frames is None:
        num_frames = frames_for_audio(len(audio), max_total_frames)
        if frames_for_audio(len(audio), 10**9) > num_frames:
            notes.append(f"audio of {len(audio) / AUDIO_SAMPLE_RATE:.2f} s cut to the maximum {num_frames} frames")
    if audio_is_silent(audio):
        notes.append("the audio is silent: expect a closed mouth")
    guidance = guidance or build_guidance("humo-17b", mode, scale_text=5.0, scale_image=4.0, scale_audio=5.5)
    num_latent = latent_frames(num_frames)
    windows = plan_windows(num_latent, latent_frames(window_frames), overlap_latent_frames)
    logger.info("long video: %d frames (%d latent) in %d windows %s", num_frames, num_latent, len(windows), windows)

    # 1. encode once: text, reference, and the audio of the whole video
    timings: dict[str, float] = {}
    prompt_embeds, negative_embeds = pipeline.encode_prompt(prompt)
    ref_latents = pipeline.encode_reference(image, height, width) if "I" in mode else None
    audio_windows = pipeline.encode_audio(audio if "A" in mode else None, num_frames)  # [1, T, 8, G, C]
    timings["encode"] = time.perf_counter() - start

    # 2. one noise tensor for the whole video (plus a reference slot per window), then the windows in order
    tick = time.perf_counter()
    full_noise = pipeline.prepare_latents(num_latent - NUM_REF_FRAMES, height, width, generator)  # [1, 16, T, h, w]
    assembled = torch.zeros_like(full_noise)
    done = 0  # latent frames generated so far
    for index, (first, stop) in enumerate(windows):
        inputs = pipeline.prepare_branch_inputs(
            guidance.chain, prompt_embeds, negative_embeds, audio_windows[:, first:stop], ref_latents, height, width
        )
        ref_noise = pipeline.prepare_latents(0, height, width, generator)  # [1, 16, n_ref, h, w]
        latents = torch.cat([full_noise[:, :, first:stop], ref_noise], dim=2)
        prefix = None
        if done > first and condition_on_previous:
            prefix = KnownPrefix(latents=assembled[:, :, first:done], noise=full_noise[:, :, first:done])
        latents = pipeline.denoise(
            latents, inputs, guidance, num_inference_steps, known_prefix=prefix, progress=progress
        )
        assembled[:, :, first:stop] = latents[:, :, : stop - first]
        done = stop
        logger.info("window %d/%d: latent frames %d..%d done", index + 1, len(windows), first, stop - 1)
    timings["denoise"] = time.perf_counter() - tick

    output = pipeline._finish(
        assembled, audio, num_frames, mode, output_type, output_path, crf, timings, notes, start
    )
    return output, seam_frames(windows)
