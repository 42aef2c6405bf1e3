"""The generation core: guidance that follows the model, the checks of a plan, and one model under threads."""

from __future__ import annotations

import concurrent.futures

import numpy as np
import pytest

from humo.config import GenerateConfig, GuidanceConfig, LongVideoConfig, RequestLimitsConfig
from humo.diffusion.guidance import UPSTREAM_SCALES
from humo.inference.generate import (
    GenerationRequest,
    InvalidRequestError,
    generate,
    plan_request,
    resolve_guidance,
)
from humo.models.presets import get_preset

SETTINGS = GenerateConfig(steps=2, height=32, width=32, max_frames=9, progress_bar=False)
LIMITS = RequestLimitsConfig()


@pytest.mark.parametrize(
    ("preset", "form", "scales"),
    [
        ("humo-1.7b", "humo-1.7b", (7.0, 4.0, 7.5)),
        ("humo-17b", "humo-17b", (5.0, 4.0, 5.5)),
        ("tiny", "humo-17b", (5.0, 4.0, 5.5)),  # what the tiny model is trained and evaluated with
    ],
)
def test_auto_guidance_takes_the_loaded_models_upstream_form_and_scales(preset, form, scales) -> None:
    schedule, record = resolve_guidance(GuidanceConfig(), "TIA", get_preset(preset))
    assert record["configured_form"] == "auto" and record["form"] == form
    assert (record["scale_text"], record["scale_image"], record["scale_audio"]) == scales
    # the 1.7B form guides image on top of audio (TIA -> TA -> T), the 17B form keeps the image in its negatives
    expected = ["TIA", "TA", "T", "∅"] if form == "humo-1.7b" else ["TIA", "TI", "I", "∅"]
    assert schedule.describe()["chain"] == expected


def test_upstream_scales_differ_between_the_two_released_models() -> None:
    assert UPSTREAM_SCALES["humo-1.7b"]["audio"] != UPSTREAM_SCALES["humo-17b"]["audio"]


def test_explicit_forms_config_scales_and_request_scales_win_in_that_order() -> None:
    cfg = GuidanceConfig(form="humo-1.7b", scale_audio=6.0)
    _, record = resolve_guidance(cfg, "TIA", get_preset("tiny"))
    assert record["form"] == "humo-1.7b" and record["scale_audio"] == 6.0 and record["scale_text"] == 7.0
    request = GenerationRequest(prompt="x", scale_audio=3.5)
    _, record = resolve_guidance(cfg, "TIA", get_preset("tiny"), request)
    assert record["scale_audio"] == 3.5


def test_a_tiny_width_file_with_1_7b_depth_is_not_taken_for_the_1_7b_model() -> None:
    cfg = get_preset("humo-1.7b").model_copy(update={"text_dim": 384})
    _, record = resolve_guidance(GuidanceConfig(), "TIA", cfg)
    assert record["form"] == "humo-17b"  # not the 1.7B form: only a full architecture match counts


def _audio(seconds: float) -> np.ndarray:
    return (0.2 * np.sin(np.arange(int(seconds * 16_000)) / 7)).astype(np.float32)


def test_plan_fills_defaults_and_chooses_long_videos_only_when_enabled() -> None:
    tiny = get_preset("tiny")
    request = GenerationRequest(prompt="x", audio=_audio(2.0))
    plan = plan_request(request, SETTINGS, LIMITS, tiny)
    assert (plan.mode, plan.seed, plan.steps, plan.height, plan.window_frames) == ("TA", 666666, 2, 32, 9)
    assert not plan.long_video
    long_settings = SETTINGS.model_copy(update={"long_video": LongVideoConfig(enabled=True, overlap_latent_frames=1)})
    assert plan_request(request, long_settings, LIMITS, tiny).long_video


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"audio": _audio(0.1)}, "audio"),  # 2.5 frames: would be a still image
        ({"audio": np.full(8000, np.inf, dtype=np.float32)}, "audio"),
        ({"mode": "TI"}, "image"),
        ({"height": 2048}, "height"),
        ({"steps": 51}, "steps"),
        ({"seed": 2**63}, "seed"),
        ({"scale_text": 21.0}, "scale_text"),
        ({"num_frames": 13}, "num_frames"),  # 4k+1, but over the 9-frame window
        ({"image": np.zeros((5000, 10, 3), np.uint8), "mode": "TI"}, "image"),
    ],
)
def test_plan_refuses_with_the_field_named(fields, field) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        plan_request(GenerationRequest(prompt="x", **fields), SETTINGS, LIMITS, get_preset("tiny"))
    assert caught.value.field == field


def test_one_pipeline_under_threads_gives_the_videos_it_gives_one_by_one(pipeline, speech, tmp_path) -> None:
    """Concurrent callers of one loaded model (a served model's threads) get the bytes of sequential calls."""
    requests = [GenerationRequest(prompt="a man talks", audio=speech, seed=seed) for seed in range(1, 5)]

    def run(args: tuple[int, GenerationRequest], folder: str) -> bytes:
        index, request = args
        path = tmp_path / folder / f"{index}.mp4"
        path.parent.mkdir(exist_ok=True)
        return generate(pipeline, request, SETTINGS, LIMITS, video_path=path).output.path.read_bytes()

    sequential = [run(item, "sequential") for item in enumerate(requests)]
    with concurrent.futures.ThreadPoolExecutor(len(requests)) as pool:
        together = list(pool.map(lambda item: run(item, "together"), enumerate(requests)))
    assert together == sequential and len(set(sequential)) == len(requests)


def test_a_video_path_goes_with_an_mp4_only(pipeline, tmp_path) -> None:
    request = GenerationRequest(prompt="a man talks", mode="T")
    with pytest.raises(ValueError, match="only an mp4 is written"):
        generate(pipeline, request, SETTINGS, LIMITS, output_type="np", video_path=tmp_path / "x.mp4")
    with pytest.raises(ValueError, match="an mp4 needs a video_path"):
        generate(pipeline, request, SETTINGS, LIMITS, output_type="mp4")
