"""HumoTransformer3D: presets, shapes in both reference modes, frame-local audio, zero-init, context reuse, errors."""

from __future__ import annotations

import math

import pytest
import torch

from humo.constants import AUDIO_TOKENS_PER_FRAME, AUDIO_WINDOW_ROWS, LATENT_CHANNELS
from humo.models.presets import PRESETS, HumoDiTConfig, get_preset
from humo.models.transformer import (
    HumoTransformer3D,
    apply_rope,
    rope_axis_dims,
    rope_frequencies,
    sinusoidal_embedding,
)

BATCH, FRAMES, HEIGHT, WIDTH, TEXT_TOKENS = 2, 4, 4, 6, 5


def small_config(**overrides: object) -> HumoDiTConfig:
    """The real tiny preset, shrunk (2 layers) so each test runs in well under a second."""
    return get_preset("tiny", **{"num_layers": 2, "dim": 64, "num_heads": 2, "ffn_dim": 128, **overrides})


def randomize_(model: torch.nn.Module, keep_audio_output_zero: bool = False, seed: int = 0) -> torch.nn.Module:
    """Give every parameter a non-trivial random value (init zeroes the head), optionally keeping audio ``o`` at 0."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if keep_audio_output_zero and "audio_cross_attn.o." in name:
                continue
            noise = torch.randn(param.shape, generator=generator)
            param.copy_(1 + 0.1 * noise if "norm" in name else noise / math.sqrt(max(param.shape[-1], 1)))
    return model.eval()


def inputs(cfg: HumoDiTConfig, frames: int = FRAMES, seed: int = 1) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        "hidden_states": torch.randn(BATCH, cfg.out_channels, frames, HEIGHT, WIDTH, generator=generator),
        "timestep": torch.tensor([999.0, 321.0]),
        "encoder_hidden_states": torch.randn(BATCH, TEXT_TOKENS, cfg.text_dim, generator=generator),
        "audio_features": torch.randn(
            BATCH, frames, cfg.audio_window, cfg.audio_groups, cfg.audio_channels, generator=generator
        ),
    }


# ---------------------------------------------------------------------------------------------------------------------
# presets
# ---------------------------------------------------------------------------------------------------------------------


def test_presets_are_valid_and_unknown_names_are_listed() -> None:
    assert set(PRESETS) == {"tiny", "humo-1.7b", "humo-17b"}
    assert PRESETS["humo-17b"].in_channels == 2 * LATENT_CHANNELS + 4  # 16 noisy + 4 mask + 16 condition
    assert PRESETS["humo-17b"].reference_mode == "channel"
    assert PRESETS["tiny"].head_dim == 32 and rope_axis_dims(32) == (12, 10, 10)
    with pytest.raises(ValueError, match="known presets.*humo-1.7b"):
        get_preset("humo-3b")
    with pytest.raises(ValueError, match="num_layer"):
        get_preset("tiny", num_layer=2)
    with pytest.raises(ValueError, match="not divisible by num_heads"):
        get_preset("tiny", num_heads=3)
    with pytest.raises(ValueError, match="in_channels"):
        get_preset("tiny", reference_mode="channel")


@pytest.mark.parametrize(
    ("name", "expected", "tolerance"),
    [("humo-1.7b", 1.7416e9, 1e-4), ("humo-17b", 17.056e9, 1e-4)],
)
def test_released_presets_have_the_reference_parameter_counts(name: str, expected: float, tolerance: float) -> None:
    """humo-reference.md 1.1 derives 1.7416 B and 17.056 B from the released files; built on meta (no memory)."""
    with torch.device("meta"):
        model = HumoTransformer3D.from_preset(name)
    count = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("mask_predictor."))
    assert abs(count / expected - 1) < tolerance
    audio_proj = sum(p.numel() for p in model.audio_proj.parameters())
    assert abs(audio_proj / 39.1e6 - 1) < 2e-3  # "audio_proj 39.1 M"


# ---------------------------------------------------------------------------------------------------------------------
# helpers: sinusoid, RoPE
# ---------------------------------------------------------------------------------------------------------------------


def test_sinusoidal_embedding_is_float64_cos_then_sin() -> None:
    t = torch.tensor([0.0, 999.0])
    emb = sinusoidal_embedding(t, 8)
    assert emb.dtype == torch.float64 and emb.shape == (2, 8)
    freqs = torch.tensor([10_000.0 ** (-i / 4) for i in range(4)], dtype=torch.float64)
    torch.testing.assert_close(emb[1, :4], torch.cos(999.0 * freqs), rtol=0, atol=1e-12)
    torch.testing.assert_close(emb[1, 4:], torch.sin(999.0 * freqs), rtol=0, atol=1e-12)
    assert torch.equal(emb[0], torch.tensor([1.0] * 4 + [0.0] * 4, dtype=torch.float64))


@pytest.mark.parametrize("head_dim", [12, 24, 32, 128])
def test_rope_split_matches_wan_complex_split(head_dim: int) -> None:
    """Wan splits the c = d/2 complex channels as c - 2(c//3), c//3, c//3; our real split must agree."""
    c = head_dim // 2
    assert tuple(d // 2 for d in rope_axis_dims(head_dim)) == (c - 2 * (c // 3), c // 3, c // 3)
    assert sum(rope_axis_dims(head_dim)) == head_dim


def test_rope_equals_complex_rotation_and_reference_frames_continue_time() -> None:
    head_dim, grid = 24, (3, 2, 4)
    cos, sin = rope_frequencies(head_dim, grid, theta=10_000.0)
    x = torch.randn(2, math.prod(grid), 2, head_dim)
    rotated = apply_rope(x, cos, sin)
    # upstream's formulation: multiply complex pairs by exp(i * angle)
    complex_x = torch.view_as_complex(x.reshape(*x.shape[:-1], -1, 2))
    expected = torch.view_as_real(complex_x * torch.polar(torch.ones_like(cos), torch.atan2(sin, cos))).flatten(-2)
    torch.testing.assert_close(rotated, expected, rtol=1e-5, atol=1e-5)
    # angles of token (f, h, w): the time group rotates by f * inv_freq -> a reference frame appended at index F
    # gets position F; the first F frames of a longer grid equal the shorter grid's table.
    longer_cos, _ = rope_frequencies(head_dim, (grid[0] + 1, *grid[1:]), theta=10_000.0)
    assert torch.equal(longer_cos[: math.prod(grid)], cos)
    t_pairs = rope_axis_dims(head_dim)[0] // 2
    last_frame = longer_cos.reshape(grid[0] + 1, *grid[1:], -1)[grid[0], 0, 0, :t_pairs]
    inv_freq = 10_000.0 ** (-torch.arange(0, 2 * t_pairs, 2, dtype=torch.float64) / (2 * t_pairs))
    torch.testing.assert_close(last_frame, torch.cos(grid[0] * inv_freq).float())


# ---------------------------------------------------------------------------------------------------------------------
# forward: shapes, reference modes, mask, context reuse, batching
# ---------------------------------------------------------------------------------------------------------------------


def test_temporal_mode_shapes_and_video_part() -> None:
    cfg = small_config()
    model = randomize_(HumoTransformer3D.from_preset(cfg))
    with torch.no_grad():
        out = model(**inputs(cfg), num_ref_frames=1, return_mask=True)
    assert out.sample.shape == (BATCH, LATENT_CHANNELS, FRAMES, HEIGHT, WIDTH)
    assert out.video.shape == (BATCH, LATENT_CHANNELS, FRAMES - 1, HEIGHT, WIDTH)
    assert torch.equal(out.video, out.sample[:, :, :-1])
    assert out.mask_logits.shape == (BATCH, FRAMES - 1, HEIGHT, WIDTH)
    assert torch.isfinite(out.sample).all() and torch.isfinite(out.mask_logits).all()


def test_channel_mode_takes_mask_and_condition_channels() -> None:
    cfg = small_config(in_channels=36, reference_mode="channel")
    model = randomize_(HumoTransformer3D.from_preset(cfg))
    condition = torch.randn(BATCH, cfg.condition_channels, FRAMES, HEIGHT, WIDTH)
    with torch.no_grad():
        out = model(**inputs(cfg), condition=condition, num_ref_frames=1)
        other = model(**inputs(cfg), condition=condition.flip(1), num_ref_frames=1)
    assert cfg.condition_channels == 20
    assert out.sample.shape == (BATCH, LATENT_CHANNELS, FRAMES, HEIGHT, WIDTH) and out.mask_logits is None
    assert not torch.allclose(out.sample, other.sample)  # the condition channels are read


def test_mask_is_only_computed_when_asked_and_does_not_change_the_sample() -> None:
    cfg = small_config()
    model = randomize_(HumoTransformer3D.from_preset(cfg))
    batch = inputs(cfg)
    with torch.no_grad():
        plain = model(**batch, num_ref_frames=1)
        masked = model(**batch, num_ref_frames=1, return_mask=True)
    assert plain.mask_logits is None
    assert torch.equal(plain.sample, masked.sample)


def test_mask_loss_reaches_the_backbone() -> None:
    """Focus-by-predicting is a soft regulariser: its gradient must flow into the audio attention of late blocks."""
    model = randomize_(HumoTransformer3D.from_preset(small_config())).train()
    out = model(**inputs(model.humo_config), num_ref_frames=1, return_mask=True)
    out.mask_logits.sigmoid().mean().backward()
    late_audio = model.blocks[-1].audio_cross_attn_wrapper.audio_cross_attn.q.weight.grad
    assert late_audio is not None and late_audio.abs().sum() > 0
    assert model.head.head.weight.grad is None  # the sample head is not involved


def test_batched_forward_equals_per_sample_forward() -> None:
    cfg = small_config()
    model = randomize_(HumoTransformer3D.from_preset(cfg))
    batch = inputs(cfg)
    with torch.no_grad():
        together = model(**batch, num_ref_frames=1).sample
        alone = [model(**{k: v[i : i + 1] for k, v in batch.items()}, num_ref_frames=1).sample for i in range(BATCH)]
    torch.testing.assert_close(together, torch.cat(alone), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cache_kv", [False, True])
def test_prepared_context_gives_the_same_output(cache_kv: bool) -> None:
    cfg = small_config()
    model = randomize_(HumoTransformer3D.from_preset(cfg))
    batch = inputs(cfg)
    with torch.no_grad():
        direct = model(**batch, num_ref_frames=1).sample
        context = model.prepare_context(batch["encoder_hidden_states"], batch["audio_features"], FRAMES, cache_kv)
        reused = model(batch["hidden_states"], batch["timestep"], num_ref_frames=1, context=context).sample
    assert (context.text_kv is not None) == cache_kv
    torch.testing.assert_close(reused, direct, rtol=1e-6, atol=1e-6)


def test_save_and_load_pretrained_round_trip(tmp_path) -> None:
    model = randomize_(HumoTransformer3D.from_preset(small_config()))
    model.save_pretrained(tmp_path)
    loaded = HumoTransformer3D.from_pretrained(tmp_path)
    assert loaded.humo_config == model.humo_config
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))


# ---------------------------------------------------------------------------------------------------------------------
# audio: frame-local, zero-init, null audio through the projection
# ---------------------------------------------------------------------------------------------------------------------


def test_audio_of_one_frame_only_changes_that_frame() -> None:
    """With self-attention silenced (its output projection zeroed), every other path is per token or per frame, so
    changing the audio of latent frame 2 must change frame 2's output and nothing else. That covers the audio
    projection (per frame) and the frame-local attention (batched over frames)."""
    cfg = small_config()
    model = randomize_(HumoTransformer3D.from_preset(cfg))
    with torch.no_grad():
        for block in model.blocks:
            block.self_attn.o.weight.zero_()
            block.self_attn.o.bias.zero_()
    batch = inputs(cfg)
    changed = dict(batch, audio_features=batch["audio_features"].clone())
    changed["audio_features"][:, 2] += torch.randn_like(changed["audio_features"][:, 2])
    with torch.no_grad():
        before = model(**batch).sample
        after = model(**changed).sample
    difference = (after - before).abs().amax(dim=(0, 1, 3, 4))  # per latent frame
    assert difference[2] > 1e-3
    assert torch.equal(difference[[0, 1, 3]], torch.zeros(3))


def test_audio_tokens_per_frame_and_frame_local_shapes() -> None:
    cfg = small_config()
    model = HumoTransformer3D.from_preset(cfg)
    context = model.prepare_context(torch.zeros(1, 3, cfg.text_dim), None, num_frames=FRAMES, cache_kv=True)
    assert context.audio.shape == (1, FRAMES, AUDIO_TOKENS_PER_FRAME, cfg.audio_context_dim)
    k, v = context.audio_kv[0]
    assert k.shape == (FRAMES, cfg.num_heads, AUDIO_TOKENS_PER_FRAME, cfg.head_dim) == v.shape
    assert cfg.audio_window == AUDIO_WINDOW_ROWS


def test_audio_path_is_exactly_silent_at_init() -> None:
    """Zero-init: with every other weight random, real audio and null audio give bit-identical outputs."""
    cfg = small_config()
    model = HumoTransformer3D.from_preset(cfg)
    for block in model.blocks:
        assert not block.audio_cross_attn_wrapper.audio_cross_attn.o.weight.any()
    randomize_(model, keep_audio_output_zero=True)
    batch = inputs(cfg)
    with torch.no_grad():
        with_audio = model(**batch, num_ref_frames=1).sample
        null_audio = model(**dict(batch, audio_features=None), num_ref_frames=1).sample
        randomize_(model)  # now the audio path is live
        live = model(**batch, num_ref_frames=1).sample
        live_null = model(**dict(batch, audio_features=None), num_ref_frames=1).sample
    assert torch.equal(with_audio, null_audio)
    assert not torch.allclose(live, live_null)


def test_null_audio_goes_through_the_projection() -> None:
    model = randomize_(HumoTransformer3D.from_preset(small_config()))
    cfg = model.humo_config
    text = torch.zeros(1, 3, cfg.text_dim)
    with torch.no_grad():
        null = model.prepare_context(text, None, num_frames=2).audio
        zeros = torch.zeros(1, 2, cfg.audio_window, cfg.audio_groups, cfg.audio_channels)
        explicit = model.prepare_context(text, zeros).audio
    assert torch.equal(null, explicit) and null.abs().sum() > 0  # biases + LayerNorm: non-zero constant tokens


# ---------------------------------------------------------------------------------------------------------------------
# gradient checkpointing
# ---------------------------------------------------------------------------------------------------------------------


def test_gradient_checkpointing_gives_the_same_loss_and_gradients() -> None:
    cfg = small_config()
    batch = inputs(cfg)
    results = []
    for checkpointing in (False, True):
        model = randomize_(HumoTransformer3D.from_preset(cfg)).train()
        if checkpointing:
            model.enable_gradient_checkpointing()
        out = model(**batch, num_ref_frames=1, return_mask=True)
        loss = out.video.square().mean() + out.mask_logits.sigmoid().mean()
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (loss_a, grads_a), (loss_b, grads_b) = results
    torch.testing.assert_close(loss_a, loss_b, rtol=0, atol=1e-6)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=1e-5, atol=1e-6, msg=name)


# ---------------------------------------------------------------------------------------------------------------------
# bad input: clear errors naming shapes, never a silent broadcast
# ---------------------------------------------------------------------------------------------------------------------


def _bad_inputs() -> list[tuple[str, dict[str, object], str]]:
    return [
        ("channels", {"hidden_states": torch.zeros(BATCH, 17, FRAMES, HEIGHT, WIDTH)}, r"\(2, 17, 4, 4, 6\).*16"),
        ("odd height", {"hidden_states": torch.zeros(BATCH, 16, FRAMES, 5, WIDTH)}, "5x6 is not divisible"),
        ("audio frames", {"audio_features": torch.zeros(BATCH, FRAMES - 1, 8, 1, 80)}, "3 latent frames.*has 4"),
        ("audio window", {"audio_features": torch.zeros(BATCH, FRAMES, 5, 1, 80)}, r"\(2, 4, 5, 1, 80\).*8, 1, 80"),
        ("audio groups", {"audio_features": torch.zeros(BATCH, FRAMES, 8, 5, 80)}, "8, 1, 80"),
        ("audio batch", {"audio_features": torch.zeros(1, FRAMES, 8, 1, 80)}, "batch 1 != text batch 2"),
        ("text width", {"encoder_hidden_states": torch.zeros(BATCH, 3, 4096)}, r"\(2, 3, 4096\).*384"),
        ("text length", {"encoder_hidden_states": torch.zeros(BATCH, 65, 384)}, "65 tokens.*text_len=64"),
        ("timestep", {"timestep": torch.tensor(5.0)}, r"timestep has shape \(\); expected \(2,\)"),
        ("condition", {"condition": torch.zeros(BATCH, 20, FRAMES, HEIGHT, WIDTH)}, "reference_mode is 'temporal'"),
        ("refs", {"num_ref_frames": FRAMES}, "num_ref_frames=4 must be in"),
    ]


@pytest.mark.parametrize(("case", "change", "message"), _bad_inputs(), ids=[c[0] for c in _bad_inputs()])
def test_bad_inputs_raise_value_errors_naming_shapes(case: str, change: dict[str, object], message: str) -> None:
    model = HumoTransformer3D.from_preset(small_config(num_layers=1))
    with pytest.raises(ValueError, match=message):
        model(**{**inputs(model.humo_config), **change})


def test_channel_mode_errors() -> None:
    cfg = small_config(num_layers=1, in_channels=36, reference_mode="channel")
    model = HumoTransformer3D.from_preset(cfg)
    with pytest.raises(ValueError, match="needs condition"):
        model(**inputs(cfg), num_ref_frames=1)
    with pytest.raises(ValueError, match=r"condition has shape \(2, 16, 4, 4, 6\); expected \[2, 20, 4, 4, 6\]"):
        model(**inputs(cfg), condition=torch.zeros(BATCH, 16, FRAMES, HEIGHT, WIDTH), num_ref_frames=1)
    no_mask = HumoTransformer3D.from_preset(small_config(num_layers=1, mask_predictor_blocks=0))
    with pytest.raises(ValueError, match="mask_predictor_blocks=0"):
        no_mask(**inputs(no_mask.humo_config), return_mask=True)
    with pytest.raises(ValueError, match="either context or"):
        context = model.prepare_context(torch.zeros(BATCH, 3, cfg.text_dim), None, num_frames=FRAMES)
        batch = inputs(cfg)
        model(**batch, condition=torch.zeros(BATCH, 20, FRAMES, HEIGHT, WIDTH), context=context)
