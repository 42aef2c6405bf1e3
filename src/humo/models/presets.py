"""Named sizes of the HuMo DiT: a preset is data (one validated config object), never code.

``tiny`` is the embedded CPU default (design.md section 2); ``humo-1.7b`` and ``humo-17b`` have the dimensions
of the released checkpoints (humo-reference.md section 1.1): Wan2.1 1.3B T2V and Wan2.1 14B I2V backbones with an
audio cross-attention in every block.

    cfg = get_preset("tiny", num_layers=2)
    model = HumoTransformer3D.from_preset(cfg)      # humo.models.transformer
"""

from __future__ import annotations

import difflib
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from humo.constants import (
    AUDIO_TOKENS_PER_FRAME,
    AUDIO_WINDOW_ROWS,
    LATENT_CHANNELS,
    TEXT_CONTEXT_LEN,
    VAE_TEMPORAL_STRIDE,
)

ROPE_AXES = 3
"""RoPE rotates (frame, height, width) positions; the head dim is split over these three axes."""
ROPE_SPLIT_DIVISOR = 2 * ROPE_AXES
"""Height and width each get ``2 * (head_dim // 6)`` real dims, time the rest (Wan2.1's split)."""


class HumoDiTConfig(BaseModel):
    """Hyper-parameters of :class:`humo.models.transformer.HumoTransformer3D` (its ``__init__`` arguments).

    Shapes of the released weights follow from these fields (humo-reference.md section 1.7).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    in_channels: int = Field(LATENT_CHANNELS, ge=1)
    """Channels into the patch embedding: 16 (temporal reference) or 36 = 16 + 4 mask + 16 condition (channel)."""
    out_channels: int = Field(LATENT_CHANNELS, ge=1)
    """Latent channels predicted (the VAE's z_dim)."""
    dim: int = Field(ge=1)
    """Hidden width D of the transformer."""
    ffn_dim: int = Field(ge=1)
    """Inner width of the GELU-tanh feed-forward."""
    num_heads: int = Field(ge=1)
    num_layers: int = Field(ge=1)
    patch_size: tuple[int, int, int] = (1, 2, 2)
    """Patch (t, h, w) of the 3-D patch embedding; t must be 1 (audio tokens are per latent frame)."""
    text_dim: int = Field(ge=1)
    """Width of the text encoder's token states (4096 umT5-XXL, 384 all-MiniLM-L6-v2)."""
    text_len: int = Field(TEXT_CONTEXT_LEN, ge=1)
    """Text tokens seen by the DiT; shorter inputs are zero-padded to this length as upstream does."""
    freq_dim: int = Field(256, ge=2)
    """Size of the sinusoidal timestep embedding."""
    eps: float = Field(1e-6, gt=0)
    """Epsilon of every LayerNorm / RMSNorm."""
    rope_theta: float = Field(10_000.0, gt=1)
    audio_groups: int = Field(ge=1)
    """Feature groups per audio row (5 Whisper layer groups; 1 for log-mel)."""
    audio_channels: int = Field(ge=1)
    """Channels per group (1280 Whisper-large-v3; the number of mel bins for log-mel)."""
    audio_window: int = Field(AUDIO_WINDOW_ROWS, ge=1)
    """Audio rows (25 fps) in the window of one latent frame."""
    audio_tokens: int = Field(AUDIO_TOKENS_PER_FRAME, ge=1)
    """Context tokens the audio projection makes per latent frame."""
    audio_inner_dim: int = Field(ge=1)
    """Hidden width of the audio projection MLP (512 upstream)."""
    audio_context_dim: int = Field(ge=1)
    """Width of one audio context token (1536 upstream, independent of ``dim``)."""
    mask_predictor_blocks: int = Field(4, ge=0)
    """Last blocks read by the focus-by-predicting mask head (paper: 4); every block when the model has fewer
    (so ``num_layers=2`` overrides stay valid); 0 builds no mask head."""
    reference_mode: Literal["temporal", "channel"] = "temporal"
    """How the reference image enters: appended latent frames seen by self-attention only (1.7B), or in
    addition the I2V condition channels (17B)."""

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def mask_blocks(self) -> int:
        """Blocks the mask predictor actually reads: ``min(mask_predictor_blocks, num_layers)``."""
        return min(self.mask_predictor_blocks, self.num_layers)

    @property
    def condition_channels(self) -> int:
        """Channels of the ``condition`` input: 0 (temporal) or 4 mask + 16 latent (channel)."""
        return self.in_channels - self.out_channels

    @model_validator(mode="after")
    def _check(self) -> HumoDiTConfig:
        if self.dim % self.num_heads:
            raise ValueError(f"dim={self.dim} is not divisible by num_heads={self.num_heads}; pick a multiple")
        head_dim = self.dim // self.num_heads
        if head_dim % 2 or head_dim // ROPE_SPLIT_DIVISOR == 0:
            raise ValueError(
                f"head_dim = dim / num_heads = {head_dim} must be even and at least {ROPE_SPLIT_DIVISOR} "
                "so 3-D RoPE can split it over (frames, height, width)"
            )
        if self.patch_size[0] != 1:
            raise ValueError(
                f"patch_size={self.patch_size}: the time patch must be 1 because audio tokens are per latent frame"
            )
        mask_channels = VAE_TEMPORAL_STRIDE  # one mask channel per pixel frame of a latent frame (Wan I2V)
        if self.reference_mode == "temporal" and self.in_channels != self.out_channels:
            raise ValueError(
                f"reference_mode='temporal' needs in_channels == out_channels, got {self.in_channels} and "
                f"{self.out_channels}; use reference_mode='channel' for the I2V layout"
            )
        if self.reference_mode == "channel" and self.in_channels != 2 * self.out_channels + mask_channels:
            raise ValueError(
                f"reference_mode='channel' needs in_channels = out_channels + {mask_channels} mask + out_channels "
                f"condition = {2 * self.out_channels + mask_channels}, got in_channels={self.in_channels}"
            )
        return self


PRESETS: dict[str, HumoDiTConfig] = {
    # The embedded default: trains on a CPU in minutes. head_dim 32 -> RoPE split 12/10/10. Text: the 384-d token
    # states of all-MiniLM-L6-v2 (64 tokens); audio: one group of 80 log-mel bins per 25 fps row.
    "tiny": HumoDiTConfig(
        dim=128,
        ffn_dim=512,
        num_heads=4,
        num_layers=4,
        text_dim=384,
        text_len=64,
        audio_groups=1,
        audio_channels=80,
        audio_inner_dim=128,
        audio_context_dim=128,
    ),
    # Wan2.1 T2V 1.3B backbone + audio (HuMo-1.7B/ema.pth); Whisper-large-v3 features in 5 layer groups.
    "humo-1.7b": HumoDiTConfig(
        dim=1536,
        ffn_dim=8960,
        num_heads=12,
        num_layers=30,
        text_dim=4096,
        audio_groups=5,
        audio_channels=1280,
        audio_inner_dim=512,
        audio_context_dim=1536,
    ),
    # Wan2.1 I2V 14B backbone without the CLIP branch + audio (HuMo-17B shards); reference through the condition
    # channels (4 mask + 16 latent).
    "humo-17b": HumoDiTConfig(
        in_channels=2 * LATENT_CHANNELS + VAE_TEMPORAL_STRIDE,
        dim=5120,
        ffn_dim=13824,
        num_heads=40,
        num_layers=40,
        text_dim=4096,
        audio_groups=5,
        audio_channels=1280,
        audio_inner_dim=512,
        audio_context_dim=1536,
        reference_mode="channel",
    ),
}


def get_preset(name: str, **overrides: Any) -> HumoDiTConfig:
    """The preset called ``name`` with some fields replaced (and the result validated again).

    Args:
        name: one of :data:`PRESETS` (``tiny``, ``humo-1.7b``, ``humo-17b``).
        **overrides: field values to change, e.g. ``num_layers=2``.

    Raises:
        ValueError: unknown preset name, unknown field, or an invalid combination of values.
    """
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; known presets: {sorted(PRESETS)}")
    unknown = sorted(set(overrides) - set(HumoDiTConfig.model_fields))
    if unknown:
        hints = {key: difflib.get_close_matches(key, HumoDiTConfig.model_fields, n=1) for key in unknown}
        raise ValueError(
            f"unknown override(s) {unknown} for preset {name!r} (did you mean {hints}?); "
            f"fields: {sorted(HumoDiTConfig.model_fields)}"
        )
    if not overrides:
        return PRESETS[name]
    return HumoDiTConfig.model_validate({**PRESETS[name].model_dump(), **overrides})


ARCHITECTURE_FIELDS = ("dim", "num_layers", "num_heads", "in_channels", "text_dim", "audio_groups", "audio_channels")
"""The fields that tell the released models apart (and that a weights file lets one read back)."""


def matching_preset(cfg: HumoDiTConfig) -> str | None:
    """The preset whose architecture fields all equal ``cfg``'s (``humo-17b``, ``humo-1.7b``, ``tiny``), or None.

    Overrides that leave the architecture alone (text length, RoPE, norms) still match; anything else is None.
    """
    for name, preset in PRESETS.items():
        if all(getattr(preset, key) == getattr(cfg, key) for key in ARCHITECTURE_FIELDS):
            return name
    return None
