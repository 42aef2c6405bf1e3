"""HumoPipeline: text + reference image + speech -> talking-person video, with HuMo's time-adaptive guidance.

The diffusers vocabulary (``check_inputs``, ``encode_prompt``, ``encode_reference``, ``encode_audio``,
``prepare_latents``, ``__call__`` with numbered steps inside a progress bar) around our
:class:`~humo.models.transformer.HumoTransformer3D`. Behaviour follows upstream HuMo (humo-reference.md 2.1-2.4,
2.7):

- **Solver**: flow-matching UniPC (order 2, bh2, predict-x0, final sigma 0), i.e. diffusers'
  ``UniPCMultistepScheduler`` with flow sigmas, given upstream's un-shifted ``linspace(0.999, 0, steps + 1)[:-1]``
  so that with shift 5 and 50 steps the timesteps are 999, 995, 991, 987, 982, 978, ... (exactly 5 above 980).
  diffusers' own default grid starts at 1.0 instead, which is off by up to 0.004 in sigma. Euler is an option.
  The model receives ``int64(1000 * sigma)`` and predicts ``v = noise - x0``.
- **Modes** T, TI, TA, TIA; the null text is the negative prompt, the null image is a zero reference slot
  (``temporal`` models, 1.7B) or the zero-video latent in the condition channels (``channel`` models, 17B), the
  null audio is all-zero features passed through the audio projection.
- **Guidance**: a :class:`~humo.diffusion.guidance.GuidanceSchedule`; every branch with a nonzero weight at a step
  runs in ONE batched forward, and the text/audio context (with every block's keys and values) is computed once
  per request by ``prepare_context``, not once per step. ``batched=False`` runs the naive form (one forward per
  branch, context recomputed each step) for tests and benchmarks.
- **Length**: the audio decides it (upstream's rule): ``n = samples // 640`` whole 25 fps frames, rounded down to
  ``4k + 1``, capped by ``max_frames``.
- **Reference image**: letterboxed as upstream: resized keeping its aspect ratio (LANCZOS) to fit, centre-padded
  with white, scaled to [-1, 1] and VAE-encoded as a one-frame video; appended as the last latent frame.

Deviation from upstream: the 17B zero-video latent is computed with the configured VAE for the requested size
(and cached per size) instead of being loaded from precomputed 480p/720p files, so any multiple of 16 works.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from humo.constants import (
    AUDIO_SAMPLE_RATE,
    NUM_REF_FRAMES,
    SAMPLES_PER_VIDEO_FRAME,
    VAE_SPATIAL_STRIDE,
    VAE_TEMPORAL_STRIDE,
    VIDEO_FPS,
)
from humo.diffusion.flow_matching import SAMPLING_SIGMA_MAX, sampling_sigmas, sigmas_to_timesteps
from humo.diffusion.guidance import Branch, GuidanceSchedule, build_guidance
from humo.diffusion.step_cache import CachePolicy, StepPlan, consecutive_changes, plan_steps
from humo.inference.parallel import ParallelRuntime
from humo.models.transformer import HumoContext, HumoTransformer3D

logger = logging.getLogger(__name__)

Mode = Literal["T", "TI", "TA", "TIA"]
MODES: tuple[str, ...] = ("T", "TI", "TA", "TIA")
OutputType = Literal["np", "pt", "latent", "mp4"]
Solver = Literal["unipc", "euler"]
PrefixHold = Literal["clean", "noised"]

SIZE_MULTIPLE = VAE_SPATIAL_STRIDE * 2
"""Pixel sizes must be multiples of 16: the VAE downsamples 8x and the DiT patches 2x2 latent cells."""
MAX_SIDE = 4096
"""Largest accepted height or width; anything above is treated as a mistake, not a request."""
UNIPC_ORDER = 2
"""Upstream's FlowUniPCMultistepScheduler: solver order 2, variant bh2, predict-x0."""
CHANNEL_MASK_CHANNELS = VAE_TEMPORAL_STRIDE
"""Mask channels of the 17B condition (one per pixel frame of a latent frame, Wan I2V)."""
SILENCE_RMS = 1e-4
"""Audio whose RMS is below this is reported as silent (allowed: the mouth should stay closed)."""


# =====================================================================================================================
# Encoder protocols (contract 1, humo.models.encoders)
# =====================================================================================================================


class TextEncoderLike(Protocol):
    """``encode(prompts) -> [B, max_length, dim]``, zeros past each prompt's tokens."""

    dim: int
    max_length: int

    def encode(self, prompts: list[str]) -> torch.Tensor: ...


class AudioEncoderLike(Protocol):
    """``features(audio (S,) float32 16 kHz, num_frames) -> [num_frames, groups, channels]``."""

    groups: int
    channels: int

    def features(self, audio: np.ndarray, num_frames: int) -> torch.Tensor: ...


class CacheRecorder(Protocol):
    """Told about every branch forward through the blocks (``humo calibrate-cache`` fits the step cache on it)."""

    def record(self, step: int, timestep: int, branch: str, velocity: torch.Tensor, residual: torch.Tensor) -> None: ...


class VideoVAELike(Protocol):
    """Normalised-latent video VAE with 4x temporal / 8x spatial compression and 16 latent channels."""

    def encode(self, video: torch.Tensor) -> torch.Tensor: ...

    def decode(self, latents: torch.Tensor) -> torch.Tensor: ...

    def encode_image(self, image: torch.Tensor) -> torch.Tensor: ...


# =====================================================================================================================
# Small pure helpers
# =====================================================================================================================


def frames_for_audio(num_samples: int, max_frames: int) -> int:
    """Upstream's length rule: whole 25 fps frames of the audio, rounded down to ``4k + 1``, capped.

    ``n = num_samples // 640`` (640 samples = one frame at 16 kHz), then ``(n - 1) // 4 * 4 + 1``, then
    ``min(., max_frames)``. E.g. 2.26 s (36 160 samples) -> 56 frames -> 53.

    Raises:
        ValueError: the audio is shorter than one video frame (40 ms).
    """
    whole = num_samples // SAMPLES_PER_VIDEO_FRAME
    if whole < 1:
        raise ValueError(
            f"audio of {num_samples} samples is shorter than one video frame ({SAMPLES_PER_VIDEO_FRAME} samples at "
            f"{AUDIO_SAMPLE_RATE} Hz); give at least 40 ms of audio"
        )
    frames = (whole - 1) // VAE_TEMPORAL_STRIDE * VAE_TEMPORAL_STRIDE + 1
    return min(frames, max_frames)


def latent_frames(num_frames: int) -> int:
    """Latent frames of a ``4k + 1``-frame video: ``(F - 1) / 4 + 1``."""
    return (num_frames - 1) // VAE_TEMPORAL_STRIDE + 1


def make_scheduler(solver: Solver, shift: float, num_inference_steps: int):
    """A diffusers scheduler configured as upstream's sampler, with its timesteps set.

    Both solvers get upstream's un-shifted grid ``linspace(0.999, 0, steps + 1)[:-1]`` and shift it themselves
    (``s * sigma / (1 + (s - 1) * sigma)``); the final sigma is 0.

    Returns:
        A ``UniPCMultistepScheduler`` (flow prediction, order 2, bh2) or ``FlowMatchEulerDiscreteScheduler``.
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

    base = np.linspace(SAMPLING_SIGMA_MAX, 0.0, num_inference_steps + 1)[:-1]
    if solver == "unipc":
        scheduler = UniPCMultistepScheduler(
            prediction_type="flow_prediction",
            use_flow_sigmas=True,
            flow_shift=shift,
            solver_order=UNIPC_ORDER,
            solver_type="bh2",
            predict_x0=True,
            lower_order_final=True,
            final_sigmas_type="zero",
        )
    elif solver == "euler":
        scheduler = FlowMatchEulerDiscreteScheduler(shift=shift)
    else:
        raise ValueError(f"unknown solver {solver!r}; use 'unipc' or 'euler'")
    scheduler.set_timesteps(sigmas=base)
    return scheduler


def audio_is_silent(audio: np.ndarray) -> bool:
    """Whether ``audio`` has (almost) no energy (RMS below :data:`SILENCE_RMS`)."""
    return audio.size == 0 or float(np.sqrt(np.mean(np.square(audio, dtype=np.float64)))) < SILENCE_RMS


def _select_context(context: HumoContext, index: list[int]) -> HumoContext:
    """The rows ``index`` of a batched context (per-block keys and values included)."""
    rows = torch.tensor(index, device=context.text.device)
    frames = context.audio.shape[1]

    def audio_rows(t: torch.Tensor) -> torch.Tensor:  # [B*F, heads, T, d] -> rows of B
        return t.unflatten(0, (-1, frames))[rows].flatten(0, 1)

    return HumoContext(
        text=context.text[rows],
        audio=context.audio[rows],
        text_kv=tuple((k[rows], v[rows]) for k, v in context.text_kv) if context.text_kv is not None else None,
        audio_kv=(
            tuple((audio_rows(k), audio_rows(v)) for k, v in context.audio_kv)
            if context.audio_kv is not None
            else None
        ),
    )


class _BranchCalls:
    """State of one denoising run's DiT calls: the prepared context, its per-branch-set selections, and each
    branch's last block residual (kept only when a step cache or a recorder needs it)."""

    def __init__(self, context: HumoContext | None, keep_residuals: bool) -> None:
        self.context = context
        self.keep_residuals = keep_residuals
        self.residuals: dict[int, torch.Tensor] = {}
        self._selections: dict[tuple[int, ...], HumoContext] = {}

    def context_for(self, branches: tuple[int, ...]) -> HumoContext:
        if branches not in self._selections:
            self._selections[branches] = _select_context(self.context, list(branches))
        return self._selections[branches]


# =====================================================================================================================
# Inputs of one denoising run
# =====================================================================================================================


@dataclass
class BranchInputs:
    """What each guidance branch feeds the DiT, for one latent window.

    Attributes:
        branches: the branches, in batch order.
        text: ``[K, L, text_dim]`` prompt or negative-prompt states per branch.
        audio: ``[K, F, window, groups, channels]`` audio windows per branch (zeros for null audio and for the
            reference frames).
        ref_slot: temporal mode: ``[K, 16, n_ref, h, w]`` reference latents or zeros (null image); else None.
        condition: channel mode: ``[K, 20, F, h, w]`` mask + condition latent per branch; else None.
    """

    branches: tuple[Branch, ...]
    text: torch.Tensor
    audio: torch.Tensor
    ref_slot: torch.Tensor | None
    condition: torch.Tensor | None


@dataclass
class KnownPrefix:
    """Latent frames a window must keep (long videos): held to ``latents`` through the run.

    Before every step the first ``latents.shape[2]`` frames of the state are replaced, and after the last step
    they are set to the clean latents. ``hold`` says by what:

    - ``"clean"``: the clean latents at every step, as the reference slot is held. Stage 2 can train for this
      (``train_stage2.continuation_share``: the first frames of some training windows kept clean and out of
      the loss); on the tiny model the clean hold gave the smoother seams with or without that training;
    - ``"noised"``: the clean latents noised to the current sigma with ``noise`` (the window's own initial
      noise there): replacement-style inpainting, every frame at the noise level the model was trained on.
    """

    latents: torch.Tensor
    noise: torch.Tensor
    hold: PrefixHold = "clean"


@dataclass
class HumoPipelineOutput:
    """What :meth:`HumoPipeline.__call__` returns.

    Attributes:
        frames: ``"np"``/``"mp4"``: ``(F, H, W, 3)`` uint8; ``"pt"``: ``[3, F, H, W]`` float in [0, 1];
            ``"latent"``: video latents ``[16, T, h, w]`` (reference frames dropped).
        audio: the driving audio fitted to the video, ``(S,)`` float32 at 16 kHz, or None.
        num_frames: video frames.
        mode: the generation mode used.
        timings: seconds per phase (``encode``, ``denoise``, ``decode``, ``write``) and ``total``.
        path: the mp4 written for ``output_type="mp4"``, else None.
        notes: things worth telling the user (e.g. silent audio, audio cut to the maximum length).
        dit_forwards: branch forwards through the DiT's blocks (a batched forward of 3 branches counts 3; a
            forward that reused a cached residual counts 0).
    """

    frames: np.ndarray | torch.Tensor
    audio: np.ndarray | None
    num_frames: int
    mode: str
    timings: dict[str, float] = field(default_factory=dict)
    path: Path | None = None
    notes: list[str] = field(default_factory=list)
    dit_forwards: int = 0


# =====================================================================================================================
# The pipeline
# =====================================================================================================================


class HumoPipeline:
    """Text + reference image + audio -> video with HuMo (inference only).

    Args:
        transformer: the HuMo DiT (``temporal`` or ``channel`` reference mode).
        vae: video VAE (contract: ``encode``/``decode``/``encode_image`` on normalised latents).
        text_encoder: gives ``[B, max_length, dim]`` token states; ``dim`` must equal the DiT's ``text_dim``.
        audio_encoder: gives one feature row per video frame; groups/channels must match the DiT.
        solver: ``"unipc"`` (upstream) or ``"euler"``.
        shift: time shift of the schedule (upstream 5.0).
        negative_prompt: the null text; None takes the text encoder's ``negative_prompt`` attribute or
            ``humo.models.encoders.NEGATIVE_PROMPT``.
        max_frames: cap on frames derived from audio (one window).

    Raises:
        ValueError: encoder widths that do not match the transformer.
    """

    def __init__(
        self,
        transformer: HumoTransformer3D,
        vae: VideoVAELike,
        text_encoder: TextEncoderLike,
        audio_encoder: AudioEncoderLike,
        solver: Solver = "unipc",
        shift: float = 5.0,
        negative_prompt: str | None = None,
        max_frames: int = 97,
    ) -> None:
        cfg = transformer.humo_config
        if text_encoder.dim != cfg.text_dim:
            raise ValueError(
                f"text encoder gives {text_encoder.dim}-d tokens but the transformer expects text_dim={cfg.text_dim}; "
                "use the encoder the model was trained with (encoders.text)"
            )
        if (audio_encoder.groups, audio_encoder.channels) != (cfg.audio_groups, cfg.audio_channels):
            raise ValueError(
                f"audio encoder gives {audio_encoder.groups}x{audio_encoder.channels} features per row but the "
                f"transformer expects {cfg.audio_groups}x{cfg.audio_channels}; use the matching encoders.audio kind"
            )
        if solver not in ("unipc", "euler"):
            raise ValueError(f"unknown solver {solver!r}; use 'unipc' or 'euler'")
        self.transformer = transformer.eval()
        self.vae = vae
        self.text_encoder = text_encoder
        self.audio_encoder = audio_encoder
        self.solver: Solver = solver
        self.shift = float(shift)
        self.max_frames = int(max_frames)
        if negative_prompt is None:
            negative_prompt = getattr(text_encoder, "negative_prompt", None)
        if negative_prompt is None:
            from humo.models.encoders import NEGATIVE_PROMPT

            negative_prompt = NEGATIVE_PROMPT
        self.negative_prompt = negative_prompt
        self._zero_latents: dict[tuple[int, int], torch.Tensor] = {}
        self._negative_embeds: dict[str, torch.Tensor] = {}
        self._progress_bar_config: dict[str, Any] = {}
        self.parallel: ParallelRuntime | None = None
        """The process group when launched with torchrun (set by ``build_pipeline``); None in one process."""
        self.max_branch_batch: int | None = None
        """Guidance branches per DiT forward (``generate.memory.max_branch_batch``); None: all in one."""
        self.dit_forwards = 0
        self._modulation_changes: dict[tuple[int, int], np.ndarray] = {}
        """Branch forwards through the blocks so far (a counter: callers read differences)."""

    # ------------------------------------------------------------------------------------------------------------
    # properties and settings
    # ------------------------------------------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.transformer.parameters()).dtype

    @property
    def reference_mode(self) -> str:
        return self.transformer.humo_config.reference_mode

    def set_progress_bar_config(self, **kwargs: Any) -> None:
        """Options for the denoising tqdm bar (e.g. ``disable=True``), as in diffusers."""
        self._progress_bar_config = dict(kwargs)

    # ------------------------------------------------------------------------------------------------------------
    # 1. checks
    # ------------------------------------------------------------------------------------------------------------

    def check_inputs(
        self,
        prompt: str,
        image: Image.Image | np.ndarray | None,
        audio: np.ndarray | None,
        mode: str,
        height: int,
        width: int,
        num_frames: int | None,
        num_inference_steps: int,
        max_total_frames: int | None = None,
    ) -> None:
        """Validate a request before any model runs; every error names the bad value and the fix.

        Raises:
            ValueError: unknown mode, a mode that needs an image or audio given none, an empty prompt, a size that
                is not a multiple of 16 or absurd, a frame count that is not 4k+1 or too long, bad audio or image
                arrays, fewer than one step.
        """
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; use one of {', '.join(MODES)}")
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"prompt must be a non-empty string, got {prompt!r:.80}")
        if "I" in mode and image is None:
            raise ValueError(
                f"mode {mode!r} needs a reference image; give one (img_paths) or use mode {mode.replace('I', '')!r}"
            )
        if "A" in mode and audio is None:
            raise ValueError(f"mode {mode!r} needs audio; give an audio file or use mode {mode.replace('A', '')!r}")
        for name, value in (("height", height), ("width", width)):
            if not isinstance(value, int) or value < SIZE_MULTIPLE or value > MAX_SIDE or value % SIZE_MULTIPLE:
                raise ValueError(
                    f"{name}={value!r} must be a multiple of {SIZE_MULTIPLE} between {SIZE_MULTIPLE} and {MAX_SIDE} "
                    "(VAE 8x and patch 2x); e.g. 64, 480 or 832"
                )
        cap = max_total_frames or self.max_frames
        if num_frames is not None:
            if not isinstance(num_frames, int) or num_frames < 1 or (num_frames - 1) % VAE_TEMPORAL_STRIDE:
                raise ValueError(f"num_frames={num_frames!r} must be a positive int of the form 4k+1 (e.g. 33 or 97)")
            if num_frames > cap:
                raise ValueError(
                    f"num_frames={num_frames} exceeds the maximum of {cap} frames; lower it "
                    "(or enable generate.long_video and raise long_video.max_total_frames)"
                )
        if not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise ValueError(f"num_inference_steps={num_inference_steps!r} must be a positive int (upstream 50)")
        if audio is not None:
            if not isinstance(audio, np.ndarray) or audio.ndim != 1 or not np.issubdtype(audio.dtype, np.floating):
                raise ValueError(
                    "audio must be a 1-D float array (mono, 16 kHz); read files with humo.data.media.read_audio"
                )
            if not np.all(np.isfinite(audio)):
                raise ValueError("audio holds NaN or infinite samples; the file is damaged")
        if image is not None and not isinstance(image, Image.Image):
            array = np.asarray(image)
            if array.ndim != 3 or array.shape[2] not in (3, 4) or array.dtype != np.uint8:
                raise ValueError(
                    f"image must be a PIL image or an (H, W, 3|4) uint8 array, got {array.shape} {array.dtype}"
                )

    # ------------------------------------------------------------------------------------------------------------
    # 2. encoders
    # ------------------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def encode_prompt(self, prompt: str, negative_prompt: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Token states of the prompt and of the null text (the negative prompt).

        The negative prompt is the same for every request, so its states are computed once per pipeline and cached.

        Returns:
            ``(prompt_embeds, negative_embeds)``, each ``[1, max_length, text_dim]`` on the pipeline's device.
        """
        negative = self.negative_prompt if negative_prompt is None else negative_prompt
        if negative not in self._negative_embeds:
            self._negative_embeds[negative] = self.text_encoder.encode([negative]).to(self.device, self.dtype)
        states = self.text_encoder.encode([prompt]).to(self.device, self.dtype)
        return states, self._negative_embeds[negative]

    @torch.no_grad()
    def encode_reference(self, image: Image.Image | np.ndarray, height: int, width: int) -> torch.Tensor:
        """Letterbox the reference (white padding, aspect kept), scale to [-1, 1] and VAE-encode it.

        Returns:
            ``[1, 16, 1, height / 8, width / 8]`` normalised latents.
        """
        from humo.models.encoders import frames_to_tensor, letterbox_image

        boxed = letterbox_image(image, height, width)  # (H, W, 3) uint8, white padding
        pixels = frames_to_tensor(boxed)[None]  # [1, 3, H, W] in [-1, 1]
        return self.vae.encode_image(pixels).to(self.device, self.dtype)

    @torch.no_grad()
    def encode_audio(self, audio: np.ndarray | None, num_frames: int) -> torch.Tensor:
        """Audio features of the video frames, windowed per latent frame (reference rows NOT included).

        Args:
            audio: ``(S,)`` float32 mono at 16 kHz, or None for null audio (zero features).
            num_frames: video frames (4k+1).

        Returns:
            ``[1, T, window, groups, channels]`` with ``T = (num_frames - 1) / 4 + 1``.
        """
        from humo.features.audio import window_audio_features

        cfg = self.transformer.humo_config
        if audio is None:
            rows = torch.zeros(num_frames, cfg.audio_groups, cfg.audio_channels)
        else:
            rows = self.audio_encoder.features(audio.astype(np.float32, copy=False), num_frames)
        return window_audio_features(rows, num_frames)[None].to(self.device, self.dtype)

    @torch.no_grad()
    def zero_video_latent(self, num_latent_frames: int, height: int, width: int) -> torch.Tensor:
        """VAE latent of an all-zero (mid-grey) video, the 17B "no image" condition; computed once per size.

        Deviation from upstream: upstream loads precomputed latents for 480p and 720p only. Here the configured
        VAE encodes the zero video of the requested size; the longest one computed so far is cached per size and
        sliced (the VAE is causal, so a prefix of a longer zero video encodes to the prefix of its latent).

        Returns:
            ``[1, 16, num_latent_frames, height / 8, width / 8]``.
        """
        cached = self._zero_latents.get((height, width))
        if cached is None or cached.shape[2] < num_latent_frames:
            frames = (num_latent_frames - 1) * VAE_TEMPORAL_STRIDE + 1
            zeros = torch.zeros(1, 3, frames, height, width)
            cached = self.vae.encode(zeros).to(self.device, self.dtype)
            self._zero_latents[(height, width)] = cached
        return cached[:, :, :num_latent_frames]

    # ------------------------------------------------------------------------------------------------------------
    # 3. latents and branch inputs
    # ------------------------------------------------------------------------------------------------------------

    def prepare_latents(
        self,
        num_latent_frames: int,
        height: int,
        width: int,
        generator: torch.Generator | None,
        latents: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Initial noise for the video frames plus the reference slot, drawn on the CPU from ``generator``.

        Returns:
            ``[1, 16, num_latent_frames + n_ref, height / 8, width / 8]``.
        """
        shape = (
            1,
            self.transformer.humo_config.out_channels,
            num_latent_frames + NUM_REF_FRAMES,
            height // VAE_SPATIAL_STRIDE,
            width // VAE_SPATIAL_STRIDE,
        )
        if latents is not None:
            if tuple(latents.shape) != shape:
                raise ValueError(f"latents have shape {tuple(latents.shape)}; expected {list(shape)}")
            return latents.to(self.device, self.dtype)
        return torch.randn(shape, generator=generator, dtype=torch.float32).to(self.device, self.dtype)

    def prepare_branch_inputs(
        self,
        branches: tuple[Branch, ...],
        prompt_embeds: torch.Tensor,
        negative_embeds: torch.Tensor,
        audio_windows: torch.Tensor,
        ref_latents: torch.Tensor | None,
        height: int,
        width: int,
    ) -> BranchInputs:
        """Stack each branch's conditions: text or negative prompt, audio or zeros, reference or null image.

        Args:
            branches: the guidance chain.
            prompt_embeds, negative_embeds: ``[1, L, text_dim]``.
            audio_windows: ``[1, T, window, groups, channels]`` for the video frames.
            ref_latents: ``[1, 16, n_ref, h, w]`` or None (no image in this request).
        """
        num_latent = audio_windows.shape[1]
        ref_rows = audio_windows.new_zeros(1, NUM_REF_FRAMES, *audio_windows.shape[2:])
        audio_on = torch.cat([audio_windows, ref_rows], dim=1)  # zero windows for the reference frames
        audio_off = torch.zeros_like(audio_on)
        text = torch.cat([prompt_embeds if b.text else negative_embeds for b in branches])
        audio = torch.cat([audio_on if b.audio else audio_off for b in branches])
        latent_shape = (height // VAE_SPATIAL_STRIDE, width // VAE_SPATIAL_STRIDE)
        for branch in branches:
            if branch.image and ref_latents is None:
                raise ValueError(f"guidance branch {branch.name} needs a reference image but none was encoded")
        if self.reference_mode == "temporal":
            null = torch.zeros(1, self.transformer.humo_config.out_channels, NUM_REF_FRAMES, *latent_shape)
            null = null.to(self.device, self.dtype)
            ref_slot = torch.cat([ref_latents if b.image else null for b in branches])
            return BranchInputs(branches, text, audio, ref_slot=ref_slot, condition=None)
        total = num_latent + NUM_REF_FRAMES
        zero_video = self.zero_video_latent(total, height, width)  # [1, 16, T + n_ref, h, w]
        mask = zero_video.new_zeros(1, CHANNEL_MASK_CHANNELS, total, *latent_shape)
        mask[:, :, num_latent:] = 1.0  # the mask marks the reference frames in both image branches (upstream)
        with_image = zero_video.clone()
        if ref_latents is not None:
            with_image[:, :, num_latent:] = ref_latents
        condition = torch.cat([torch.cat([mask, with_image if b.image else zero_video], dim=1) for b in branches])
        return BranchInputs(branches, text, audio, ref_slot=None, condition=condition)

    # ------------------------------------------------------------------------------------------------------------
    # 4. the denoising loop
    # ------------------------------------------------------------------------------------------------------------

    def model_timesteps(self, num_inference_steps: int) -> list[int]:
        """The integer timesteps the model sees at each step: ``int64(1000 * sigma)`` of the float64 schedule."""
        return sigmas_to_timesteps(sampling_sigmas(num_inference_steps, self.shift))[:-1].tolist()

    def step_plan(
        self,
        guidance: GuidanceSchedule,
        num_inference_steps: int,
        cache: CachePolicy | None = None,
        start_step: int = 0,
    ) -> StepPlan:
        """Per step, the branches that run the blocks and those that reuse their cached residual.

        The active branches come from the guidance (a branch with weight 0 at a step is not evaluated, truncation
        included); with ``cache`` the skip criterion is evaluated on the timesteps alone, before any step runs.
        """
        model_timesteps = self.model_timesteps(num_inference_steps)
        active = [[b.name for b in guidance.chain if b in guidance.coefficients(t)] for t in model_timesteps]
        change = None
        if cache is not None and cache.criterion == "teacache":
            change = self._modulation_change(num_inference_steps, model_timesteps)
        return plan_steps(active, model_timesteps, cache, change, start_step)

    def _modulation_change(self, num_inference_steps: int, model_timesteps: list[int]) -> np.ndarray:
        """The modulation's relative change per step, computed once per step count and weights version: a sharded
        DiT gathers its weights for it, so every rank computes it in the run and a later call (the sidecar's
        plan, on rank 0 alone) is served from here."""
        weight = self.transformer.time_embedding[0].weight
        key = (num_inference_steps, weight._version)
        if key not in self._modulation_changes:
            modulation = self.transformer.timestep_modulation(torch.tensor(model_timesteps, dtype=torch.float32))
            self._modulation_changes = {key: consecutive_changes(list(modulation.cpu().numpy()))}
        return self._modulation_changes[key]

    @torch.no_grad()
    def denoise(
        self,
        latents: torch.Tensor,
        inputs: BranchInputs,
        guidance: GuidanceSchedule,
        num_inference_steps: int,
        batched: bool = True,
        known_prefix: KnownPrefix | None = None,
        progress: bool = True,
        callback: Callable[[int, int, torch.Tensor], None] | None = None,
        start_step: int = 0,
        cache: CachePolicy | None = None,
        recorder: CacheRecorder | None = None,
        plan: StepPlan | None = None,
    ) -> torch.Tensor:
        """Run the sampler from noise to clean latents.

        Args:
            latents: ``[1, 16, T + n_ref, h, w]`` initial noise.
            inputs: the branches' conditions (:meth:`prepare_branch_inputs`), in ``guidance.chain`` order.
            guidance: the schedule combining the branches.
            num_inference_steps: solver steps.
            batched: True: one forward for all active branches with the context prepared once; False: the naive
                form (one forward per branch, context recomputed at every step; no step cache).
            known_prefix: latent frames to hold fixed (long-video windows), or None.
            progress: show the tqdm bar.
            callback: called as ``callback(step_index, timestep, latents)`` after each step.
            start_step: first solver step to run: ``latents`` are then already at that step's noise level
                (``sampling_sigmas(num_inference_steps, shift)[start_step]``), as in SDEdit-style re-noising.
            cache: step caching (:meth:`step_plan`): planned branches reuse their last block residual.
            recorder: told about every branch forward through the blocks (calibration).
            plan: a skip plan made beforehand (:meth:`step_plan`, e.g. of the trained model when timing a stand-in
                of another size); None: the plan of ``cache``.

        Returns:
            ``[1, 16, T + n_ref, h, w]`` final latents (the reference frames are meaningless; drop them).
        """
        if inputs.branches != guidance.chain:
            raise ValueError(
                f"branch inputs {[b.name for b in inputs.branches]} do not follow the guidance chain "
                f"{[b.name for b in guidance.chain]}"
            )
        if not 0 <= start_step < num_inference_steps:
            raise ValueError(f"start_step={start_step} must be in [0, {num_inference_steps})")
        if not batched and (cache is not None or recorder is not None or plan is not None):
            raise ValueError("the step cache, its plan and its recorder need batched=True")
        scheduler = make_scheduler(self.solver, self.shift, num_inference_steps)
        # The integer timesteps the model sees: int64(1000 * sigma) from the float64 schedule (upstream).
        model_timesteps = sigmas_to_timesteps(sampling_sigmas(num_inference_steps, self.shift))[:-1]
        plan = plan or self.step_plan(guidance, num_inference_steps, cache, start_step)
        if len(plan.compute) != num_inference_steps:
            raise ValueError(f"a plan of {len(plan.compute)} steps cannot drive {num_inference_steps} steps")
        context = None
        if batched:
            context = self.transformer.prepare_context(inputs.text, inputs.audio, num_frames=latents.shape[2], cache_kv=True)
        calls = _BranchCalls(context, cache is not None or recorder is not None or any(plan.reuse))
        sigmas = scheduler.sigmas
        index_of = {branch: i for i, branch in enumerate(inputs.branches)}

        bar = tqdm(
            total=num_inference_steps - start_step,
            desc="denoising",
            disable=not progress or self._progress_bar_config.get("disable", False),
            **{k: v for k, v in self._progress_bar_config.items() if k != "disable"},
        )
        for step in range(start_step, num_inference_steps):
            solver_t, model_t = scheduler.timesteps[step], int(model_timesteps[step])
            # a. hold the known prefix (long videos) at the current noise level
            if known_prefix is not None:
                latents = self._apply_prefix(latents, known_prefix, float(sigmas[step]))
            # b. the branches with a nonzero weight at this timestep, in chain order
            coefficients = guidance.coefficients(model_t)
            active = [index_of[branch] for branch in inputs.branches if branch in coefficients]
            hidden = latents.expand(len(active), *latents.shape[1:]).clone()
            if inputs.ref_slot is not None:
                hidden[:, :, -NUM_REF_FRAMES:] = inputs.ref_slot[active]  # overwrite the slot before every call
            condition = inputs.condition[active] if inputs.condition is not None else None
            timestep = torch.full((len(active),), float(model_t), device=self.device)
            # c. the DiT: batched over the branches with the cached context (planned ones reuse their block
            #    residual), or one forward per branch (naive)
            if batched:
                computed = {index_of[Branch.parse(name)] for name in plan.compute[step]}
                velocity = self._branch_forwards(hidden, timestep, condition, active, computed, calls)
                if recorder is not None:
                    for j, i in enumerate(active):
                        if i in computed:
                            recorder.record(step, model_t, inputs.branches[i].name, velocity[j : j + 1], calls.residuals[i])
            else:
                velocity = torch.cat(
                    [
                        self.transformer(
                            hidden[j : j + 1],
                            timestep[j : j + 1],
                            encoder_hidden_states=inputs.text[i : i + 1],
                            audio_features=inputs.audio[i : i + 1],
                            condition=condition[j : j + 1] if condition is not None else None,
                            num_ref_frames=NUM_REF_FRAMES,
                        ).sample
                        for j, i in enumerate(active)
                    ]
                )
                self.dit_forwards += len(active)
            # d. guidance, then the solver step
            predictions = {inputs.branches[i]: velocity[j : j + 1] for j, i in enumerate(active)}
            guided = guidance.combine(predictions, model_t)
            latents = scheduler.step(guided.float(), solver_t, latents.float(), return_dict=False)[0].to(self.dtype)
            if callback is not None:
                callback(step, int(model_t), latents)
            bar.update(1)
        bar.close()
        if known_prefix is not None:
            latents = self._apply_prefix(latents, known_prefix, 0.0)
        return latents

    def _branch_forwards(
        self,
        hidden: torch.Tensor,
        timestep: torch.Tensor,
        condition: torch.Tensor | None,
        active: list[int],
        computed: set[int],
        calls: _BranchCalls,
    ) -> torch.Tensor:
        """The velocities of the ``active`` branches (rows of ``hidden``): those in ``computed`` through the blocks
        (all in one forward, or ``max_branch_batch`` at a time), the others from their cached block residual."""
        velocity: list[torch.Tensor | None] = [None] * len(active)
        size = self.max_branch_batch or len(active)
        for reuse in (False, True):
            group = [j for j, i in enumerate(active) if (i in computed) != reuse]
            for first in range(0, len(group), size):
                rows = group[first : first + size]
                key = tuple(active[j] for j in rows)
                out = self.transformer(
                    hidden[rows], timestep[rows], condition=condition[rows] if condition is not None else None,
                    num_ref_frames=NUM_REF_FRAMES, context=calls.context_for(key),
                    block_residual=torch.cat([calls.residuals[i] for i in key]) if reuse else None,
                    return_residual=calls.keep_residuals and not reuse,
                )
                if not reuse:
                    self.dit_forwards += len(rows)
                    if out.block_residual is not None:
                        calls.residuals.update({i: out.block_residual[k : k + 1] for k, i in enumerate(key)})
                for k, j in enumerate(rows):
                    velocity[j] = out.sample[k : k + 1]
        return torch.cat(velocity)

    @staticmethod
    def _apply_prefix(latents: torch.Tensor, prefix: KnownPrefix, sigma: float) -> torch.Tensor:
        count = prefix.latents.shape[2]
        latents = latents.clone()
        if prefix.hold == "clean" or sigma == 0.0:
            latents[:, :, :count] = prefix.latents
        else:
            latents[:, :, :count] = (1 - sigma) * prefix.latents + sigma * prefix.noise
        return latents

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """``[1, 16, T, h, w]`` video latents -> ``[1, 3, 4(T-1)+1, H, W]`` pixels in [-1, 1]."""
        return self.vae.decode(latents.float()).clamp(-1, 1)

    # ------------------------------------------------------------------------------------------------------------
    # 5. guidance and mode helpers
    # ------------------------------------------------------------------------------------------------------------

    @staticmethod
    def infer_mode(image: object | None, audio: object | None) -> str:
        """T, plus I when an image is given, plus A when audio is given."""
        return "T" + ("I" if image is not None else "") + ("A" if audio is not None else "")

    def resolve_num_frames(self, audio: np.ndarray | None, num_frames: int | None, cap: int) -> tuple[int, list[str]]:
        """Frames of the video (explicit, else from the audio by upstream's rule, else ``cap``) and the notes about
        the audio worth telling the user (silent; cut to the cap). Single and long videos both use it."""
        notes: list[str] = []
        if audio is not None and audio_is_silent(audio):
            notes.append("the audio is silent: expect a closed mouth")
        if num_frames is not None:
            return num_frames, notes
        if audio is None:
            return cap, notes
        frames = frames_for_audio(len(audio), cap)
        uncapped = frames_for_audio(len(audio), 10**9)
        if uncapped > frames:
            seconds = len(audio) / AUDIO_SAMPLE_RATE
            message = f"audio of {seconds:.2f} s gives {uncapped} frames; cut to the maximum {frames}"
            logger.warning("%s", message)
            notes.append(message)
        return frames, notes

    # ------------------------------------------------------------------------------------------------------------
    # 6. __call__
    # ------------------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def __call__(
        self,
        prompt: str,
        image: Image.Image | np.ndarray | None = None,
        audio: np.ndarray | None = None,
        mode: str | None = None,
        height: int = 64,
        width: int = 64,
        num_frames: int | None = None,
        max_frames: int | None = None,
        num_inference_steps: int = 50,
        guidance: GuidanceSchedule | None = None,
        generator: torch.Generator | None = None,
        latents: torch.Tensor | None = None,
        negative_prompt: str | None = None,
        output_type: OutputType = "np",
        output_path: str | Path | None = None,
        batched: bool = True,
        progress: bool = True,
        crf: int = 18,
        cache: CachePolicy | None = None,
        recorder: CacheRecorder | None = None,
    ) -> HumoPipelineOutput:
        """Generate one video.

        Args:
            prompt: the text.
            image: reference image (PIL or ``(H, W, 3|4)`` uint8), any size: it is letterboxed.
            audio: ``(S,)`` float32 mono speech at 16 kHz; it decides the length unless ``num_frames`` is given.
            mode: ``T``, ``TI``, ``TA`` or ``TIA``; None infers it from the inputs given.
            height, width: output size in pixels (multiples of 16).
            num_frames: video frames (4k+1); None: from the audio (capped by ``max_frames``), else ``max_frames``.
            max_frames: overrides the pipeline's cap for this call.
            num_inference_steps: solver steps.
            guidance: the CFG schedule; None: upstream's 17B form with its default scales for ``mode``.
            generator: seeds the initial noise.
            latents: optional initial noise ``[1, 16, T + 1, h, w]``.
            negative_prompt: overrides the pipeline's null text.
            output_type: ``np``, ``pt``, ``latent`` or ``mp4`` (needs ``output_path``; audio muxed as AAC).
            output_path: where to write the mp4.
            batched: see :meth:`denoise`.
            progress: show the progress bar.
            crf: x264 quality for ``mp4``.
            cache: step caching (:meth:`step_plan`), or None to compute every branch at every step.
            recorder: see :meth:`denoise`.

        Returns:
            :class:`HumoPipelineOutput`.
        """
        start, forwards = time.perf_counter(), self.dit_forwards
        timings: dict[str, float] = {}
        # 1. check inputs and resolve mode and length
        mode = mode or self.infer_mode(image, audio)
        cap = self.max_frames if max_frames is None else max_frames
        self.check_inputs(prompt, image, audio, mode, height, width, num_frames, num_inference_steps, cap)
        if output_type not in ("np", "pt", "latent", "mp4"):
            raise ValueError(f"unknown output_type {output_type!r}; use 'np', 'pt', 'latent' or 'mp4'")
        if output_type == "mp4" and output_path is None:
            raise ValueError("output_type='mp4' needs output_path (where to write the video)")
        num_frames, notes = self.resolve_num_frames(audio, num_frames, cap)
        if guidance is None:
            guidance = build_guidance("humo-17b", mode, scale_text=5.0, scale_image=4.0, scale_audio=5.5)
        num_latent = latent_frames(num_frames)

        # 2. encode text, reference image and audio (once per request)
        prompt_embeds, negative_embeds = self.encode_prompt(prompt, negative_prompt)
        ref_latents = self.encode_reference(image, height, width) if "I" in mode else None
        audio_windows = self.encode_audio(audio if "A" in mode else None, num_frames)
        inputs = self.prepare_branch_inputs(
            guidance.chain, prompt_embeds, negative_embeds, audio_windows, ref_latents, height, width
        )
        timings["encode"] = time.perf_counter() - start

        # 3. initial noise, 4. denoising loop
        tick = time.perf_counter()
        latents = self.prepare_latents(num_latent, height, width, generator, latents)
        latents = self.denoise(
            latents, inputs, guidance, num_inference_steps, batched=batched, progress=progress, cache=cache,
            recorder=recorder,
        )
        video_latents = latents[:, :, :num_latent]  # drop the reference frames
        timings["denoise"] = time.perf_counter() - tick

        output = self.finish(
            video_latents, audio, num_frames, mode, output_type, output_path, crf, timings, notes, start
        )
        output.dit_forwards = self.dit_forwards - forwards
        return output

    def finish(
        self,
        video_latents: torch.Tensor,
        audio: np.ndarray | None,
        num_frames: int,
        mode: str,
        output_type: OutputType,
        output_path: str | Path | None,
        crf: int,
        timings: dict[str, float],
        notes: list[str],
        start: float,
    ) -> HumoPipelineOutput:
        """5. decode, 6. convert or write: the end of every generation, single-window and long-video alike."""
        from humo.data.media import fit_audio_to_frames, write_video
        from humo.models.encoders import tensor_to_frames

        fitted = None
        if audio is not None:
            fitted = fit_audio_to_frames(audio, num_frames, VIDEO_FPS, AUDIO_SAMPLE_RATE)
        if output_type == "latent":
            timings["total"] = time.perf_counter() - start
            return HumoPipelineOutput(video_latents[0].cpu(), fitted, num_frames, mode, timings, notes=notes)
        tick = time.perf_counter()
        video = self.decode_latents(video_latents)[0]  # [3, F, H, W] in [-1, 1]
        timings["decode"] = time.perf_counter() - tick
        if output_type == "pt":
            timings["total"] = time.perf_counter() - start
            return HumoPipelineOutput((video.cpu() + 1) / 2, fitted, num_frames, mode, timings, notes=notes)
        frames = tensor_to_frames(video)  # (F, H, W, 3) uint8
        path = None
        if output_type == "mp4":
            tick = time.perf_counter()
            path = write_video(Path(output_path), frames, VIDEO_FPS, fitted, AUDIO_SAMPLE_RATE, crf=crf)
            timings["write"] = time.perf_counter() - tick
        timings["total"] = time.perf_counter() - start
        return HumoPipelineOutput(frames, fitted, num_frames, mode, timings, path=path, notes=notes)
