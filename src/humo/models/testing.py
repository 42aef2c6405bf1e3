"""Random but non-trivial DiT weights, and the released files' key list at a tiny width, for tests and benchmarks.

The model's own initialisation zeroes the output head and every audio output projection (so plain Wan weights
reproduce Wan), which makes every guidance branch and every audio input give the same output; a check run on
such a model cannot fail. :func:`randomize_` gives every parameter a value instead.
"""

from __future__ import annotations

import math

import torch

from humo.models.presets import HumoDiTConfig, get_preset


def randomize_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """In place: norms near 1 (``1 + 0.1 N(0, 1)``), everything else ``N(0, 1) / sqrt(fan_in)``; returns it in eval mode."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            param.copy_(1 + 0.1 * noise if "norm" in name else noise / math.sqrt(max(param.shape[-1], 1)))
    return model.eval()


# Widths of the tiny released-layout files the loader and export tests write (every dimension distinct, small)
DIM, FFN_DIM, TEXT_W, WINDOW, GROUPS, CHANNELS, INNER, CONTEXT, TOKENS, BLOCKS = 24, 40, 8, 8, 5, 4, 8, 12, 16, 2


def upstream_layout(in_dim: int) -> dict[str, tuple[int, ...]]:
    """Every tensor name and shape of a released HuMo DiT file, per the reference table, at a tiny width."""
    layout: dict[str, tuple[int, ...]] = {}

    def linear(name: str, out_features: int, in_features: int) -> None:
        layout[f"{name}.weight"] = (out_features, in_features)
        layout[f"{name}.bias"] = (out_features,)

    layout["patch_embedding.weight"] = (DIM, in_dim, 1, 2, 2)
    layout["patch_embedding.bias"] = (DIM,)
    linear("text_embedding.0", DIM, TEXT_W)
    linear("text_embedding.2", DIM, DIM)
    linear("time_embedding.0", DIM, 256)
    linear("time_embedding.2", DIM, DIM)
    linear("time_projection.1", 6 * DIM, DIM)
    for i in range(BLOCKS):
        block = f"blocks.{i}"
        layout[f"{block}.modulation"] = (1, 6, DIM)
        for attention in ("self_attn", "cross_attn"):
            for projection in "qkvo":
                linear(f"{block}.{attention}.{projection}", DIM, DIM)
            layout[f"{block}.{attention}.norm_q.weight"] = (DIM,)
            layout[f"{block}.{attention}.norm_k.weight"] = (DIM,)
        layout[f"{block}.norm3.weight"] = layout[f"{block}.norm3.bias"] = (DIM,)
        linear(f"{block}.ffn.0", FFN_DIM, DIM)
        linear(f"{block}.ffn.2", DIM, FFN_DIM)
        audio = f"{block}.audio_cross_attn_wrapper"
        linear(f"{audio}.audio_cross_attn.q", DIM, DIM)
        linear(f"{audio}.audio_cross_attn.k", DIM, CONTEXT)
        linear(f"{audio}.audio_cross_attn.v", DIM, CONTEXT)
        linear(f"{audio}.audio_cross_attn.o", DIM, DIM)
        layout[f"{audio}.audio_cross_attn.norm_q.weight"] = (DIM,)
        layout[f"{audio}.audio_cross_attn.norm_k.weight"] = (DIM,)
        layout[f"{audio}.norm1_audio.weight"] = layout[f"{audio}.norm1_audio.bias"] = (DIM,)
    linear("head.head", 16 * math.prod((1, 2, 2)), DIM)
    layout["head.modulation"] = (1, 2, DIM)
    linear("audio_proj.audio_proj_glob_1.layer", INNER, WINDOW * GROUPS * CHANNELS)
    linear("audio_proj.audio_proj_glob_2.layer", INNER, INNER)
    linear("audio_proj.audio_proj_glob_3.layer", TOKENS * CONTEXT, INNER)
    layout["audio_proj.audio_proj_glob_norm.layer.weight"] = (CONTEXT,)
    layout["audio_proj.audio_proj_glob_norm.layer.bias"] = (CONTEXT,)
    return layout


UPSTREAM_TEST_OVERRIDES: dict[str, int] = dict(
    dim=DIM,
    ffn_dim=FFN_DIM,
    num_heads=2,
    num_layers=BLOCKS,
    text_dim=TEXT_W,
    audio_channels=CHANNELS,
    audio_inner_dim=INNER,
    audio_context_dim=CONTEXT,
)
"""``model.overrides`` that shrink a released preset to the widths of :func:`upstream_layout`."""


def upstream_layout_config(preset: str) -> HumoDiTConfig:
    """``preset`` at the tiny width of :func:`upstream_layout` (its layout: 1.7B temporal or 17B channel)."""
    return get_preset(preset, **UPSTREAM_TEST_OVERRIDES)
