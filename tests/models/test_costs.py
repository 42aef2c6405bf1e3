"""The cost model against the model itself: parameter counts, FLOPs, weight bytes and activation peaks measured here."""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from humo.models.costs import (
    Levers,
    LiveTensorPeak,
    Workload,
    activation_bytes,
    parameter_count,
    step_flops,
    weight_bytes,
)
from humo.models.memory import store_fp8
from humo.models.presets import get_preset
from humo.models.transformer import HumoTransformer3D

CONFIGS = {
    "tiny": ({"num_layers": 2}, Workload(64, 64, 17)),
    "mid": ({"dim": 512, "num_layers": 8, "num_heads": 8, "ffn_dim": 2048}, Workload(128, 128, 33)),
}


def _setup(name: str):
    overrides, work = CONFIGS[name]
    cfg = get_preset("tiny", **overrides)
    model = HumoTransformer3D.from_preset(cfg).eval()
    frames, side = work.latent_frames(), work.height // 8
    latents = torch.randn(work.branches, 16, frames, side, side)
    audio = torch.randn(work.branches, frames, cfg.audio_window, cfg.audio_groups, cfg.audio_channels)
    with torch.no_grad():
        context = model.prepare_context(torch.randn(work.branches, 8, cfg.text_dim), audio, frames, cache_kv=True)
    return cfg, work, model, latents, context


@pytest.mark.parametrize("preset", ["tiny", "humo-1.7b", "humo-17b"])
def test_parameter_counts_are_exact(preset) -> None:
    cfg = get_preset(preset)
    with torch.device("meta"):
        model = HumoTransformer3D.from_preset(cfg)
    assert parameter_count(cfg).total == sum(param.numel() for param in model.parameters())


@pytest.mark.parametrize("name", list(CONFIGS))
def test_step_flops_equal_the_counted_flops(name) -> None:
    cfg, work, model, latents, context = _setup(name)
    timestep = torch.full((work.branches,), 500.0)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(latents, timestep, num_ref_frames=1, context=context)  # the math backend's matmuls are counted
    assert counter.get_total_flops() == step_flops(cfg, work)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_weight_bytes_native_and_fp8_equal_the_models(name) -> None:
    cfg, _, model, _, _ = _setup(name)
    native = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    assert weight_bytes(cfg, Levers(compute_dtype="float32")) == native
    store_fp8(model)
    fp8 = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    assert weight_bytes(cfg, Levers(weight_storage="fp8", compute_dtype="float32")) == fp8


@pytest.mark.parametrize("name", list(CONFIGS))
def test_activation_peak_is_within_a_quarter_of_the_measured(name) -> None:
    cfg, work, model, latents, context = _setup(name)
    cache = sum(t.numel() * t.element_size() for kv in (context.text_kv, context.audio_kv) for pair in kv for t in pair)
    tracker = LiveTensorPeak()
    with torch.no_grad(), tracker:
        model(latents, torch.full((work.branches,), 500.0), num_ref_frames=1, context=context)
    measured = tracker.peak + cache
    estimate = activation_bytes(cfg, work, Levers(compute_dtype="float32"))
    assert 0.75 < measured / estimate < 1.25, (measured, estimate)
