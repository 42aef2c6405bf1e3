"""Fewer forwards per video: step caching and guidance truncation through the one generate() path."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from humo.config import GenerateConfig, GuidanceConfig, RequestLimitsConfig, SpeedPresetConfig, StepCacheConfig, TruncateConfig
from humo.diffusion.guidance import build_guidance
from humo.diffusion.step_cache import CacheCalibration, CachePolicy
from humo.inference.calibrate import calibrate
from humo.inference.generate import GenerationRequest, InvalidRequestError, generate
from humo.inference.long_video import generate_long

STEPS = 10
LIMITS = RequestLimitsConfig()


def settings(tmp_path=None, **update) -> GenerateConfig:
    base = GenerateConfig(steps=STEPS, height=32, width=32, max_frames=9, progress_bar=False)
    if tmp_path is not None:
        update.setdefault("cache_calibration", tmp_path / "calibration.json")
    return base.model_copy(update=update)


def make_request(speech, portrait, mode="TIA", **fields) -> GenerationRequest:
    return GenerationRequest(
        prompt="a man talks", mode=mode, image=portrait if "I" in mode else None,
        audio=speech if "A" in mode else None, seed=3, num_frames=9, **fields,
    )


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    """Speech-like audio (syllable bursts, 1.2 s at 16 kHz): these tests need no real media."""
    t = np.arange(19_200) / 16_000
    envelope = np.clip(np.sin(2 * np.pi * 3 * t), 0, None)
    return (0.3 * envelope * np.sin(2 * np.pi * 180 * t)).astype(np.float32)


@pytest.fixture(scope="module")
def portrait() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 255, (72, 60, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def fitted(pipeline, speech, portrait) -> CacheCalibration:
    """A calibration of the test pipeline's DiT on TIA and TA runs (every branch of both chains)."""
    runs = [make_request(speech, portrait, mode) for mode in ("TIA", "TA")]
    return calibrate(pipeline, runs, settings(), LIMITS, "test-dit", progress=False)


def test_calibration_covers_every_branch_and_fits(fitted, tmp_path):
    assert set(fitted.branches) == {"TIA", "TI", "I", "∅", "TA", "T"}
    assert fitted.steps == STEPS and fitted.requests == 2
    tia = fitted.branch("TIA")
    assert len(tia.log_ratios) == STEPS and tia.samples == STEPS - 1
    assert np.all(np.isfinite(tia.poly)) and np.isfinite(fitted.fitted["TIA"])
    assert CacheCalibration.load(fitted.save(tmp_path / "c.json")) == fitted


@pytest.mark.parametrize("fixture", ["pipeline", "channel_pipeline"])
def test_a_cache_that_never_reuses_is_bit_identical(fixture, request, fitted, speech, portrait):
    pipe = request.getfixturevalue(fixture)
    guidance = build_guidance("humo-17b", "TIA", 5.0, 4.0, 5.5)
    kwargs = dict(image=portrait, audio=speech, num_frames=9, height=32, width=32, num_inference_steps=STEPS,
                  guidance=guidance, output_type="latent")
    plain = pipe("a man talks", generator=torch.Generator().manual_seed(0), **kwargs)
    never = CachePolicy("magcache", 1e-12, fitted)
    assert pipe.step_plan(guidance, STEPS, never).forwards == plain.dit_forwards == 3 * STEPS
    cached = pipe("a man talks", generator=torch.Generator().manual_seed(0), cache=never, **kwargs)
    assert torch.equal(cached.frames, plain.frames)  # returning residuals changed no bit


def test_a_reused_residual_at_the_same_input_reproduces_the_forward(pipeline):
    model = pipeline.transformer
    cfg = model.humo_config
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 16, 3, 4, 4, generator=g)
    text = torch.randn(2, 8, cfg.text_dim, generator=g)
    t = torch.tensor([700.0, 300.0])
    with torch.no_grad():
        full = model(x, t, encoder_hidden_states=text, num_ref_frames=1, return_residual=True)
        again = model(x, t, encoder_hidden_states=text, num_ref_frames=1, block_residual=full.block_residual)
        assert not full.block_residual.abs().max() == 0
        with pytest.raises(ValueError, match="block_residual"):
            model(x, t, encoder_hidden_states=text, num_ref_frames=1, block_residual=full.block_residual[:, :3])
    assert torch.allclose(again.sample, full.sample, atol=1e-5)


def test_a_cached_preset_follows_its_plan_and_the_sidecar_records_it(pipeline, fitted, speech, portrait, tmp_path):
    fitted.save(tmp_path / "calibration.json")
    fast = SpeedPresetConfig(cache=StepCacheConfig(criterion="teacache", threshold=0.5, max_skips=2))
    cfg = settings(tmp_path, speed_presets={"fast": fast})
    exact = generate(pipeline, make_request(speech, portrait), cfg, LIMITS, output_type="latent")
    assert exact.output.dit_forwards == 3 * STEPS and "speed" not in exact.record["settings"]
    assert "step_plan" not in exact.record
    quick = generate(pipeline, make_request(speech, portrait, speed="fast"), cfg, LIMITS, output_type="latent")
    plan = quick.record["step_plan"]
    assert quick.output.dit_forwards == plan["dit_forwards"] == quick.record["output"]["dit_forwards"]
    assert plan["full_forwards"] == 3 * STEPS > plan["dit_forwards"]
    assert quick.record["settings"]["speed"]["cache"]["criterion"] == "teacache"
    assert sum(map(len, plan["reused_steps"].values())) == plan["full_forwards"] - plan["dit_forwards"]
    error = (quick.output.frames - exact.output.frames).abs().max() / exact.output.frames.abs().max()
    assert 0 < float(error) < 1.0


def test_truncation_cuts_forwards_and_speed_off_restores_the_exact_run(pipeline, speech, portrait):
    late = TruncateConfig(from_step=6, drop=("I", "∅"))
    cfg = settings(guidance=GuidanceConfig(truncate=late))
    truncated = generate(pipeline, make_request(speech, portrait), cfg, LIMITS, output_type="latent")
    assert truncated.output.dit_forwards == 3 * STEPS - (STEPS - 6)  # one branch fewer from step 6 on
    assert truncated.record["guidance_schedule"]["truncation"]["drop"] == ["I", "∅"]
    off = generate(pipeline, make_request(speech, portrait, speed="off"), cfg, LIMITS, output_type="latent")
    plain = generate(pipeline, make_request(speech, portrait), settings(), LIMITS, output_type="latent")
    assert torch.equal(off.output.frames, plain.output.frames)
    assert not torch.equal(truncated.output.frames, plain.output.frames)


def test_bad_speed_choices_are_refused_naming_the_field(pipeline, speech, portrait, tmp_path):
    cfg = settings(tmp_path, speed_presets={"fast": SpeedPresetConfig(cache=StepCacheConfig(criterion="magcache"))})
    with pytest.raises(InvalidRequestError, match="unknown speed 'warp'") as err:
        generate(pipeline, make_request(speech, portrait, speed="warp"), cfg, LIMITS, output_type="latent")
    assert err.value.field == "speed"
    with pytest.raises(InvalidRequestError, match="calibrate-cache") as err:  # no calibration file written
        generate(pipeline, make_request(speech, portrait, speed="fast"), cfg, LIMITS, output_type="latent")
    assert err.value.field == "speed"
    # the configured default without a calibration runs exact, and says so
    default = settings(tmp_path, cache=StepCacheConfig(criterion="magcache"))
    result = generate(pipeline, make_request(speech, portrait, steps=2), default, LIMITS, output_type="latent")
    assert result.plan.cache is None and any("step cache off" in note for note in result.notes)
    early = settings(guidance=GuidanceConfig(truncate=TruncateConfig(from_step=1)))  # step 1 of 50: t = 995
    with pytest.raises(InvalidRequestError, match="before the guidance switch at 980"):
        generate(pipeline, make_request(speech, portrait, steps=50), early, LIMITS, output_type="latent")


def test_speed_presets_may_not_take_builtin_names():
    with pytest.raises(ValueError, match="built in"):
        GenerateConfig(speed_presets={"off": SpeedPresetConfig()})


def test_long_videos_plan_the_cache_per_window(pipeline, fitted, speech, portrait):
    guidance = build_guidance("humo-17b", "TIA", 5.0, 4.0, 5.5)
    policy = CachePolicy("teacache", 0.5, fitted, max_skips=2)
    kwargs = dict(image=portrait, height=32, width=32, num_inference_steps=STEPS, guidance=guidance,
                  window_frames=9, overlap_latent_frames=1, output_type="latent", progress=False, seam_strength=0.0)
    full, _ = generate_long(pipeline, "a man talks", speech, generator=torch.Generator().manual_seed(0), **kwargs)
    cached, seams = generate_long(
        pipeline, "a man talks", speech, generator=torch.Generator().manual_seed(0), cache=policy, **kwargs
    )
    windows = len(seams) + 1
    assert windows > 1
    per_window = pipeline.step_plan(guidance, STEPS, policy).forwards
    assert cached.dit_forwards == windows * per_window < full.dit_forwards == windows * 3 * STEPS
