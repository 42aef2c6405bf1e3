"""Videos longer than one window: sliding windows over the latent sequence (an item upstream lists as still open).

Upstream HuMo trains at 97 frames and degrades past it; community workarounds glitch roughly every window
(humo-reference.md 6.3). Here a long request is generated window by window in latent space:

1. The audio features of the WHOLE video are computed and windowed once, so every window's audio rows are the
   global rows of its latent frames (the audio continues across windows, no restart at a window's edge).
2. Window ``k`` covers latent frames ``[start_k, start_k + W)`` with ``start_{k+1} = start_k + W - overlap``
   (the last window is aligned to the end, so it may overlap more). Every window sees the same prompt and the
   same reference image (appended as its reference frame).
3. Window ``k > 0`` is conditioned on the previous windows: its first latent frames (those already generated)
   are held at every step (:class:`~humo.inference.pipeline.KnownPrefix`), by default to the clean latents, as
   the reference slot is held (stage 2 can train for this with ``train_stage2.continuation_share``: a share of
   batches start one latent frame into the clip, with their first frames clean and out of the loss).
   ``prefix_hold="noised"`` holds them to the clean latents noised to the current level instead (replacement
   inpainting). Only the frames after the prefix are new.
4. Seam pass: around each seam a window centred on it is re-noised to ``seam_strength`` and denoised again, so
   that both sides are refined together, and blended in with weights falling linearly over ``seam_radius``
   latent frames (SDEdit-style; it costs the steps below that noise level once per seam).
5. The assembled latent sequence is decoded ONCE by the causal VAE, so no seam comes from decoding.

:func:`seam_statistics` measures whether seams jump: the mean absolute difference between consecutive frames
across each seam against the same figure inside windows, and against the other latent-frame boundaries. The
baseline, ``condition_on_previous=False``, generates every window on its own and keeps only its new frames, so
both forms join windows at the same frames (``benchmarks/bench_long_video.py`` compares them).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from humo.constants import VAE_TEMPORAL_STRIDE
from humo.diffusion.flow_matching import sampling_sigmas
from humo.diffusion.guidance import GuidanceSchedule, build_guidance
from humo.diffusion.step_cache import CachePolicy
from humo.inference.pipeline import (
    NUM_REF_FRAMES,
    HumoPipeline,
    HumoPipelineOutput,
    KnownPrefix,
    OutputType,
    PrefixHold,
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


def first_step_below(num_inference_steps: int, shift: float, strength: float) -> int:
    """Index of the first solver step whose noise level is at most ``strength`` (the re-noising level of a seam)."""
    sigmas = sampling_sigmas(num_inference_steps, shift)[:-1]
    return min(int((sigmas > strength).sum()), num_inference_steps - 1)


def seam_weights(first: int, stop: int, seam: int, radius: int) -> torch.Tensor:
    """Blend weights of the re-denoised latents ``[first, stop)`` around a seam before latent ``seam``.

    ``1 - |p - (seam - 1/2)| / radius`` clipped at 0: the two latents that meet at the seam get ``1 - 1/(2 radius)``
    and the weight falls to 0 ``radius`` latents away on either side, so no new edge appears.
    """
    position = torch.arange(first, stop, dtype=torch.float32) - (seam - 0.5)
    return (1 - position.abs() / radius).clamp(min=0)


@dataclass(frozen=True)
class SeamStatistics:
    """Consecutive-frame differences at seams against inside windows (mean absolute difference, 0..255 scale).

    A seam is always where one latent frame ends and the next begins, and with a causal VAE consecutive frames
    differ more there than inside one latent frame (each decodes 4 frames). So besides every frame inside
    windows (``inside_mean``), seams are compared like for like with the other latent boundaries inside windows
    (``boundary_mean``, frames ``4p - 3``).
    """

    seam_mean: float
    inside_mean: float
    boundary_mean: float

    @property
    def ratio(self) -> float:
        """``seam_mean / inside_mean``."""
        return self.seam_mean / self.inside_mean if self.inside_mean > 0 else float("inf")

    @property
    def boundary_ratio(self) -> float:
        """``seam_mean / boundary_mean``: about 1 means a seam is no bigger a step than any latent boundary."""
        return self.seam_mean / self.boundary_mean if self.boundary_mean > 0 else float("inf")


def seam_statistics(frames: np.ndarray, seams: list[int]) -> SeamStatistics:
    """Mean |frame[i] - frame[i-1]| for ``i`` in ``seams`` against every other ``i`` and other latent boundaries.

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
    at_boundary = (np.arange(1, len(frames)) % VAE_TEMPORAL_STRIDE == 1) & ~at_seam  # frames 1, 5, 9, ...
    boundary = float(diffs[at_boundary].mean()) if at_boundary.any() else float("nan")
    return SeamStatistics(
        seam_mean=float(diffs[at_seam].mean()), inside_mean=float(diffs[~at_seam].mean()), boundary_mean=boundary
    )


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
    prefix_hold: PrefixHold = "clean",
    seam_strength: float = 0.7,
    seam_radius: int = 3,
    negative_prompt: str | None = None,
    cache: CachePolicy | None = None,
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
            generates the windows independently and cuts their new frames together (the baseline seams are
            measured against).
        prefix_hold: ``"clean"`` or ``"noised"``; see :class:`~humo.inference.pipeline.KnownPrefix`.
        seam_strength: noise level in ``(0, 1)`` to which each seam's window is re-noised before it is denoised
            again (0 = no seam pass); costs the solver steps below that level once per seam.
        seam_radius: latent frames on each side of a seam over which the second pass is blended in.
        negative_prompt: overrides the pipeline's null text.
        cache: step caching, planned per window and per seam pass (each starts with no residual).

    Returns:
        ``(output, seams)``: the pipeline output for the whole video and the pixel frames where windows join.
    """
    start, forwards = time.perf_counter(), pipeline.dit_forwards
    mode = mode or pipeline.infer_mode(image, audio)
    pipeline.check_inputs(
        prompt, image, audio, mode, height, width, num_frames, num_inference_steps, max_total_frames=max_total_frames
    )
    if not 0.0 <= seam_strength < 1.0 or seam_radius < 1:
        raise ValueError(
            f"seam_strength={seam_strength} must be in [0, 1) (0 turns the seam pass off) and seam_radius="
            f"{seam_radius} at least 1 latent frame"
        )
    num_frames, notes = pipeline.resolve_num_frames(audio, num_frames, max_total_frames)
    guidance = guidance or build_guidance("humo-17b", mode, scale_text=5.0, scale_image=4.0, scale_audio=5.5)
    num_latent = latent_frames(num_frames)
    windows = plan_windows(num_latent, latent_frames(window_frames), overlap_latent_frames)
    logger.info("long video: %d frames (%d latent) in %d windows %s", num_frames, num_latent, len(windows), windows)

    # 1. encode once: text, reference, and the audio of the whole video
    timings: dict[str, float] = {}
    prompt_embeds, negative_embeds = pipeline.encode_prompt(prompt, negative_prompt)
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
            prefix = KnownPrefix(
                latents=assembled[:, :, first:done], noise=full_noise[:, :, first:done], hold=prefix_hold
            )
        latents = pipeline.denoise(
            latents, inputs, guidance, num_inference_steps, known_prefix=prefix, progress=progress, cache=cache
        )
        assembled[:, :, done:stop] = latents[:, :, done - first : stop - first]  # only the new frames
        done = stop
        logger.info("window %d/%d: latent frames %d..%d done", index + 1, len(windows), first, stop - 1)
    timings["denoise"] = time.perf_counter() - tick

    # 3. seams: each seam's surroundings are re-noised to `seam_strength` and denoised again in one window centred
    #    on the seam (SDEdit-style), then blended in with weights falling linearly away from the seam
    if seam_strength > 0:
        tick = time.perf_counter()
        first_step = first_step_below(num_inference_steps, pipeline.shift, seam_strength)
        sigma = float(sampling_sigmas(num_inference_steps, pipeline.shift)[first_step])
        window_latent = windows[0][1] - windows[0][0]
        for seam in (stop for _, stop in windows[:-1]):
            first = max(0, min(seam - window_latent // 2, num_latent - window_latent))
            stop = first + window_latent
            inputs = pipeline.prepare_branch_inputs(
                guidance.chain, prompt_embeds, negative_embeds, audio_windows[:, first:stop], ref_latents, height, width
            )
            latents = pipeline.prepare_latents(window_latent, height, width, generator)  # [1, 16, W + n_ref, h, w]
            video = latents[:, :, :window_latent]
            latents[:, :, :window_latent] = (1 - sigma) * assembled[:, :, first:stop] + sigma * video
            again = pipeline.denoise(
                latents, inputs, guidance, num_inference_steps, progress=progress, start_step=first_step,
                cache=cache,
            )[:, :, :window_latent]
            weight = seam_weights(first, stop, seam, seam_radius).to(assembled)[None, None, :, None, None]
            assembled[:, :, first:stop] = weight * again + (1 - weight) * assembled[:, :, first:stop]
        timings["seams"] = time.perf_counter() - tick

    output = pipeline.finish(
        assembled, audio, num_frames, mode, output_type, output_path, crf, timings, notes, start
    )
    output.dit_forwards = pipeline.dit_forwards - forwards
    return output, seam_frames(windows)
