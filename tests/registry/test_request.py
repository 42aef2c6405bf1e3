"""Request validation: every bad field is refused with a message that names it, before any model runs."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from humo.config import Params
from humo.models.presets import get_preset
from humo.registry.pyfunc import example_audio_base64
from humo.registry.request import InvalidRequestError, parse_request

TINY = get_preset("tiny")


def _png_base64(height: int, width: int) -> str:
    image = Image.fromarray(np.full((height, width, 3), 200, dtype=np.uint8))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _file_base64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def _parse(record: dict, params: Params):
    return parse_request(record, params.limits, params.generate, TINY)


def test_valid_request_decodes_inputs_and_fills_defaults(registry_params: Params) -> None:
    request, plan = _parse(
        {"prompt": "A person talks.", "audio": example_audio_base64(9), "reference_image": _png_base64(40, 24)},
        registry_params,
    )
    assert plan.mode == "TIA"  # inferred from the inputs given
    assert request.image.shape == (40, 24, 3) and request.image.dtype == np.uint8
    assert request.audio.dtype == np.float32 and abs(request.audio.size - 9 * 640) <= 640
    assert plan.seed == registry_params.generate.seed
    assert plan.steps == min(registry_params.generate.steps, registry_params.limits.max_steps)
    assert plan.guidance_record["scale_audio"] == 5.5  # guidance auto: the 17B form's upstream scale for tiny
    assert len(request.inputs["audio"]) == 64 and len(request.inputs["image"]) == 64


def test_nan_fields_mean_defaults(registry_params: Params) -> None:
    """A DataFrame row with missing optional columns carries NaN / None: they are defaults, not errors."""
    request, plan = _parse({"prompt": "A person talks.", "mode": "T", "seed": float("nan"), "audio": None},
                           registry_params)
    assert plan.seed == registry_params.generate.seed and request.audio is None


@pytest.mark.parametrize(
    ("record", "field", "fragment"),
    [
        ({"mode": "T"}, "prompt", "Field required"),
        ({"prompt": "   ", "mode": "T"}, "prompt", "is empty"),
        ({"prompt": "x", "mode": "XYZ"}, "mode", "Input should be"),
        ({"prompt": "x", "mode": "TA"}, "audio", "needs audio"),
        ({"prompt": "x", "mode": "TI"}, "reference_image", "needs a reference image"),
        ({"prompt": "x", "mode": "TA", "audio": "not base64!!"}, "audio", "not valid base64"),
        ({"prompt": "x", "mode": "TA", "audio": base64.b64encode(b"garbage" * 20).decode()}, "audio", "not a readable"),
        ({"prompt": "x", "mode": "TI", "reference_image": base64.b64encode(b"nope" * 9).decode()}, "reference_image", "not a readable"),
        ({"prompt": "x", "mode": "T", "steps": 0}, "steps", "greater than or equal to 1"),
        ({"prompt": "x", "mode": "T", "steps": 5}, "steps", "out of range"),
        ({"prompt": "x", "mode": "T", "steps": 1.5}, "steps", "fractional part"),
        ({"prompt": "x", "mode": "T", "seed": -1}, "seed", "greater than or equal to 0"),
        ({"prompt": "x", "mode": "T", "num_frames": 10}, "num_frames", "4k+1"),
        ({"prompt": "x", "mode": "T", "num_frames": 21}, "num_frames", "out of range"),
        ({"prompt": "x", "mode": "T", "height": 50}, "height", "multiple of 16"),
        ({"prompt": "x", "mode": "T", "width": 4096}, "width", "between 16 and"),
        ({"prompt": "x", "mode": "T", "scale_audio": 100.0}, "scale_audio", "out of range"),
        ({"prompt": "x", "mode": "T", "scale_text": "high"}, "scale_text", "valid number"),
        ({"prompt": "x", "mode": "T", "colour": "red"}, "colour", "unknown field"),
        ({"prompt": "x", "mode": "T", "speed": "warp"}, "speed", "unknown speed 'warp'"),
    ],
)
def test_bad_fields_are_named(registry_params: Params, record: dict, field: str, fragment: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        _parse(record, registry_params)
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{field}: ") and fragment in str(caught.value)


def test_a_speed_preset_is_a_request_field(registry_params: Params, tmp_path: Path) -> None:
    """Serving clients pick a speed preset per request; a preset whose calibration is missing is a 400 naming speed."""
    settings = registry_params.generate.model_copy(update={"cache_calibration": tmp_path / "none.json"})
    _, plan = parse_request({"prompt": "x", "mode": "T", "speed": "trunc-late"}, registry_params.limits, settings, TINY)
    assert plan.speed.name == "trunc-late" and plan.cache is None
    with pytest.raises(InvalidRequestError, match="calibrate-cache") as caught:
        parse_request({"prompt": "x", "mode": "T", "speed": "mag-fast"}, registry_params.limits, settings, TINY)
    assert caught.value.field == "speed"


def test_disallowed_mode_is_refused(params_path: Path) -> None:
    from humo.config import load_params

    params = load_params(params_path, ["limits.allowed_modes=[TA, TIA]"])
    with pytest.raises(InvalidRequestError, match="mode: mode 'T' is not served here"):
        parse_request({"prompt": "x", "mode": "T"}, params.limits, params.generate, TINY)


def test_real_files_too_large_or_too_long(registry_params: Params, real_data: Path) -> None:
    """The real reference photo is over the (test) byte limit; the real speech, longer than one window, is accepted
    and will be cut to the window (with a note), as in batch inference: the same limits everywhere."""
    with pytest.raises(InvalidRequestError, match=r"reference_image: too large: about \d+ bytes, the limit is 100000"):
        _parse({"prompt": "x", "mode": "TI", "reference_image": _file_base64(real_data / "humo_man_Jaime.png")}, registry_params)
    _, plan = _parse({"prompt": "x", "mode": "TA", "audio": _file_base64(real_data / "humo_audio1.wav")}, registry_params)
    assert plan.window_frames == 17 and not plan.long_video


def test_image_side_and_payload_limits(params_path: Path) -> None:
    from humo.config import load_params

    params = load_params(params_path, ["limits.max_image_side=32", "limits.max_payload_bytes=2048"])
    with pytest.raises(InvalidRequestError, match=r"reference_image: too large: 40x24 pixels"):
        parse_request({"prompt": "x", "reference_image": _png_base64(24, 40)}, params.limits, params.generate, TINY)
    with pytest.raises(InvalidRequestError, match=r"request: too large"):
        parse_request({"prompt": "x" * 3000}, params.limits, params.generate, TINY)
