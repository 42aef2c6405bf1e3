"""One generation core: a request -> a video and the record of how it was made, for every caller.

Batch inference (:mod:`humo.inference.batch`), serving (:mod:`humo.registry.pyfunc`), evaluation
(:mod:`humo.evaluation.evaluate`), the training sample videos (:mod:`humo.evaluation.samples`) and long videos all
go through the same four steps here; each caller keeps only its own concern (file formats, base64 and DataFrames,
scoring, callbacks):

1. **A request** (:class:`GenerationRequest`): one pydantic model with the prompt, the mode, the decoded inputs
   (image and audio arrays, plus the checksums of the files they came from), seed, steps, frames, sizes, guidance
   scales and the negative prompt. Every field left out takes the ``generate`` section's default.
2. **A plan** (:func:`plan_request`): every check, against one set of limits (``params.limits``) for every entry
   point, before any model runs. A bad request raises :class:`InvalidRequestError` naming the field; the caller
   records it (batch) or answers HTTP 400 (serving) and goes on.
3. **Guidance that follows the model** (:func:`resolve_guidance`): ``generate.guidance.form: auto`` takes the
   upstream form and scales of the model that is loaded (:data:`humo.diffusion.guidance.UPSTREAM_SCALES`); the
   request's ``speed`` then adds step caching and guidance truncation (:mod:`humo.inference.speed`).
4. **Generation** (:func:`generate`): one window or, for audio longer than a window with
   ``generate.long_video.enabled``, sliding windows; notes are collected once; with output paths the mp4 and its
   JSON sidecar are written as a pair that a killed run can always complete or redo (:func:`write_outputs`,
   :func:`recover_outputs`).

One loaded pipeline serves concurrent callers one at a time (:data:`PIPELINE_LOCKS`): the VAE's causal decode cache
and the pipeline's own caches live on the modules and are not re-entrant.
"""

from __future__ import annotations

import io
import json
import logging
import os
import tempfile
import threading
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from humo import __version__
from humo.config import AdapterRef, EncodersConfig, GenerateConfig, GuidanceConfig, RequestLimitsConfig
from humo.constants import AUDIO_SAMPLE_RATE, SAMPLES_PER_VIDEO_FRAME, VAE_TEMPORAL_STRIDE, VIDEO_FPS
from humo.diffusion.guidance import UPSTREAM_SCALES, GuidanceSchedule, PiecewiseScale, build_guidance
from humo.diffusion.step_cache import CachePolicy
from humo.hashing import file_sha256
from humo.inference.parallel import ParallelRuntime
from humo.inference.speed import SpeedChoice, SpeedError, resolve_speed
from humo.inference.pipeline import (
    SIZE_MULTIPLE,
    CacheRecorder,
    HumoPipeline,
    HumoPipelineOutput,
    OutputType,
    frames_for_audio,
)
from humo.models.presets import HumoDiTConfig, matching_preset

logger = logging.getLogger(__name__)

GENERATOR_TAG = "humo generate"
"""Written into every sidecar; a file without it is foreign and never overwritten."""
TMP_SUFFIX = ".tmp"
"""Suffix of a sidecar being written; a video being written is ``<name>.mp4.tmp.mp4`` (ffmpeg wants .mp4)."""


# =====================================================================================================================
# Errors and the request
# =====================================================================================================================


class InvalidRequestError(ValueError):
    """A request that cannot be generated: ``field`` names the culprit, the message says what is allowed.

    Fields use the request's names (``image``, ``audio``, ``height``, ...); an entry point whose wire format calls
    them otherwise renames them with :meth:`renamed`.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message

    def renamed(self, names: Mapping[str, str]) -> InvalidRequestError:
        """The same error with ``field`` replaced by ``names[field]`` (unchanged when not in ``names``)."""
        return InvalidRequestError(names.get(self.field, self.field), self.message)


class GenerationRequest(BaseModel):
    """One request, with its inputs decoded. ``None`` means "the ``generate`` section's default".

    Attributes:
        image: ``(H, W, 3)`` uint8 RGB reference image, or None.
        audio: ``(S,)`` float32 mono speech at 16 kHz, or None.
        inputs: name -> sha256 of the files the inputs were read from (for the sidecar and idempotency keys).
        notes: what reading the inputs found worth telling (e.g. only the first of two images is used).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    id: str = Field("request", min_length=1)
    prompt: str
    mode: Literal["T", "TI", "TA", "TIA"] | None = None
    image: np.ndarray | None = Field(None, repr=False)
    audio: np.ndarray | None = Field(None, repr=False)
    inputs: dict[str, str] = Field(default_factory=dict)
    notes: tuple[str, ...] = ()
    seed: int | None = Field(None, ge=0)
    steps: int | None = Field(None, ge=1)
    num_frames: int | None = Field(None, ge=1)
    height: int | None = Field(None, ge=1)
    width: int | None = Field(None, ge=1)
    scale_text: float | None = Field(None, ge=0, allow_inf_nan=False)
    scale_image: float | None = Field(None, ge=0, allow_inf_nan=False)
    scale_audio: float | None = Field(None, ge=0, allow_inf_nan=False)
    negative_prompt: str | None = None
    speed: str | None = Field(None, min_length=1)
    """``off`` (every forward computed), ``config`` (the configured cache and truncation; the default) or a name
    in ``generate.speed_presets``."""

    @field_validator("prompt")
    @classmethod
    def _non_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("is empty; describe the video in a sentence")
        return value

    @field_validator("mode", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.strip().upper() if isinstance(value, str) else value

    @classmethod
    def from_fields(cls, fields: Mapping[str, Any]) -> GenerationRequest:
        """Validate ``fields``; the first problem becomes an :class:`InvalidRequestError` naming its field."""
        try:
            return cls.model_validate(dict(fields))
        except ValidationError as err:
            first = err.errors()[0]
            name = ".".join(map(str, first["loc"])) or "request"
            if first["type"] == "extra_forbidden":
                raise InvalidRequestError(name, f"unknown field; allowed: {', '.join(REQUEST_FIELDS)}") from None
            raise InvalidRequestError(name, f"{first['msg']} (got {first.get('input')!r:.60})") from None

    def describe(self) -> dict[str, Any]:
        """The request as JSON-ready values (inputs by checksum, arrays left out), for the sidecar."""
        return self.model_dump(exclude={"image", "audio"}, mode="json")


REQUEST_FIELDS: tuple[str, ...] = tuple(
    name for name in GenerationRequest.model_fields if name not in ("image", "audio", "inputs", "notes")
)
"""The settings a caller may send with a request besides its inputs."""


# =====================================================================================================================
# Inputs: files and bytes -> arrays (the same checks for a path in a batch and bytes in a served request)
# =====================================================================================================================


def read_image(source: Path | bytes, limits: RequestLimitsConfig, name: str = "image") -> np.ndarray:
    """An image file (path or bytes) -> ``(H, W, 3)`` uint8 RGB, refusing images over ``limits.max_image_side``.

    The size is read from the header before any pixel is decoded, so a decompression bomb is refused cheaply.

    Raises:
        InvalidRequestError: (field ``name``) missing, unreadable, or too large.
    """
    from PIL import Image, UnidentifiedImageError

    if isinstance(source, Path) and not source.is_file():
        raise InvalidRequestError(name, f"{source} not found")
    try:
        with Image.open(source if isinstance(source, Path) else io.BytesIO(source)) as image:
            width, height = image.size
            if max(width, height) > limits.max_image_side:
                raise InvalidRequestError(
                    name, f"too large: {width}x{height} pixels, the limit is {limits.max_image_side} per side"
                )
            return np.asarray(image.convert("RGB"))
    except Image.DecompressionBombError as err:
        raise InvalidRequestError(name, f"too large, refused before decoding: {err}") from None
    except (UnidentifiedImageError, OSError) as err:
        raise InvalidRequestError(name, f"is not a readable image file (PNG or JPEG): {err}") from None


def read_audio_input(source: Path | bytes, name: str = "audio") -> np.ndarray:
    """An audio file (path or bytes) at any rate and channel count -> ``(S,)`` float32 mono at 16 kHz.

    Raises:
        InvalidRequestError: (field ``name``) missing, unreadable or empty.
    """
    if isinstance(source, Path):
        if not source.is_file():
            raise InvalidRequestError(name, f"{source} not found")
        return _decode_audio_file(source, name)
    # librosa and soundfile read from a path: the bytes live in a file only while they are decoded
    with tempfile.TemporaryDirectory(prefix="humo-request-") as folder:
        path = Path(folder) / "audio"
        path.write_bytes(source)
        return _decode_audio_file(path, name)


def _decode_audio_file(path: Path, name: str) -> np.ndarray:
    from audioread.exceptions import DecodeError
    from librosa.util.exceptions import ParameterError

    from humo.data.media import MediaError, read_audio

    try:
        audio = read_audio(path, AUDIO_SAMPLE_RATE)
    # librosa falls back to audioread for files libsndfile rejects; its DecodeError (NoBackendError, which has no
    # message) escapes read_audio, and soundfile raises RuntimeError or EOFError on truncated files.
    except ParameterError as err:  # librosa refuses to resample non-finite samples
        raise InvalidRequestError(name, f"holds NaN or infinite samples; the file is damaged ({err})") from None
    except (MediaError, DecodeError, ValueError, RuntimeError, EOFError) as err:
        detail = str(err) or type(err).__name__
        raise InvalidRequestError(name, f"is not a readable audio file (WAV, FLAC, OGG or MP3): {detail}") from None
    if audio.size == 0:
        raise InvalidRequestError(name, "holds no samples; give speech of at least 0.2 s")
    return audio.astype(np.float32, copy=False)


# =====================================================================================================================
# Models and the pipeline factory
# =====================================================================================================================


@dataclass(frozen=True)
class ModelInfo:
    """What the sidecar says about the model: a name, a version and where it came from."""

    name: str
    version: str
    source: str
    adapters: tuple[dict[str, Any], ...] = ()
    """LoRA adapters put on it at load (``model.adapters``): path, sha256, strength, merged or not."""

    def describe(self) -> dict[str, Any]:
        """The sidecar's ``model`` entry (and the batch's resume key); ``adapters`` only when there are some."""
        record = asdict(self)
        if not self.adapters:
            record.pop("adapters")
        return record


def attach_adapters(
    transformer: torch.nn.Module, info: ModelInfo, adapters: Sequence[AdapterRef], merge: bool
) -> tuple[torch.nn.Module, ModelInfo]:
    """Put the LoRA files ``adapters`` (``model.adapters``) on a loaded transformer, in order.

    Raises:
        FileNotFoundError: an adapter file is missing.
        humo.models.lora.LoraFormatError: an unreadable file, or one that does not fit the model.
    """
    if not adapters:
        return transformer, info
    from humo.models.checkpoints import read_adapter
    from humo.models.lora import apply_adapters

    loaded, records = [], []
    for ref in adapters:
        weights, path = read_adapter(ref.path, transformer)
        loaded.append((weights, ref.scale))
        records.append({"path": str(ref.path), "sha256": file_sha256(path), "scale": ref.scale, "merged": merge})
    apply_adapters(transformer, loaded, merge=merge)
    logger.info("put %d LoRA adapter(s) on the model (%s)", len(loaded), "merged" if merge else "beside the layers")
    return transformer, replace(info, adapters=tuple(records))


ModelResolver = Callable[[str], tuple[torch.nn.Module, ModelInfo]]
"""``scheme:/...`` reference -> ``(transformer, ModelInfo)`` (the registry's resolves ``models:/name@alias``)."""


def load_model(
    reference: str | Path, resolvers: Mapping[str, ModelResolver] | None = None, in_place: bool = True
) -> tuple[torch.nn.Module, ModelInfo]:
    """The transformer named by ``reference``: a checkpoint folder, or ``<scheme>:/...`` with a resolver given.

    ``in_place`` (``generate.memory.load_in_place``): build a folder's model on the meta device and fill it from
    the file, so that loading peaks near one copy of the weights.

    Raises:
        ValueError: a URI scheme with no resolver in ``resolvers``.
        FileNotFoundError: a folder that is not a trained checkpoint.
    """
    from humo.models.checkpoints import RUN_FILE, load_trained_transformer

    text = str(reference)
    scheme, sep, _ = text.partition(":/")
    if sep and scheme.isalpha() and len(scheme) > 1:
        if not resolvers or scheme not in resolvers:
            raise ValueError(
                f"model reference {text!r} uses scheme {scheme!r} but no resolver for it was given (known: "
                f"{sorted(resolvers or {}) or 'none'}); give a checkpoint folder such as artifacts/train_stage2"
            )
        return resolvers[scheme](text)
    folder = Path(text)
    transformer = load_trained_transformer(folder, in_place=in_place)
    run_file = folder / RUN_FILE
    run = json.loads(run_file.read_text()) if run_file.is_file() else {}
    version = str(run.get("run_id") or file_sha256(next(iter(sorted(folder.glob("*.safetensors")))))[:12])
    return transformer, ModelInfo(name=folder.name, version=version, source=str(folder))


def build_pipeline(
    transformer: torch.nn.Module,
    settings: GenerateConfig,
    encoders: EncodersConfig,
    vae_dir: Path | None,
    limits: RequestLimitsConfig | None = None,
    device: str | torch.device = "cpu",
    parallel: ParallelRuntime | None = None,
) -> HumoPipeline:
    """The one pipeline factory: the transformer with the configured encoders and the ``generate`` solver.

    Args:
        transformer: the HuMo DiT (moved to ``device``).
        settings: solver, shift, negative prompt, window length, progress bar, memory levers, parallel layout.
        encoders: text, audio and VAE kinds (and local paths of real ones).
        vae_dir: the trained tiny VAE (``paths.vae_dir``, or a model folder's copy); unused by the Wan VAE.
        limits: caps the window at ``limits.max_frames``.
        device: where the models run (a ``parallel`` runtime's own device wins).
        parallel: the process group when launched with torchrun (:func:`humo.inference.parallel.init_runtime`).
    """
    from humo.inference.parallel import parallelize
    from humo.models.encoders import load_audio_encoder, load_text_encoder, load_vae
    from humo.models.memory import apply_memory_levers

    if parallel is not None:
        device = parallel.device
    window = settings.max_frames if limits is None else min(settings.max_frames, limits.max_frames)
    transformer = apply_memory_levers(transformer, settings.memory, torch.device(device))
    if parallel is not None:
        transformer = parallelize(transformer, parallel, settings.parallel)
    text_encoder = load_text_encoder(encoders.text, device="cpu" if settings.memory.text_encoder_on_host else device)
    if parallel is not None and settings.parallel.shard_text and not settings.memory.text_encoder_on_host:
        from humo.models.encoders.text import shard_text_encoder

        shard_text_encoder(text_encoder, parallel.device)
    pipe = HumoPipeline(
        transformer,
        load_vae(encoders.vae, trained_dir=vae_dir, device=device),
        text_encoder,
        load_audio_encoder(encoders.audio, device=device),
        solver=settings.solver,
        shift=settings.shift,
        negative_prompt=settings.negative_prompt,
        max_frames=window,
    )
    pipe.set_progress_bar_config(disable=not settings.progress_bar or (parallel is not None and not parallel.is_main))
    pipe.parallel = parallel
    pipe.max_branch_batch = settings.memory.max_branch_batch
    return pipe


_LOCKS_GUARD = threading.Lock()
PIPELINE_LOCKS: weakref.WeakKeyDictionary[HumoPipeline, threading.Lock] = weakref.WeakKeyDictionary()
"""One lock per loaded pipeline: :func:`generate` holds it, so concurrent requests to one model run in turn."""


def pipeline_lock(pipeline: HumoPipeline) -> threading.Lock:
    """The lock that serialises generations on ``pipeline`` (created on first use)."""
    with _LOCKS_GUARD:
        lock = PIPELINE_LOCKS.get(pipeline)
        if lock is None:
            lock = PIPELINE_LOCKS[pipeline] = threading.Lock()
        return lock


# =====================================================================================================================
# Settings + request -> guidance
# =====================================================================================================================


def guidance_form_for(cfg: HumoDiTConfig) -> Literal["humo-17b", "humo-1.7b"]:
    """Upstream's guidance form for a model: ``humo-1.7b`` for the 1.7B layout, else ``humo-17b``.

    ``tiny`` was trained and evaluated with the 17B form and its scales, so it keeps them.
    """
    return "humo-1.7b" if matching_preset(cfg) == "humo-1.7b" else "humo-17b"


def resolve_guidance(
    guidance: GuidanceConfig, mode: str, model: HumoDiTConfig, request: GenerationRequest | None = None
) -> tuple[GuidanceSchedule, dict[str, Any]]:
    """The schedule for ``mode``: the configured form (``auto``: the model's), scales from the request, else the
    config, else the form's upstream values.

    Returns:
        ``(schedule, record)``; ``record`` (form, scales, switch) goes into the sidecar.

    Raises:
        InvalidRequestError: (field ``guidance``) a custom form without a scale the mode needs.
    """
    form = guidance_form_for(model) if guidance.form == "auto" else guidance.form
    upstream = UPSTREAM_SCALES["humo-17b" if form == "custom" else form]
    scales = {}
    for name in ("text", "image", "audio"):
        asked = getattr(request, f"scale_{name}", None) if request is not None else None
        configured = getattr(guidance, f"scale_{name}")
        scales[name] = next(value for value in (asked, configured, upstream[name]) if value is not None)
    custom = {name: PiecewiseScale(tuple(s.values), tuple(s.switch_points)) for name, s in guidance.custom.items()}
    try:
        schedule = build_guidance(
            form, mode, scales["text"], scales["image"], scales["audio"], guidance.switch_timestep,
            guidance.late_text_offset, custom or None,
        )
    except ValueError as err:
        raise InvalidRequestError("guidance", str(err)) from None
    record = {
        "configured_form": guidance.form,
        "form": form,
        "scale_text": scales["text"],
        "scale_image": scales["image"],
        "scale_audio": scales["audio"],
        "switch_timestep": guidance.switch_timestep,
        "late_text_offset": guidance.late_text_offset,
        "schedule": schedule.describe(),
    }
    return schedule, record


# =====================================================================================================================
# The plan: every check, one set of limits
# =====================================================================================================================


@dataclass(frozen=True)
class GenerationPlan:
    """A checked request with every default filled in: what :func:`generate` will run."""

    mode: str
    seed: int
    steps: int
    height: int
    width: int
    num_frames: int | None
    """Explicit frames, or None: from the audio (upstream's rule)."""
    window_frames: int
    long_video: bool
    guidance: GuidanceSchedule
    """The schedule the run follows (truncated when the speed choice says so)."""
    guidance_record: dict[str, Any]
    notes: tuple[str, ...]
    speed: SpeedChoice | None = None
    """Step caching and truncation; None or exact: every forward computed."""

    @property
    def cache(self) -> CachePolicy | None:
        """The step-cache policy the run follows, or None."""
        return self.speed.cache if self.speed is not None else None

    def settings_record(self, settings: GenerateConfig) -> dict[str, Any]:
        """What decided the output besides the inputs and the model (sidecar and idempotency key)."""
        record = {
            "mode": self.mode,
            "seed": self.seed,
            "steps": self.steps,
            "height": self.height,
            "width": self.width,
            "num_frames": self.num_frames,
            "window_frames": self.window_frames,
            "solver": settings.solver,
            "shift": settings.shift,
            "long_video": settings.long_video.model_dump() if self.long_video else None,
            "guidance": {key: value for key, value in self.guidance_record.items() if key != "schedule"},
        }
        if self.speed is not None and not self.speed.exact:  # exact runs keep the keys they always had
            record["speed"] = self.speed.record()
        return record


def _check_range(name: str, value: float, low: float, high: float, hint: str = "") -> None:
    if not low <= value <= high:
        raise InvalidRequestError(name, f"{value} is out of range; allowed {low}..{high}{hint}")


def _check_image(image: np.ndarray, limits: RequestLimitsConfig) -> None:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise InvalidRequestError("image", f"must be an (H, W, 3) uint8 RGB array, got {image.shape} {image.dtype}")
    if max(image.shape[:2]) > limits.max_image_side:
        raise InvalidRequestError(
            "image", f"too large: {image.shape[1]}x{image.shape[0]} pixels, the limit is {limits.max_image_side}"
        )


def _check_audio(audio: np.ndarray, limits: RequestLimitsConfig) -> None:
    if audio.ndim != 1 or not np.issubdtype(audio.dtype, np.floating):
        raise InvalidRequestError("audio", f"must be a 1-D float array (mono, 16 kHz), got {audio.shape} {audio.dtype}")
    if not np.all(np.isfinite(audio)):
        raise InvalidRequestError("audio", "holds NaN or infinite samples; the file is damaged")
    shortest = limits.min_audio_frames * SAMPLES_PER_VIDEO_FRAME
    if audio.size < shortest:
        raise InvalidRequestError(
            "audio",
            f"too short: {audio.size / AUDIO_SAMPLE_RATE:.3f} s, at least {shortest / AUDIO_SAMPLE_RATE:.2f} s "
            f"({limits.min_audio_frames} frames at {VIDEO_FPS} fps) is needed for a video that moves",
        )


def _check_sizes(request: GenerationRequest, settings: GenerateConfig, limits: RequestLimitsConfig) -> tuple[int, int]:
    sizes = []
    for name in ("height", "width"):
        value = getattr(request, name) or getattr(settings, name)
        if value % SIZE_MULTIPLE or not SIZE_MULTIPLE <= value <= limits.max_video_side:
            raise InvalidRequestError(
                name, f"{value} must be a multiple of {SIZE_MULTIPLE} between {SIZE_MULTIPLE} and "
                f"{limits.max_video_side} (limits.max_video_side)"
            )
        sizes.append(value)
    return sizes[0], sizes[1]


def _check_text(request: GenerationRequest, limits: RequestLimitsConfig) -> None:
    for name in ("prompt", "negative_prompt"):
        text = getattr(request, name)
        if text is not None and len(text) > limits.max_prompt_chars:
            raise InvalidRequestError(
                name, f"too long: {len(text)} characters, the limit is {limits.max_prompt_chars}"
            )


def _check_mode(request: GenerationRequest, limits: RequestLimitsConfig) -> str:
    mode = request.mode or HumoPipeline.infer_mode(request.image, request.audio)
    if mode not in limits.allowed_modes:
        allowed = ", ".join(limits.allowed_modes)
        raise InvalidRequestError("mode", f"mode {mode!r} is not served here; allowed: {allowed}")
    if "I" in mode and request.image is None:
        raise InvalidRequestError("image", f"mode {mode!r} needs a reference image; add one or use mode "
                                           f"{mode.replace('I', '')!r}")
    if "A" in mode and request.audio is None:
        raise InvalidRequestError("audio", f"mode {mode!r} needs audio; add it or use mode {mode.replace('A', '')!r}")
    return mode


def plan_request(
    request: GenerationRequest, settings: GenerateConfig, limits: RequestLimitsConfig, model: HumoDiTConfig
) -> GenerationPlan:
    """Check ``request`` against ``limits`` and fill in the defaults of ``settings``; nothing runs yet.

    Raises:
        InvalidRequestError: the first bad field.
    """
    _check_text(request, limits)
    mode = _check_mode(request, limits)
    if request.image is not None:
        _check_image(request.image, limits)
    if request.audio is not None:
        _check_audio(request.audio, limits)
    height, width = _check_sizes(request, settings, limits)
    seed = settings.seed if request.seed is None else request.seed
    _check_range("seed", seed, 0, limits.max_seed)
    steps = request.steps or min(settings.steps, limits.max_steps)
    _check_range("steps", steps, 1, limits.max_steps, " (limits.max_steps)")
    for name in ("scale_text", "scale_image", "scale_audio"):
        value = getattr(request, name)
        if value is not None:
            _check_range(name, value, 0.0, limits.max_guidance_scale, " (limits.max_guidance_scale)")
    window = min(settings.max_frames, limits.max_frames)
    if request.num_frames is not None:
        if (request.num_frames - 1) % VAE_TEMPORAL_STRIDE:
            raise InvalidRequestError("num_frames", f"{request.num_frames} must be of the form 4k+1 (e.g. 33 or 97)")
        _check_range("num_frames", request.num_frames, 1, window, " (one window; limits.max_frames)")
    long_cfg = settings.long_video
    long_video = (
        long_cfg.enabled
        and request.num_frames is None
        and "A" in mode
        and frames_for_audio(len(request.audio), long_cfg.max_total_frames) > window
    )
    guidance, record = resolve_guidance(settings.guidance, mode, model, request)
    try:
        speed = resolve_speed(settings, request.speed, steps, guidance)
    except SpeedError as err:
        raise InvalidRequestError("speed", str(err)) from None
    record["schedule"] = speed.guidance.describe()
    return GenerationPlan(
        mode=mode, seed=seed, steps=steps, height=height, width=width, num_frames=request.num_frames,
        window_frames=window, long_video=long_video, guidance=speed.guidance, guidance_record=record,
        notes=(*request.notes, *speed.notes), speed=speed,
    )


# =====================================================================================================================
# Generation
# =====================================================================================================================


@dataclass
class GenerationResult:
    """What :func:`generate` returns: the pipeline output, the sidecar record and the plan it ran."""

    output: HumoPipelineOutput
    record: dict[str, Any]
    plan: GenerationPlan
    notes: list[str] = field(default_factory=list)


def _run_pipeline(
    pipeline: HumoPipeline,
    request: GenerationRequest,
    plan: GenerationPlan,
    settings: GenerateConfig,
    output_type: OutputType,
    output_path: Path | None,
    progress: bool,
    recorder: CacheRecorder | None = None,
) -> HumoPipelineOutput:
    """One window, or sliding windows for a long video; the seed's generator drives all the noise."""
    generator = torch.Generator().manual_seed(plan.seed)
    audio = request.audio if "A" in plan.mode else None
    image = request.image if "I" in plan.mode else None
    if plan.long_video:
        from humo.inference.long_video import generate_long

        if recorder is not None:
            raise ValueError("a cache recorder follows one window; calibrate on requests of one window")

        long_cfg = settings.long_video
        output, _ = generate_long(
            pipeline, request.prompt, audio, image=image, mode=plan.mode, height=plan.height, width=plan.width,
            num_inference_steps=plan.steps, guidance=plan.guidance, generator=generator,
            window_frames=plan.window_frames, overlap_latent_frames=long_cfg.overlap_latent_frames,
            max_total_frames=long_cfg.max_total_frames, output_type=output_type, output_path=output_path,
            progress=progress, crf=settings.crf, prefix_hold=long_cfg.prefix_hold,
            seam_strength=long_cfg.seam_strength, seam_radius=long_cfg.seam_radius,
            negative_prompt=request.negative_prompt, cache=plan.cache,
        )
        return output
    return pipeline(
        request.prompt, image=image, audio=audio, mode=plan.mode, height=plan.height, width=plan.width,
        num_frames=plan.num_frames, max_frames=plan.window_frames, num_inference_steps=plan.steps,
        guidance=plan.guidance, generator=generator, negative_prompt=request.negative_prompt,
        output_type=output_type, output_path=output_path, progress=progress, crf=settings.crf, cache=plan.cache,
        recorder=recorder,
    )


def generation_record(
    request: GenerationRequest,
    plan: GenerationPlan,
    settings: GenerateConfig,
    output: HumoPipelineOutput,
    notes: list[str],
    model: ModelInfo | None,
) -> dict[str, Any]:
    """The sidecar: what was asked, what was used (defaults and guidance included), what came out, and notes."""
    record: dict[str, Any] = {
        "generator": GENERATOR_TAG,
        "humo_version": __version__,
        "request": request.describe(),
        "settings": plan.settings_record(settings),
        "guidance_schedule": plan.guidance_record["schedule"],
        "model": model.describe() if model is not None else None,
        "output": {
            "num_frames": output.num_frames,
            "fps": VIDEO_FPS,
            "seconds_of_video": output.num_frames / VIDEO_FPS,
            "long_video": plan.long_video,
            "dit_forwards": output.dit_forwards,
        },
        "timings": {key: round(value, 4) for key, value in output.timings.items()},
        "notes": notes,
    }
    return record


def generate(
    pipeline: HumoPipeline,
    request: GenerationRequest,
    settings: GenerateConfig,
    limits: RequestLimitsConfig,
    output_type: OutputType = "mp4",
    video_path: Path | None = None,
    sidecar_path: Path | None = None,
    model: ModelInfo | None = None,
    extra_record: Mapping[str, Any] | None = None,
    progress: bool | None = None,
    recorder: CacheRecorder | None = None,
) -> GenerationResult:
    """Request -> video and record: plan, generate (one window or long), collect notes once, write the pair.

    Args:
        pipeline: a loaded :class:`HumoPipeline` (calls on one pipeline run one at a time).
        request: the request.
        settings: the ``generate`` section (defaults, solver, guidance, long videos, crf).
        limits: the ``limits`` section.
        output_type: ``mp4`` (needs ``video_path``), ``np``, ``pt`` or ``latent``.
        video_path, sidecar_path: where the mp4 and its JSON sidecar go (``write_outputs``: crash-safe).
        model: recorded in the sidecar.
        extra_record: more sidecar fields (the batch's idempotency key).
        progress: progress bar; None: ``settings.progress_bar``.
        recorder: told about every branch forward (``humo calibrate-cache``); one process only.

    Raises:
        InvalidRequestError: the request is refused (nothing was generated).
    """
    plan = plan_request(request, settings, limits, pipeline.transformer.humo_config)
    if (output_type == "mp4") != (video_path is not None):
        raise ValueError(f"output_type={output_type!r} with video_path={video_path}: an mp4 needs a video_path "
                         "(where to write it), and only an mp4 is written")
    progress = settings.progress_bar if progress is None else progress
    tmp_video = _tmp_video_path(video_path) if video_path is not None else None
    with pipeline_lock(pipeline):
        if pipeline.parallel is None:
            output = _run_pipeline(pipeline, request, plan, settings, output_type, tmp_video, progress, recorder)
        else:  # every rank denoises; rank 0 alone decodes and writes
            pipeline.parallel.dispatch((request, plan, settings))
            output = pipeline.parallel.run_agreed(
                lambda: _run_pipeline(pipeline, request, plan, settings, output_type, tmp_video, progress)
            )
    notes = [*plan.notes, *output.notes]
    record = {**generation_record(request, plan, settings, output, notes, model), **(extra_record or {})}
    if plan.cache is not None:  # the skip plan the run followed (per window for a long video)
        record["step_plan"] = pipeline.step_plan(plan.guidance, plan.steps, plan.cache).describe()
    if video_path is not None:
        write_outputs(tmp_video, record, video_path, sidecar_path)
        output.path = video_path
    return GenerationResult(output, record, plan, notes)


def follow(pipeline: HumoPipeline) -> int:
    """The ranks other than 0: run each request rank 0 dispatches (its denoising share only) until it closes.

    Returns:
        How many requests this rank took part in.
    """
    runtime = pipeline.parallel
    if runtime is None or runtime.is_main:
        raise ValueError("follow() is for the ranks other than 0 of a torchrun launch")
    count = 0
    for request, plan, settings in runtime.jobs():
        with pipeline_lock(pipeline):
            runtime.run_agreed(lambda: _run_pipeline(pipeline, request, plan, settings, "latent", None, False))
        count += 1
    return count


# =====================================================================================================================
# The output pair: written so that a killed run can always complete or redo it
# =====================================================================================================================


def _tmp_video_path(video_path: Path) -> Path:
    return video_path.with_name(video_path.name + TMP_SUFFIX + video_path.suffix)


def _tmp_sidecar_path(sidecar_path: Path) -> Path:
    return sidecar_path.with_name(sidecar_path.name + TMP_SUFFIX)


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(json.dumps(data, indent=2, sort_keys=True) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def atomic_write_json(path: Path, data: Mapping[str, Any]) -> None:
    """Write JSON to a temporary name, then rename it into place."""
    tmp = _tmp_sidecar_path(path)
    _write_json(tmp, data)
    os.replace(tmp, path)


def write_outputs(tmp_video: Path, record: dict[str, Any], video_path: Path, sidecar_path: Path | None) -> None:
    """Put a rendered video and its sidecar in place, in an order a rerun can always finish.

    1. the sidecar (with the video's sha256) is written under ``<sidecar>.tmp``;
    2. the video is renamed into place;
    3. the sidecar is renamed into place.

    A kill after 1 leaves a temporary pair that :func:`recover_outputs` deletes; a kill after 2 leaves the video
    and a temporary sidecar whose checksum matches it, which :func:`recover_outputs` renames into place.
    """
    record["output"] = {**record.get("output", {}), "video": video_path.name, "sha256": file_sha256(tmp_video)}
    if sidecar_path is None:
        os.replace(tmp_video, video_path)
        return
    tmp_sidecar = _tmp_sidecar_path(sidecar_path)
    _write_json(tmp_sidecar, record)
    os.replace(tmp_video, video_path)
    os.replace(tmp_sidecar, sidecar_path)


def read_sidecar(path: Path) -> dict[str, Any] | None:
    """Our sidecar at ``path``, or None when there is none or it is not ours."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) and data.get("generator") == GENERATOR_TAG else None


def recover_outputs(video_path: Path, sidecar_path: Path) -> str | None:
    """Finish or clean what a killed run left for this pair; returns what was done (for the log), or None.

    - a temporary video (the render was cut short) is deleted;
    - a temporary sidecar of ours whose checksum matches the video in place is renamed into place (the run died
      between the two renames); any other temporary sidecar is deleted.
    """
    done = []
    tmp_video, tmp_sidecar = _tmp_video_path(video_path), _tmp_sidecar_path(sidecar_path)
    if tmp_video.exists():
        tmp_video.unlink()
        done.append(f"deleted the unfinished {tmp_video.name}")
    pending = read_sidecar(tmp_sidecar)
    if pending is not None and video_path.is_file():
        if file_sha256(video_path) == pending.get("output", {}).get("sha256"):
            os.replace(tmp_sidecar, sidecar_path)
            done.append(f"completed {sidecar_path.name} for {video_path.name}")
    if tmp_sidecar.exists():
        tmp_sidecar.unlink()
        done.append(f"deleted the unfinished {tmp_sidecar.name}")
    return "; ".join(done) or None

