"""Serving requests: one record (a DataFrame row or a dict) -> a checked request of the generation core
(:class:`~humo.inference.generate.GenerationRequest`).

A request carries the prompt, the mode, an optional reference image and audio as base64 file bytes (PNG/JPEG;
WAV/FLAC/OGG/MP3 at any sample rate, resampled to 16 kHz mono), the seed, the steps and guidance scales. This module
keeps only the wire format (DataFrame gaps, base64, byte limits); the files are read and the request is checked by
:mod:`humo.inference.generate` with the same limits (``params.limits``) as batch inference, before any model runs.
Every failure is an :class:`InvalidRequestError` that names the wire field; the pyfunc turns it into MLflow's
``INVALID_PARAMETER_VALUE`` (HTTP 400) so the server answers and stays up.

Request fields (all but ``prompt`` optional; a missing value, None or NaN means "use the default")::

    prompt            str   what happens in the video (the caption)
    mode              str   T, TI, TA or TIA; default: inferred from the image and audio given
    reference_image   str   base64 of an image file
    audio             str   base64 of an audio file; it decides the length (25 fps frames, rounded to 4k+1; longer
                            than limits.max_frames: cut, with a note in the sidecar)
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
from collections.abc import Mapping
from typing import Any

import pandas as pd

from humo.config import GenerateConfig, RequestLimitsConfig
from humo.inference.generate import (
    GenerationPlan,
    GenerationRequest,
    InvalidRequestError,
    plan_request,
    read_audio_input,
    read_image,
)
from humo.models.presets import HumoDiTConfig

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
    "speed": "string",
}
"""Every field a request may carry, with its MLflow column type (the model signature is built from this)."""
RESPONSE_FIELDS: dict[str, str] = {"video": "string", "sidecar": "string"}
"""``video``: base64 of the mp4 (H.264 + AAC audio); ``sidecar``: JSON text describing the generation."""
WIRE_NAMES = {"image": "reference_image"}
"""Request fields whose wire name differs (errors name the field the client sent)."""

__all__ = ["REQUEST_FIELDS", "RESPONSE_FIELDS", "InvalidRequestError", "parse_request", "payload_bytes"]


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


def _plain(value: Any) -> Any:
    """numpy scalars -> Python ones; whole floats stay floats (pydantic refuses 3.5 for an int, accepts 3.0)."""
    return value.item() if hasattr(value, "item") and not isinstance(value, (str, bytes)) else value


def _decode_base64(name: str, text: Any, max_bytes: int) -> bytes:
    if not isinstance(text, str):
        raise InvalidRequestError(name, f"must be base64 text, got {type(text).__name__}")
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


def payload_bytes(record: Mapping[str, Any]) -> int:
    """Size of a request's text fields in bytes (what ``max_payload_bytes`` limits)."""
    return sum(len(value.encode("utf-8")) for value in record.values() if isinstance(value, str))


def parse_request(
    record: Mapping[str, Any], limits: RequestLimitsConfig, settings: GenerateConfig, model: HumoDiTConfig
) -> tuple[GenerationRequest, GenerationPlan]:
    """Decode one request record and check it (:func:`humo.inference.generate.plan_request`).

    Args:
        record: field -> value (a DataFrame row as a dict, or a JSON object).
        limits: ``params.limits``.
        settings: the ``generate`` section the model was registered with (defaults of fields left out).
        model: the loaded transformer's config (guidance ``auto`` follows it).

    Returns:
        ``(request, plan)``.

    Raises:
        InvalidRequestError: the first bad field, by its wire name.
    """
    unknown = sorted(str(key) for key in record if key not in REQUEST_FIELDS)
    if unknown:
        raise InvalidRequestError(unknown[0], f"unknown field; allowed fields: {', '.join(REQUEST_FIELDS)}")
    size = payload_bytes(record)
    if size > limits.max_payload_bytes:
        raise InvalidRequestError("request", f"too large: {size} bytes, the limit is {limits.max_payload_bytes}")
    fields = {key: _plain(value) for key, value in record.items() if not _is_missing(value)}
    image_text, audio_text = fields.pop("reference_image", None), fields.pop("audio", None)
    try:
        GenerationRequest.from_fields(fields)  # the cheap checks fail before any file is decoded
        inputs: dict[str, str] = {}
        if image_text is not None:
            data = _decode_base64("reference_image", image_text, limits.max_image_bytes)
            fields["image"], inputs["image"] = read_image(data, limits), hashlib.sha256(data).hexdigest()
        if audio_text is not None:
            data = _decode_base64("audio", audio_text, limits.max_audio_bytes)
            fields["audio"], inputs["audio"] = read_audio_input(data), hashlib.sha256(data).hexdigest()
        request = GenerationRequest.from_fields({**fields, "inputs": inputs})
        return request, plan_request(request, settings, limits, model)
    except InvalidRequestError as err:
        raise err.renamed(WIRE_NAMES) from None
