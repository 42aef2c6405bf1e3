"""Serving requests: one record (a DataFrame row or a dict) -> a validated :class:`GenerationRequest`.

A request carries the prompt, the mode, an optional reference image and audio as base64 file bytes (PNG/JPEG;
WAV/FLAC/OGG/MP3 at any sample rate, resampled to 16 kHz mono), the seed, the steps and guidance scales. Every check
happens here, before any model runs, and every failure is an :class:`InvalidRequestError` that names the field; the
pyfunc turns it into MLflow's ``INVALID_PARAMETER_VALUE`` (HTTP 400) so the server answers and stays up.

Request fields (all but ``prompt`` optional; a missing value, None or NaN means "use the default")::

    prompt            str   what happens in the video (the caption)
    mode              str   T, TI, TA or TIA; default: inferred from the image and audio given
    reference_image   str   base64 of an image file
    audio             str   base64 of an audio file; it decides the length (25 fps frames, rounded to 4k+1)
    seed              int   default generate.seed
    steps             int   denoising steps, 1..limits.max_steps; default generate.steps capped by max_steps
    num_frames        int   4k+1 frames; default from the audio
    height, width     int   multiples of 16 up to limits.max_video_side; default generate.height/width
    scale_text, scale_image, scale_audio   float   guidance scales in [0, limits.max_guidance_scale]
    negative_prompt   str   the null text; default the model's
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import logging
import math
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from humo.config import GenerateConfig, RequestLimitsConfig
from humo.constants import AUDIO_SAMPLE_RATE, SAMPLES_PER_VIDEO_FRAME, VAE_TEMPORAL_STRIDE

logger = logging.getLogger(__name__)

SIZE_MULTIPLE = 16
"""Requested heights and widths must be multiples of 16 (VAE 8x, DiT patch 2x)."""
REQUEST_FIELDS: dict[str, str] = {
    "prompt": "string",
    "mode": "string",
    "reference_image": "string",
    "audio": "string",
    "seed": "long",
    "steps": "long",
    "num_frames": "long",
    "height": "long",
    "width": "long",
    "scale_text": "double",
    "scale_image": "double",
    "scale_audio": "double",
    "negative_prompt": "string",
}
"""Every field a request may carry, with its MLflow column type (the model signature is built from this)."""
RESPONSE_FIELDS: dict[str, str] = {"video": "string", "sidecar": "string"}
"""``video``: base64 of the mp4 (H.264 + AAC audio); ``sidecar``: JSON text describing the generation."""
MAX_SEED = 2**63 - 1


class InvalidRequestError(ValueError):
    """A request field is missing or invalid; ``field`` names it and the message says what is allowed."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass(frozen=True)
class GenerationRequest:
    """A validated request, ready for :class:`humo.inference.pipeline.HumoPipeline`.

    Attributes:
        image: ``(H, W, 3)`` uint8 RGB reference image, or None.
        audio: ``(S,)`` float32 mono audio at 16 kHz, or None.
        image_sha256, audio_sha256: checksums of the decoded files (for the sidecar), or None.
    """

    prompt: str
    mode: str
    image: np.ndarray | None
    audio: np.ndarray | None
    seed: int
    steps: int
    num_frames: int | None
    height: int
    width: int
    scale_text: float
    scale_image: float
    scale_audio: float
    negative_prompt: str | None
    image_sha256: str | None = None
    audio_sha256: str | None = None

    def describe(self) -> dict[str, Any]:
        """The request as JSON-ready values (inputs by checksum), for the sidecar."""
        return {
            "prompt": self.prompt,
            "mode": self.mode,
            "seed": self.seed,
            "steps": self.steps,
            "num_frames": self.num_frames,
            "height": self.height,
            "width": self.width,
            "scale_text": self.scale_text,
            "scale_image": self.scale_image,
            "scale_audio": self.scale_audio,
            "negative_prompt": self.negative_prompt,
            "reference_image_sha256": self.image_sha256,
            "audio_sha256": self.audio_sha256,
        }


# =====================================================================================================================
# Field readers
# =====================================================================================================================


def _is_missing(value: Any) -> bool:
    """None, NaN or pandas' NA: how a DataFrame row says "not given"."""
    if value is None:
        return True
    if isinstance(value, (str, bytes)):
        return False
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):  # arrays and other containers are values, not gaps
        return False


def _as_int(record: Mapping[str, Any], name: str, default: int, low: int, high: int) -> int:
    value = record.get(name)
    if _is_missing(value):
        value = default
    if isinstance(value, bool) or not isinstance(value, (int, np.integer, float, np.floating)):
        raise InvalidRequestError(name, f"must be an integer, got {value!r:.60}")
    if float(value) != int(value):
        raise InvalidRequestError(name, f"must be a whole number, got {value!r}")
    value = int(value)
    if not low <= value <= high:
        raise InvalidRequestError(name, f"{value} is out of range; allowed {low}..{high}")
    return value


def _as_float(record: Mapping[str, Any], name: str, default: float, low: float, high: float) -> float:
    value = record.get(name)
    if _is_missing(value):
        value = default
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise InvalidRequestError(name, f"must be a number, got {value!r:.60}")
    value = float(value)
    if not math.isfinite(value) or not low <= value <= high:
        raise InvalidRequestError(name, f"{value} is out of range; allowed {low}..{high}")
    return value


def _as_text(record: Mapping[str, Any], name: str) -> str | None:
    value = record.get(name)
    if _is_missing(value):
        return None
    if not isinstance(value, str):
        raise InvalidRequestError(name, f"must be a string, got {type(value).__name__}")
    return value


def _decode_base64(name: str, text: str, max_bytes: int) -> bytes:
    # base64 grows data by 4/3: refuse an oversized field before decoding it
    if len(text) > (max_bytes * 4) // 3 + 4:
        raise InvalidRequestError(name, f"too large: about {len(text) * 3 // 4} bytes, the limit is {max_bytes}")
    try:
        data = base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError) as err:
        raise InvalidRequestError(name, f"is not valid base64 ({err}); send the file bytes base64-encoded") from None
    if not data:
        raise InvalidRequestError(name, "is empty; send the file bytes base64-encoded, or leave the field out")
    if len(data) > max_bytes:
        raise InvalidRequestError(name, f"too large: {len(data)} bytes, the limit is {max_bytes}")
    return data


def decode_image(text: str, max_bytes: int, max_side: int) -> tuple[np.ndarray, str]:
    """Base64 image file -> ``(H, W, 3)`` uint8 RGB and its sha256.

    Raises:
        InvalidRequestError: (field ``reference_image``) bad base64, too many bytes, not an image, too many pixels.
    """
    from PIL import Image, UnidentifiedImageError

    data = _decode_base64("reference_image", text, max_bytes)
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            if max(width, height) > max_side:
                raise InvalidRequestError(
                    "reference_image", f"too large: {width}x{height} pixels, the limit is {max_side} per side"
                )
            array = np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as err:
        raise InvalidRequestError("reference_image", f"is not a readable image file (PNG or JPEG): {err}") from None
    return array, hashlib.sha256(data).hexdigest()


def decode_audio(text: str, max_bytes: int, max_frames: int) -> tuple[np.ndarray, str]:
    """Base64 audio file -> ``(S,)`` float32 mono at 16 kHz and its sha256.

    Raises:
        InvalidRequestError: (field ``audio``) bad base64, too many bytes, not decodable, empty, or longer than
            ``max_frames`` video frames.
    """
    from humo.data.media import MediaError, read_audio

    data = _decode_base64("audio", text, max_bytes)
    # librosa/soundfile read from a path; the file lives only while it is decoded
    with tempfile.TemporaryDirectory(prefix="humo-request-") as folder:
        path = Path(folder) / "audio"
        path.write_bytes(data)
        try:
            audio = read_audio(path, AUDIO_SAMPLE_RATE)
        except (MediaError, ValueError, RuntimeError, EOFError) as err:
            raise InvalidRequestError("audio", f"is not a readable audio file (WAV, FLAC, OGG or MP3): {err}") from None
    if audio.size < SAMPLES_PER_VIDEO_FRAME:
        raise InvalidRequestError("audio", f"is too short: {audio.size} samples at 16 kHz, at least one frame (40 ms)")
    if not np.all(np.isfinite(audio)):
        raise InvalidRequestError("audio", "holds NaN or infinite samples; the file is damaged")
    frames = audio.size // SAMPLES_PER_VIDEO_FRAME
    if frames > max_frames:
        seconds = audio.size / AUDIO_SAMPLE_RATE
        raise InvalidRequestError(
            "audio",
            f"too long: {seconds:.2f} s is {frames} frames at 25 fps, the limit is {max_frames} frames "
            f"({max_frames * SAMPLES_PER_VIDEO_FRAME / AUDIO_SAMPLE_RATE:.2f} s); cut it or split the request",
        )
    return audio.astype(np.float32, copy=False), hashlib.sha256(data).hexdigest()


# =====================================================================================================================
# The request
# =====================================================================================================================


def payload_bytes(record: Mapping[str, Any]) -> int:
    """Size of a request's text fields in bytes (what ``max_payload_bytes`` limits)."""
    return sum(len(value.encode("utf-8")) for value in record.values() if isinstance(value, str))


def parse_request(record: Mapping[str, Any], limits: RequestLimitsConfig, defaults: GenerateConfig) -> GenerationRequest:
    """Validate and decode one request record.

    Args:
        record: field -> value (a DataFrame row as a dict, or a JSON object).
        limits: ``registry.limits``: sizes, frames, steps, scales and modes a request may ask for.
        defaults: ``generate``: seed, steps, size and guidance scales used for fields left out.

    Returns:
        A :class:`GenerationRequest`.

    Raises:
        InvalidRequestError: the first bad field (unknown field, missing prompt, bad base64, too large, unknown or
            disallowed mode, a mode that needs an input given none, out-of-range numbers).
    """
    unknown = sorted(str(key) for key in record if key not in REQUEST_FIELDS)
    if unknown:
        raise InvalidRequestError(unknown[0], f"unknown field; allowed fields: {', '.join(REQUEST_FIELDS)}")
    size = payload_bytes(record)
    if size > limits.max_payload_bytes:
        raise InvalidRequestError("request", f"too large: {size} bytes, the limit is {limits.max_payload_bytes}")

    prompt = _as_text(record, "prompt")
    if prompt is None or not prompt.strip():
        raise InvalidRequestError("prompt", "missing or empty; describe the video in a sentence")
    if len(prompt) > limits.max_prompt_chars:
        raise InvalidRequestError("prompt", f"too long: {len(prompt)} characters, the limit is {limits.max_prompt_chars}")
    negative_prompt = _as_text(record, "negative_prompt")
    if negative_prompt is not None and len(negative_prompt) > limits.max_prompt_chars:
        raise InvalidRequestError("negative_prompt", f"too long: the limit is {limits.max_prompt_chars} characters")

    image_text, audio_text = _as_text(record, "reference_image"), _as_text(record, "audio")
    mode = _as_text(record, "mode")
    if mode is None:
        mode = "T" + ("I" if image_text is not None else "") + ("A" if audio_text is not None else "")
    mode = mode.strip().upper()
    if mode not in ("T", "TI", "TA", "TIA"):
        raise InvalidRequestError("mode", f"unknown mode {mode!r}; use one of T, TI, TA, TIA")
    if mode not in limits.allowed_modes:
        raise InvalidRequestError("mode", f"mode {mode!r} is not served here; allowed: {', '.join(limits.allowed_modes)}")
    if "I" in mode and image_text is None:
        raise InvalidRequestError("reference_image", f"mode {mode!r} needs a reference image (base64 PNG or JPEG)")
    if "A" in mode and audio_text is None:
        raise InvalidRequestError("audio", f"mode {mode!r} needs audio (base64 WAV, FLAC, OGG or MP3)")

    num_frames = record.get("num_frames")
    if not _is_missing(num_frames):
        num_frames = _as_int(record, "num_frames", 0, 1, limits.max_frames)
        if (num_frames - 1) % VAE_TEMPORAL_STRIDE:
            raise InvalidRequestError("num_frames", f"{num_frames} must be of the form 4k+1 (e.g. 33)")
    else:
        num_frames = None
    sizes = {}
    for name, default in (("height", defaults.height), ("width", defaults.width)):
        value = _as_int(record, name, default, SIZE_MULTIPLE, limits.max_video_side)
        if value % SIZE_MULTIPLE:
            raise InvalidRequestError(name, f"{value} must be a multiple of {SIZE_MULTIPLE}")
        sizes[name] = value
    guidance = defaults.guidance
    scales = {
        name: _as_float(record, name, getattr(guidance, name), 0.0, limits.max_guidance_scale)
        for name in ("scale_text", "scale_image", "scale_audio")
    }
    seed = _as_int(record, "seed", defaults.seed, 0, MAX_SEED)
    steps = _as_int(record, "steps", min(defaults.steps, limits.max_steps), 1, limits.max_steps)

    # decode the files last: the cheap checks above fail first
    image = image_sha = audio = audio_sha = None
    if "I" in mode:
        image, image_sha = decode_image(image_text, limits.max_image_bytes, limits.max_image_side)
    if "A" in mode:
        audio, audio_sha = decode_audio(audio_text, limits.max_audio_bytes, limits.max_frames)
    return GenerationRequest(
        prompt=prompt,
        mode=mode,
        image=image,
        audio=audio,
        seed=seed,
        steps=steps,
        num_frames=num_frames,
        negative_prompt=negative_prompt,
        image_sha256=image_sha,
        audio_sha256=audio_sha,
        **sizes,
        **scales,
    )
