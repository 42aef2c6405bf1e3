"""The HuMo diffusion transformer: a Wan2.1 DiT with reference frames, frame-local audio attention and a face mask head.

References:
    - HuMo: Human-Centric Video Generation via Collaborative Multi-Modal Conditioning, arXiv 2509.08519
      (https://arxiv.org/abs/2509.08519).
    - Upstream inference code: https://github.com/Phantom-video/HuMo (``humo/models/wan_modules/model_humo.py``,
      ``humo/models/audio/audio_proj.py``); the backbone is Wan2.1 (https://github.com/Wan-Video/Wan2.1).
    - Our notes on both: ``humo-reference.md`` sections 1.1 and 1.4-1.7 (cited below as "ref 1.x").

How each condition reaches the network (one scalar timestep per sample; every token gets the same modulation):

- **Text**: token states ``[B, L, text_dim]`` are zero-padded to ``text_len`` and embedded by an MLP; every block
  attends to them (cross-attention after an affine LayerNorm, no gate).
- **Reference image** (ref 1.5): its VAE latent is appended as the last ``num_ref_frames`` latent frames of
  ``hidden_states``; RoPE positions continue the time axis, so the model sees it through self-attention. In the
  ``channel`` mode (17B) a ``condition`` input (4 mask + 16 latent channels) is concatenated on the channel axis as
  in Wan I2V. The caller drops the reference frames of the output (``HumoTransformerOutput.video``).
- **Audio** (ref 1.4): a window of audio rows per latent frame is projected to 16 context tokens by
  :class:`AudioProjection`; in every block, after the text cross-attention, the tokens of latent frame ``f`` attend
  only to the 16 tokens of frame ``f``. No gate and no modulation; the output projection starts at zero, so plain
  Wan weights give exactly Wan's output. "No audio" is all-zero features *through* the projection.
- **Focus-by-predicting** (paper section 3.4, not in the release): :class:`MaskPredictor` reads the hidden states
  after the audio cross-attention of the last blocks and predicts a face mask on the latent grid (training only).

File order: pure helpers -> norms -> attention -> audio projection -> block -> head and mask predictor -> model.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from humo.constants import VAE_SPATIAL_STRIDE
from humo.models.parallel import SequenceParallel, SequenceShard
from humo.models.presets import ROPE_SPLIT_DIVISOR, HumoDiTConfig, get_preset

logger = logging.getLogger(__name__)

SINUSOID_BASE = 10_000.0
"""Base of the sinusoidal timestep embedding (Wan2.1)."""
MODULATION_CHUNKS = 6
"""shift, scale, gate for self-attention and for the FFN."""
HEAD_MODULATION_CHUNKS = 2
"""shift and scale of the output head."""
AUDIO_PROJ_NORM_EPS = 1e-5
"""Upstream's audio projection ends in a default ``nn.LayerNorm`` (eps 1e-5), not the model's eps."""
EMBEDDING_INIT_STD = 0.02
"""Init std of the text and time MLPs (Wan2.1 ``init_weights``)."""


# =====================================================================================================================
# Pure helpers: timestep embedding, 3-D RoPE, (un)patchify
# =====================================================================================================================


def sinusoidal_embedding(timestep: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of (integer-valued) timesteps, computed in float64 and ordered cos then sin (Wan2.1).

    Args:
        timestep: ``[B]`` timesteps in ``[0, 1000)``; any real dtype.
        dim: embedding size (even).

    Returns:
        ``[B, dim]`` float64.
    """
    half = dim // 2
    exponents = torch.arange(half, dtype=torch.float64, device=timestep.device) / half
    angles = timestep.to(torch.float64)[:, None] * SINUSOID_BASE ** (-exponents)[None, :]  # [B, half]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)


def rope_axis_dims(head_dim: int) -> tuple[int, int, int]:
    """Real dims of a head given to (frame, height, width) rotations: ``d - 4(d//6), 2(d//6), 2(d//6)``.

    For head_dim 128 this is 44 / 42 / 42 (ref 1.1); it equals diffusers' ``WanRotaryPosEmbed`` split.
    """
    spatial = 2 * (head_dim // ROPE_SPLIT_DIVISOR)
    return head_dim - 2 * spatial, spatial, spatial


def rope_frequencies(
    head_dim: int, grid: tuple[int, int, int], theta: float, device: torch.device | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the 3-D rotary angles of every token of an ``(F, H, W)`` token grid, batched.

    Token ``(f, h, w)`` rotates its three groups of channel pairs by ``f``, ``h`` and ``w`` times the group's
    frequencies. Reference frames sit at the end of the grid, so their time positions continue after the last
    video frame (ref 1.1). Angles are formed in float64 (as Wan2.1 and diffusers do) and returned in float32.

    Args:
        head_dim: channels per head (even).
        grid: token grid ``(F, H, W)`` after patching.
        theta: RoPE base.
        device: where to build the tables.

    Returns:
        ``(cos, sin)``, each ``[F*H*W, 1, head_dim // 2]`` float32, broadcastable against ``[B, S, heads, d/2]``.
    """
    angles = []
    for axis, (size, axis_dim) in enumerate(zip(grid, rope_axis_dims(head_dim), strict=True)):
        inv_freq = theta ** (-torch.arange(0, axis_dim, 2, dtype=torch.float64, device=device) / axis_dim)
        axis_angles = torch.arange(size, dtype=torch.float64, device=device)[:, None] * inv_freq  # [size, dim/2]
        view = [1, 1, 1, axis_dim // 2]
        view[axis] = size
        angles.append(axis_angles.view(view).expand(*grid, axis_dim // 2))
    table = torch.cat(angles, dim=-1).reshape(math.prod(grid), 1, head_dim // 2)  # [S, 1, d/2]
    return table.cos().float(), table.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent channel pairs ``(x[2i], x[2i+1])`` of every head by the token's angles (in float32).

    Args:
        x: ``[B, S, heads, head_dim]``.
        cos, sin: ``[S, 1, head_dim // 2]`` from :func:`rope_frequencies`.

    Returns:
        ``[B, S, heads, head_dim]`` in the dtype of ``x``.
    """
    real, imag = x.float().unflatten(-1, (-1, 2)).unbind(-1)  # each [B, S, heads, d/2]
    rotated = torch.stack((real * cos - imag * sin, real * sin + imag * cos), dim=-1)
    return rotated.flatten(-2).type_as(x)


def unpatchify(
    tokens: torch.Tensor, grid: tuple[int, int, int], patch_size: tuple[int, int, int], channels: int
) -> torch.Tensor:
    """Fold per-token patches back into a latent video.

    Args:
        tokens: ``[B, F*H*W, p_t*p_h*p_w*channels]``, channels fastest (as the Wan head writes them).
        grid: token grid ``(F, H, W)``.
        patch_size: ``(p_t, p_h, p_w)``.
        channels: output channels.

    Returns:
        ``[B, channels, F*p_t, H*p_h, W*p_w]``.
    """
    frames, height, width = grid
    p_t, p_h, p_w = patch_size
    x = tokens.reshape(tokens.shape[0], frames, height, width, p_t, p_h, p_w, channels)
    x = x.permute(0, 7, 1, 4, 2, 5, 3, 6)  # [B, C, F, p_t, H, p_h, W, p_w]
    return x.reshape(tokens.shape[0], channels, frames * p_t, height * p_h, width * p_w)


# =====================================================================================================================
# Norms (computed in float32, as upstream's WanRMSNorm / WanLayerNorm)
# =====================================================================================================================


class RMSNorm(nn.Module):
    """RMS norm over the last axis in float32, then a learned per-channel scale (q/k norm of every attention)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps).type_as(x) * self.weight


class FP32LayerNorm(nn.LayerNorm):
    """LayerNorm evaluated in float32 whatever the input dtype; the result is cast back."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight.float() if self.weight is not None else None
        bias = self.bias.float() if self.bias is not None else None
        return F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps).type_as(x)


# =====================================================================================================================
# Attention: self (RoPE), text cross, frame-local audio cross
# =====================================================================================================================


class Attention(nn.Module):
    """q/k/v/o projections with RMS-normalised queries and keys (Wan2.1); subclasses decide what attends to what.

    Args:
        dim: model width D (queries and output).
        num_heads: heads; head_dim = D / num_heads.
        eps: RMSNorm epsilon.
        context_dim: width of the keys' and values' source (default D).
    """

    def __init__(self, dim: int, num_heads: int, eps: float, context_dim: int | None = None) -> None:
        super().__init__()
        context_dim = context_dim or dim
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(context_dim, dim)
        self.v = nn.Linear(context_dim, dim)
        self.o = nn.Linear(dim, dim)
        self.norm_q = RMSNorm(dim, eps)
        self.norm_k = RMSNorm(dim, eps)

    def project_context(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of a context sequence, split into heads.

        Args:
            context: ``[N, L, context_dim]``.

        Returns:
            ``(k, v)``, each ``[N, heads, L, head_dim]``.
        """
        k = self.norm_k(self.k(context)).unflatten(-1, (self.num_heads, -1)).transpose(1, 2)
        v = self.v(context).unflatten(-1, (self.num_heads, -1)).transpose(1, 2)
        return k, v


class SelfAttention(Attention):
    """Full self-attention over all video and reference tokens with 3-D RoPE on queries and keys.

    Under sequence parallelism (``parallel`` set, ``shard`` given) ``x`` holds this process's frames only: the
    projections, the q/k norms over the full width and RoPE stay local, and two all-to-alls around the attention
    trade frames for heads and back (:mod:`humo.models.parallel`).
    """

    parallel: SequenceParallel | None = None

    def forward(
        self, x: torch.Tensor, rope_cos: torch.Tensor, rope_sin: torch.Tensor, shard: SequenceShard | None = None
    ) -> torch.Tensor:
        """``x [B, S, D]`` -> ``[B, S, D]``; ``rope_cos/sin [S, 1, head_dim/2]`` (S: the local tokens)."""
        q = apply_rope(self.norm_q(self.q(x)).unflatten(-1, (self.num_heads, -1)), rope_cos, rope_sin)
        k = apply_rope(self.norm_k(self.k(x)).unflatten(-1, (self.num_heads, -1)), rope_cos, rope_sin)
        v = self.v(x).unflatten(-1, (self.num_heads, -1))  # [B, S, heads, d]
        if shard is not None and self.parallel is not None:
            q, k, v = (self.parallel.sequence_to_heads(t, shard) for t in (q, k, v))  # [B, S_all, heads_local, d]
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)
        if shard is not None and self.parallel is not None:
            out = self.parallel.heads_to_sequence(out, shard, self.num_heads)  # [B, S, heads, d]
        return self.o(out.flatten(2))  # [B, S, D]


class TextCrossAttention(Attention):
    """Every token attends to all text tokens (padding included, as Wan2.1 passes no context lengths)."""

    def forward(
        self, x: torch.Tensor, context: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """``x [B, S, D]``, ``context [B, L, D]`` (or its cached ``kv``, each ``[B, heads, L, d]``) -> ``[B, S, D]``."""
        k, v = kv if kv is not None else self.project_context(context)
        q = self.norm_q(self.q(x)).unflatten(-1, (self.num_heads, -1)).transpose(1, 2)  # [B, heads, S, d]
        out = F.scaled_dot_product_attention(q, k, v)
        return self.o(out.transpose(1, 2).flatten(2))


class FrameLocalAudioAttention(Attention):
    """Tokens of latent frame ``f`` attend only to the audio tokens of frame ``f`` (no RoPE, no mask).

    Batched by folding frames into the batch axis: queries ``[B*F, heads, H*W, d]`` against keys
    ``[B*F, heads, tokens_per_frame, d]``.
    """

    def project_context(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``context [B, F, T, C_a]`` -> ``(k, v)``, each ``[B*F, heads, T, d]``."""
        return super().project_context(context.flatten(0, 1))

    def forward(
        self,
        x: torch.Tensor,
        num_frames: int,
        audio: torch.Tensor,
        kv: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """``x [B, F*H*W, D]`` with ``num_frames = F``; ``audio [B, F, T, C_a]`` or cached ``kv`` -> ``[B, S, D]``."""
        batch, seq_len, dim = x.shape
        k, v = kv if kv is not None else self.project_context(audio)
        q = self.norm_q(self.q(x)).reshape(batch * num_frames, seq_len // num_frames, self.num_heads, -1)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k, v)  # [B*F, heads, H*W, d]
        return self.o(out.transpose(1, 2).reshape(batch, seq_len, dim))


class AudioBranch(nn.Module):
    """Step 3 of a block: ``x + AudioAttn(LN_affine(x), audio)``; no gate, no modulation (ref 1.1).

    Held by each block under upstream's attribute name ``audio_cross_attn_wrapper`` so released keys load.
    """

    def __init__(self, dim: int, context_dim: int, num_heads: int, eps: float) -> None:
        super().__init__()
        self.norm1_audio = FP32LayerNorm(dim, eps, elementwise_affine=True)
        self.audio_cross_attn = FrameLocalAudioAttention(dim, num_heads, eps, context_dim=context_dim)

    def forward(
        self,
        x: torch.Tensor,
        num_frames: int,
        audio: torch.Tensor,
        kv: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        return x + self.audio_cross_attn(self.norm1_audio(x), num_frames, audio, kv)


# =====================================================================================================================
# Audio projection (ref 1.4): window of rows x groups x channels per latent frame -> tokens_per_frame tokens
# =====================================================================================================================


class KeyedLayer(nn.Module):
    """Holds one layer under the name ``layer``, only so that names match upstream's ``audio_proj_glob_*.layer.*``."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class AudioProjection(nn.Module):
    """Per latent frame: flatten the window -> Linear, ReLU, Linear, ReLU, Linear -> tokens -> LayerNorm.

    Args:
        window: audio rows per latent frame (8).
        groups: feature groups per row (5 Whisper layer groups).
        channels: channels per group (1280).
        inner_dim: MLP width (512).
        context_dim: width of one output token (1536).
        num_tokens: tokens per latent frame (16).
    """

    def __init__(
        self, window: int, groups: int, channels: int, inner_dim: int, context_dim: int, num_tokens: int
    ) -> None:
        super().__init__()
        self.num_tokens = num_tokens
        self.audio_proj_glob_1 = KeyedLayer(nn.Linear(window * groups * channels, inner_dim))
        self.audio_proj_glob_2 = KeyedLayer(nn.Linear(inner_dim, inner_dim))
        self.audio_proj_glob_3 = KeyedLayer(nn.Linear(inner_dim, num_tokens * context_dim))
        self.audio_proj_glob_norm = KeyedLayer(nn.LayerNorm(context_dim, eps=AUDIO_PROJ_NORM_EPS))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``features [B, F, window, groups, channels]`` -> audio tokens ``[B, F, num_tokens, context_dim]``."""
        h = features.flatten(2)  # [B, F, window*groups*channels]: each latent frame on its own
        h = F.relu(self.audio_proj_glob_1(h))
        h = F.relu(self.audio_proj_glob_2(h))
        h = self.audio_proj_glob_3(h).unflatten(-1, (self.num_tokens, -1))  # [B, F, T, C_a]
        return self.audio_proj_glob_norm(h)


# =====================================================================================================================
# Transformer block
# =====================================================================================================================


class HumoBlock(nn.Module):
    """One Wan2.1 block with HuMo's audio cross-attention between the text cross-attention and the FFN (ref 1.1).

    Args:
        dim: model width D.
        ffn_dim: FFN inner width.
        num_heads: attention heads.
        audio_context_dim: width of the audio tokens.
        eps: norm epsilon.
    """

    def __init__(self, dim: int, ffn_dim: int, num_heads: int, audio_context_dim: int, eps: float) -> None:
        super().__init__()
        self.norm1 = FP32LayerNorm(dim, eps, elementwise_affine=False)
        self.self_attn = SelfAttention(dim, num_heads, eps)
        self.norm3 = FP32LayerNorm(dim, eps, elementwise_affine=True)
        self.cross_attn = TextCrossAttention(dim, num_heads, eps)
        self.audio_cross_attn_wrapper = AudioBranch(dim, audio_context_dim, num_heads, eps)
        self.norm2 = FP32LayerNorm(dim, eps, elementwise_affine=False)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(ffn_dim, dim))
        self.modulation = nn.Parameter(torch.randn(1, MODULATION_CHUNKS, dim) / dim**0.5)

    def forward(
        self,
        x: torch.Tensor,
        time_modulation: torch.Tensor,
        rope_cos: torch.Tensor,
        rope_sin: torch.Tensor,
        text: torch.Tensor,
        audio: torch.Tensor,
        text_kv: tuple[torch.Tensor, torch.Tensor] | None,
        audio_kv: tuple[torch.Tensor, torch.Tensor] | None,
        num_frames: int,
        return_audio_state: bool,
        shard: SequenceShard | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Run the block.

        Args:
            x: ``[B, S, D]`` tokens, ``S = num_frames * H * W``.
            time_modulation: ``[B, 6, D]`` float32 projection of the timestep embedding.
            rope_cos, rope_sin: ``[S, 1, head_dim/2]``.
            text: ``[B, L, D]`` embedded text (unused when ``text_kv`` is given).
            audio: ``[B, num_frames, T, C_a]`` audio tokens (unused when ``audio_kv`` is given).
            text_kv, audio_kv: cached keys/values of this block, or None.
            num_frames: latent frames F of the token grid (video + reference).
            return_audio_state: also return the hidden state right after the audio cross-attention.
            shard: under sequence parallelism, where the tokens live (``x`` holds this process's frames only).

        Returns:
            ``(x [B, S, D], state [B, S, D] or None)``.
        """
        # Modulation in float32 (upstream asserts it): one (shift, scale, gate) pair of triples per sample.
        shift1, scale1, gate1, shift2, scale2, gate2 = (self.modulation.float() + time_modulation).chunk(
            MODULATION_CHUNKS, dim=1
        )  # each [B, 1, D]

        # 1. self-attention on adaLN-modulated tokens, gated
        h = (self.norm1(x).float() * (1 + scale1) + shift1).type_as(x)
        x = (x.float() + self.self_attn(h, rope_cos, rope_sin, shard).float() * gate1).type_as(x)

        # 2. text cross-attention: affine LayerNorm (norm3), no gate
        x = x + self.cross_attn(self.norm3(x), text, text_kv)

        # 3. audio cross-attention, frame-local: affine LayerNorm (norm1_audio), no gate, no modulation
        x = self.audio_cross_attn_wrapper(x, num_frames, audio, audio_kv)
        state = x if return_audio_state else None

        # 4. feed-forward on adaLN-modulated tokens, gated
        h = (self.norm2(x).float() * (1 + scale2) + shift2).type_as(x)
        x = (x.float() + self.ffn(h).float() * gate2).type_as(x)
        return x, state

    def project_contexts(
        self, text: torch.Tensor, audio: torch.Tensor
    ) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        """This block's cached keys and values: ``(text_kv, audio_kv)`` (a method, so a sharded block can run it)."""
        return self.cross_attn.project_context(text), self.audio_cross_attn_wrapper.audio_cross_attn.project_context(
            audio
        )


# =====================================================================================================================
# Output head and focus-by-predicting mask head
# =====================================================================================================================


class Head(nn.Module):
    """Final LayerNorm with 2-way modulation by the timestep embedding, then Linear D -> p_t*p_h*p_w*C_out."""

    def __init__(self, dim: int, out_channels: int, patch_size: tuple[int, int, int], eps: float) -> None:
        super().__init__()
        self.norm = FP32LayerNorm(dim, eps, elementwise_affine=False)
        self.head = nn.Linear(dim, math.prod(patch_size) * out_channels)
        self.modulation = nn.Parameter(torch.randn(1, HEAD_MODULATION_CHUNKS, dim) / dim**0.5)

    def forward(self, x: torch.Tensor, time_embedding: torch.Tensor) -> torch.Tensor:
        """``x [B, S, D]``, ``time_embedding [B, D]`` float32 -> ``[B, S, p_t*p_h*p_w*C_out]``."""
        shift, scale = (self.modulation.float() + time_embedding[:, None]).chunk(HEAD_MODULATION_CHUNKS, dim=1)
        h = self.norm(x).float() * (1 + scale) + shift
        return self.head(h.to(self.head.weight.dtype))


class MaskHead(nn.Module):
    """One block's face-mask logits: affine LayerNorm then Linear D -> p_t*p_h*p_w (one logit per latent cell)."""

    def __init__(self, dim: int, patch_volume: int, eps: float) -> None:
        super().__init__()
        self.norm = FP32LayerNorm(dim, eps, elementwise_affine=True)
        self.proj = nn.Linear(dim, patch_volume)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.norm(x))


class MaskPredictor(nn.Module):
    """Focus-by-predicting (paper section 3.4): a face mask predicted from the last blocks' audio-attended states.

    The release has no mask predictor and the paper gives no architecture (ref 1.6, UNCERTAIN), so this is our
    design: one :class:`MaskHead` per read block, applied to the hidden state right after that block's audio
    cross-attention; the per-block logits are averaged ("the 4 outputs are averaged into M_pred") and unpatchified
    to the latent grid, which is the resolution of the size-weighted BCE of Eq. (3). Only video tokens are read:
    reference frames have no face mask. Its loss reaches the backbone, which is the point (a soft regulariser).
    """

    def __init__(self, dim: int, patch_size: tuple[int, int, int], num_blocks: int, eps: float) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.heads = nn.ModuleList(MaskHead(dim, math.prod(patch_size), eps) for _ in range(num_blocks))

    def forward(self, states: list[torch.Tensor], video_grid: tuple[int, int, int]) -> torch.Tensor:
        """``states``: one ``[B, S_video, D]`` per head -> mask logits ``[B, F_video, H_latent, W_latent]``."""
        logits = torch.stack([head(state) for head, state in zip(self.heads, states, strict=True)]).mean(dim=0)
        return unpatchify(logits.float(), video_grid, self.patch_size, channels=1)[:, 0]


# =====================================================================================================================
# The model
# =====================================================================================================================


@dataclass
class HumoContext:
    """Conditions embedded once per sample and reused at every denoising step.

    Built by :meth:`HumoTransformer3D.prepare_context`. The text and audio tokens do not depend on the timestep, so
    a sampler embeds them once; with ``cache_kv=True`` the per-block keys and values are cached too.

    Attributes:
        text: ``[B, text_len, D]`` embedded text tokens.
        audio: ``[B, F, tokens_per_frame, C_a]`` projected audio tokens (F = video + reference latent frames).
        text_kv: per block ``(k, v)``, each ``[B, heads, text_len, head_dim]``; or None.
        audio_kv: per block ``(k, v)``, each ``[B*F, heads, tokens_per_frame, head_dim]``; or None.
    """

    text: torch.Tensor
    audio: torch.Tensor
    text_kv: tuple[tuple[torch.Tensor, torch.Tensor], ...] | None = None
    audio_kv: tuple[tuple[torch.Tensor, torch.Tensor], ...] | None = None


def _frames_of_context(context: HumoContext, start: int, stop: int) -> HumoContext:
    """The latent frames ``[start, stop)`` of a context's audio tokens and audio keys/values (text is per sample)."""
    audio_kv = None
    if context.audio_kv is not None:
        frames = context.audio.shape[1]

        def rows(t: torch.Tensor) -> torch.Tensor:  # [B*F, heads, T, d] -> [B*(stop-start), heads, T, d]
            return t.unflatten(0, (-1, frames))[:, start:stop].flatten(0, 1)

        audio_kv = tuple((rows(k), rows(v)) for k, v in context.audio_kv)
    return HumoContext(context.text, context.audio[:, start:stop], context.text_kv, audio_kv)


@dataclass
class HumoTransformerOutput:
    """What :meth:`HumoTransformer3D.forward` returns.

    Attributes:
        sample: ``[B, C_out, F, H, W]`` predicted velocity for the whole latent sequence, reference frames included
            (callers drop the last ``num_ref_frames``; see :attr:`video`).
        mask_logits: ``[B, F_video, H, W]`` face-mask logits on the latent grid when asked for, else None.
        num_ref_frames: reference frames at the end of the sequence.
        block_residual: ``[B, S_local, D]`` the block stack's output minus its input, when asked for (step
            caching; under sequence parallelism this process's tokens only).
    """

    sample: torch.Tensor
    mask_logits: torch.Tensor | None = None
    num_ref_frames: int = 0
    block_residual: torch.Tensor | None = None

    @property
    def video(self) -> torch.Tensor:
        """``[B, C_out, F_video, H, W]``: the prediction for the video frames only."""
        return self.sample[:, :, : self.sample.shape[2] - self.num_ref_frames]


class HumoTransformer3D(ModelMixin, ConfigMixin):
    """The HuMo DiT (Wan2.1 blocks + frame-local audio cross-attention + reference frames + face mask head).

    Parameter names are upstream's (ref 1.7), so released checkpoints load without a map; only the mask predictor
    (``mask_predictor.*``) is ours. Arguments are the fields of :class:`humo.models.presets.HumoDiTConfig`, which
    documents them and validates their combination; build from a preset with :meth:`from_preset`.

    Args:
        in_channels: channels into the patch embedding (16, or 36 in the channel reference mode).
        out_channels: predicted latent channels (16).
        dim: width D. ffn_dim: FFN width. num_heads / num_layers: heads and blocks.
        patch_size: ``(1, p_h, p_w)``; audio tokens are per latent frame, so the time patch must be 1.
        text_dim / text_len: text token width and the padded text length.
        freq_dim: sinusoidal timestep embedding size. eps: norm epsilon. rope_theta: RoPE base.
        audio_groups / audio_channels / audio_window: layout of one latent frame's audio window.
        audio_tokens / audio_inner_dim / audio_context_dim: audio projection sizes.
        mask_predictor_blocks: last blocks read by the mask predictor (all if fewer; 0: no mask predictor).
        reference_mode: ``"temporal"`` (1.7B) or ``"channel"`` (17B) reference injection.
    """

    _supports_gradient_checkpointing = True
    _no_split_modules = ["HumoBlock"]
    # No ``_keep_in_fp32_modules``: diffusers then insists on accelerate's low-memory loading, which is not installed.
    # The forward computes every modulation and norm in float32 itself (as upstream does); the timestep MLP runs in
    # its weights' dtype, so keep ``time_embedding``/``time_projection`` in float32 when casting the model.

    @register_to_config
    def __init__(
        self,
        *,
        in_channels: int,
        out_channels: int,
        dim: int,
        ffn_dim: int,
        num_heads: int,
        num_layers: int,
        patch_size: tuple[int, int, int],
        text_dim: int,
        text_len: int,
        freq_dim: int,
        eps: float,
        rope_theta: float,
        audio_groups: int,
        audio_channels: int,
        audio_window: int,
        audio_tokens: int,
        audio_inner_dim: int,
        audio_context_dim: int,
        mask_predictor_blocks: int,
        reference_mode: Literal["temporal", "channel"],
    ) -> None:
        super().__init__()
        cfg = HumoDiTConfig(
            in_channels=in_channels,
            out_channels=out_channels,
            dim=dim,
            ffn_dim=ffn_dim,
            num_heads=num_heads,
            num_layers=num_layers,
            patch_size=tuple(patch_size),
            text_dim=text_dim,
            text_len=text_len,
            freq_dim=freq_dim,
            eps=eps,
            rope_theta=rope_theta,
            audio_groups=audio_groups,
            audio_channels=audio_channels,
            audio_window=audio_window,
            audio_tokens=audio_tokens,
            audio_inner_dim=audio_inner_dim,
            audio_context_dim=audio_context_dim,
            mask_predictor_blocks=mask_predictor_blocks,
            reference_mode=reference_mode,
        )
        self.humo_config = cfg

        # embeddings
        self.patch_embedding = nn.Conv3d(in_channels, dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.text_embedding = nn.Sequential(nn.Linear(text_dim, dim), nn.GELU(approximate="tanh"), nn.Linear(dim, dim))
        self.time_embedding = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(dim, MODULATION_CHUNKS * dim))
        self.audio_proj = AudioProjection(
            audio_window, audio_groups, audio_channels, audio_inner_dim, audio_context_dim, audio_tokens
        )

        # blocks, head, mask predictor
        self.blocks = nn.ModuleList(
            HumoBlock(dim, ffn_dim, num_heads, audio_context_dim, eps) for _ in range(num_layers)
        )
        self.head = Head(dim, out_channels, cfg.patch_size, eps)
        self.mask_predictor = MaskPredictor(dim, cfg.patch_size, cfg.mask_blocks, eps) if cfg.mask_blocks else None

        self.gradient_checkpointing = False
        self.sequence_parallel: SequenceParallel | None = None
        self._init_weights()

    def enable_sequence_parallel(self, parallel: SequenceParallel | None) -> None:
        """Split every forward's tokens by latent frame over ``parallel``'s processes (None: switch it off).

        Every process of the group must call ``forward`` with the same inputs; each gets the whole output.

        Raises:
            ValueError: more processes than attention heads (the message names the valid sizes).
        """
        if parallel is not None:
            parallel.check_heads(self.humo_config.num_heads)
        self.sequence_parallel = parallel
        for block in self.blocks:
            block.self_attn.parallel = parallel

    @classmethod
    def from_preset(cls, preset: str | HumoDiTConfig, **overrides: object) -> HumoTransformer3D:
        """A randomly initialised model from a preset name (with field overrides) or a config object."""
        cfg = get_preset(preset, **overrides) if isinstance(preset, str) else preset
        if overrides and not isinstance(preset, str):
            cfg = HumoDiTConfig.model_validate({**cfg.model_dump(), **overrides})
        return cls(**cfg.model_dump())

    def _init_weights(self) -> None:
        """Upstream's initialisation (Wan2.1 ``init_weights`` + HuMo's audio projection), plus zero-started outputs.

        Xavier-uniform Linear weights with zero biases; N(0, 0.02) for the text and time MLPs; the output head at
        zero (DiT); the ``o`` projection of every audio cross-attention at zero, so the audio path adds exactly
        nothing until it is trained and a model loaded from plain Wan weights reproduces Wan.
        """
        for name, module in self.named_modules():
            self.init_module(name, module)

    def init_module(self, name: str, module: nn.Module) -> None:
        """Initialise the direct parameters of one sub-module (``name`` as in ``named_modules``), as at construction.

        Used by :meth:`_init_weights` and by the checkpoint loader for modules a file does not provide.
        """
        if isinstance(module, nn.Linear):
            if name == "head.head" or name.endswith("audio_cross_attn.o"):
                nn.init.zeros_(module.weight)  # start as identity: DiT head, zero-init audio output
            elif name.startswith(("text_embedding.", "time_embedding.")):
                nn.init.normal_(module.weight, std=EMBEDDING_INIT_STD)
            else:
                nn.init.xavier_uniform_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Conv3d):
            nn.init.xavier_uniform_(module.weight.flatten(1))  # as a Linear over the flattened patch
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm) and module.elementwise_affine:
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, RMSNorm):
            nn.init.ones_(module.weight)
        elif isinstance(module, (HumoBlock, Head)):
            nn.init.normal_(module.modulation, std=module.modulation.shape[-1] ** -0.5)

    # ------------------------------------------------------------------------------------------------------------
    # Conditions
    # ------------------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def timestep_modulation(self, timesteps: torch.Tensor) -> torch.Tensor:
        """``[N]`` timesteps -> ``[N, 6, D]`` float32 modulation vectors, as step 3 of :meth:`forward` makes them
        (the input of step caching's TeaCache signal: it depends on the timestep alone)."""
        cfg = self.humo_config
        time_weight = self.time_embedding[0].weight
        timesteps = timesteps.to(device=time_weight.device)
        e = self.time_embedding(sinusoidal_embedding(timesteps, cfg.freq_dim).to(time_weight.dtype)).float()
        return self.time_projection(e.to(time_weight.dtype)).unflatten(1, (MODULATION_CHUNKS, cfg.dim)).float()

    def prepare_context(
        self,
        encoder_hidden_states: torch.Tensor,
        audio_features: torch.Tensor | None = None,
        num_frames: int | None = None,
        cache_kv: bool = False,
    ) -> HumoContext:
        """Embed text and audio once, for reuse across denoising steps (``forward(..., context=...)``).

        Args:
            encoder_hidden_states: ``[B, L, text_dim]`` text token states, ``L <= text_len``; zero-padded to
                ``text_len`` as upstream does (the padded positions are attended too).
            audio_features: ``[B, F, window, groups, channels]`` audio windows per latent frame (rows of reference
                frames are zeros), or None for "no audio": all-zero features that still go through the projection.
            num_frames: latent frames F (video + reference); required when ``audio_features`` is None.
            cache_kv: also compute every block's text and audio keys/values (memory for speed at sampling time).

        Returns:
            A :class:`HumoContext`.

        Raises:
            ValueError: shapes that do not match the config, or neither audio nor ``num_frames``.
        """
        cfg = self.humo_config
        if encoder_hidden_states.ndim != 3 or encoder_hidden_states.shape[2] != cfg.text_dim:
            raise ValueError(
                f"encoder_hidden_states has shape {tuple(encoder_hidden_states.shape)}; expected "
                f"[batch, tokens <= {cfg.text_len}, {cfg.text_dim}] (text_dim of this model)"
            )
        batch, text_tokens = encoder_hidden_states.shape[:2]
        if text_tokens > cfg.text_len:
            raise ValueError(
                f"encoder_hidden_states has {text_tokens} tokens but the model takes at most text_len={cfg.text_len}; "
                "truncate in the text encoder (max_length)"
            )
        text_weight = self.text_embedding[0].weight
        text = F.pad(encoder_hidden_states.to(text_weight.dtype), (0, 0, 0, cfg.text_len - text_tokens))
        text = self.text_embedding(text)  # [B, text_len, D]

        window_shape = (cfg.audio_window, cfg.audio_groups, cfg.audio_channels)
        if audio_features is None:
            if num_frames is None:
                raise ValueError("audio_features=None (null audio) needs num_frames, the latent frame count")
            audio_features = text.new_zeros(batch, num_frames, *window_shape)
        if audio_features.ndim != 5 or tuple(audio_features.shape[2:]) != window_shape:
            raise ValueError(
                f"audio_features has shape {tuple(audio_features.shape)}; expected [batch, latent_frames, "
                f"{', '.join(map(str, window_shape))}] (window, groups, channels of this model's audio projection)"
            )
        if audio_features.shape[0] != batch:
            raise ValueError(
                f"audio_features batch {audio_features.shape[0]} != text batch {batch}; give one row per sample"
            )
        if num_frames is not None and audio_features.shape[1] != num_frames:
            raise ValueError(
                f"audio_features has {audio_features.shape[1]} latent frames but the latent has {num_frames} "
                "(video + reference); append one zero window per reference frame"
            )
        audio_weight = self.audio_proj.audio_proj_glob_1.layer.weight
        audio = self.audio_proj(audio_features.to(audio_weight.dtype))  # [B, F, T, C_a]

        text_kv = audio_kv = None
        if cache_kv:
            text_kv, audio_kv = zip(*(block.project_contexts(text, audio) for block in self.blocks))
        return HumoContext(text=text, audio=audio, text_kv=text_kv, audio_kv=audio_kv)

    # ------------------------------------------------------------------------------------------------------------
    # Forward
    # ------------------------------------------------------------------------------------------------------------

    def _check_inputs(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        condition: torch.Tensor | None,
        num_ref_frames: int,
        return_mask: bool,
    ) -> None:
        cfg = self.humo_config
        if hidden_states.ndim != 5 or hidden_states.shape[1] != cfg.out_channels:
            raise ValueError(
                f"hidden_states has shape {tuple(hidden_states.shape)}; expected [batch, {cfg.out_channels}, "
                "frames, height, width] latents (video frames followed by the reference frames)"
            )
        batch, _, frames, height, width = hidden_states.shape
        _, p_h, p_w = cfg.patch_size
        if height % p_h or width % p_w:
            raise ValueError(
                f"latent height x width = {height}x{width} is not divisible by the patch {p_h}x{p_w}; "
                f"use pixel sizes that are multiples of {VAE_SPATIAL_STRIDE * p_h}x{VAE_SPATIAL_STRIDE * p_w}"
            )
        if timestep.shape != (batch,):
            raise ValueError(f"timestep has shape {tuple(timestep.shape)}; expected ({batch},), one per sample")
        if not 0 <= num_ref_frames < frames:
            raise ValueError(
                f"num_ref_frames={num_ref_frames} must be in [0, {frames}): the latent has {frames} frames and at "
                "least one must be a video frame"
            )
        expected_condition = (batch, cfg.condition_channels, frames, height, width)
        if cfg.reference_mode == "temporal" and condition is not None:
            raise ValueError(
                "condition was given but this model's reference_mode is 'temporal' (references are appended frames); "
                "pass condition=None or use a 'channel' preset such as humo-17b"
            )
        if cfg.reference_mode == "channel":
            if condition is None:
                raise ValueError(
                    f"reference_mode='channel' needs condition {list(expected_condition)} (4 mask channels + the "
                    "condition latent: zero-video latent on video frames, reference latent on the last frames)"
                )
            if tuple(condition.shape) != expected_condition:
                raise ValueError(f"condition has shape {tuple(condition.shape)}; expected {list(expected_condition)}")
        if return_mask and self.mask_predictor is None:
            raise ValueError("return_mask=True but this model has mask_predictor_blocks=0; build it with blocks > 0")
        if return_mask and self.sequence_parallel is not None:
            raise ValueError("return_mask=True is a training output; sequence parallelism is for inference only")

    def _check_context(self, context: HumoContext, batch: int, frames: int) -> None:
        if context.text.shape[0] != batch or tuple(context.audio.shape[:2]) != (batch, frames):
            raise ValueError(
                f"context was prepared for text batch {context.text.shape[0]} and audio (batch, frames) "
                f"{tuple(context.audio.shape[:2])} but hidden_states has batch {batch} and {frames} latent frames; "
                "call prepare_context with matching inputs"
            )

    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        audio_features: torch.Tensor | None = None,
        condition: torch.Tensor | None = None,
        num_ref_frames: int = 0,
        return_mask: bool = False,
        context: HumoContext | None = None,
        block_residual: torch.Tensor | None = None,
        return_residual: bool = False,
    ) -> HumoTransformerOutput:
        """Predict the flow-matching velocity (``noise - data``) for a batch of latent sequences.

        Args:
            hidden_states: ``[B, 16, F, H, W]`` latents; the last ``num_ref_frames`` frames are the reference slot
                (clean reference latents, or zeros for "no image" in the temporal mode).
            timestep: ``[B]`` timesteps in ``[0, 1000)`` (integer-valued floats are fine), one per sample.
            encoder_hidden_states: ``[B, L, text_dim]`` text token states (``L <= text_len``). Not needed with
                ``context``.
            audio_features: ``[B, F, window, groups, channels]`` audio windows per latent frame (zero rows for the
                reference frames), or None for null audio (zero features through the projection).
            condition: ``[B, 20, F, H, W]`` in the ``channel`` mode only: 4 mask channels + 16 condition-latent
                channels (Wan I2V layout); must be None in the ``temporal`` mode.
            num_ref_frames: reference frames at the end of the sequence (excluded from the mask prediction).
            return_mask: also return the focus-by-predicting face-mask logits (training).
            context: conditions from :meth:`prepare_context`; replaces ``encoder_hidden_states`` and
                ``audio_features``, which must then be None.
            block_residual: ``[B, S_local, D]`` a residual a previous step left (step caching): the blocks are
                skipped and the tokens moved by it instead.
            return_residual: also return the block stack's residual (for a later step to reuse).

        Returns:
            :class:`HumoTransformerOutput` with ``sample [B, 16, F, H, W]`` (reference frames included),
            ``mask_logits [B, F - num_ref_frames, H, W]`` or None, and ``block_residual`` when asked for.

        Raises:
            ValueError: any shape that does not match the config or the other inputs (never broadcast silently).
        """
        cfg = self.humo_config
        self._check_inputs(hidden_states, timestep, condition, num_ref_frames, return_mask)
        batch, _, frames, height, width = hidden_states.shape

        # 1. conditions: embedded text and audio tokens (or the ones prepared once for all steps)
        if context is None:
            if encoder_hidden_states is None:
                raise ValueError("give encoder_hidden_states (or a context from prepare_context)")
            context = self.prepare_context(encoder_hidden_states, audio_features, num_frames=frames)
        elif encoder_hidden_states is not None or audio_features is not None:
            raise ValueError("give either context or encoder_hidden_states/audio_features, not both")
        self._check_context(context, batch, frames)

        # 2. patchify (the channel mode appends mask + condition latent on the channel axis) and 3-D RoPE
        if condition is not None:
            hidden_states = torch.cat([hidden_states, condition], dim=1)  # [B, 36, F, H, W]
        x = self.patch_embedding(hidden_states.to(self.patch_embedding.weight.dtype))  # [B, D, F, h, w]
        grid = tuple(x.shape[2:])
        x = x.flatten(2).transpose(1, 2)  # [B, S, D], tokens ordered (f, h, w)
        rope_cos, rope_sin = rope_frequencies(cfg.head_dim, grid, cfg.rope_theta, device=x.device)

        # 2b. sequence parallelism: keep this process's whole latent frames (tokens, RoPE rows, audio context)
        shard = None
        if self.sequence_parallel is not None:
            shard = self.sequence_parallel.shard(grid[0], grid[1] * grid[2])
            x, rope_cos, rope_sin = x[:, shard.token_slice], rope_cos[shard.token_slice], rope_sin[shard.token_slice]
            context = _frames_of_context(context, shard.frame_start, shard.frame_stop)

        # 3. timestep: sinusoid (float64) -> MLP -> e [B, D]; projection -> 6 modulation vectors [B, 6, D]
        time_weight = self.time_embedding[0].weight
        e = self.time_embedding(sinusoidal_embedding(timestep, cfg.freq_dim).to(time_weight.dtype)).float()
        e0 = self.time_projection(e.to(time_weight.dtype)).unflatten(1, (MODULATION_CHUNKS, cfg.dim)).float()

        # 4. blocks (or a cached residual in their place); the mask predictor reads the state after the audio
        #    cross-attention of the last blocks
        if block_residual is not None:
            if return_mask or tuple(block_residual.shape) != tuple(x.shape):
                raise ValueError(
                    f"block_residual {tuple(block_residual.shape)} must match the tokens {tuple(x.shape)}, without "
                    "return_mask"
                )
            x = x + block_residual
        first_mask_block = cfg.num_layers - cfg.mask_blocks if return_mask else cfg.num_layers
        states: list[torch.Tensor] = []
        block_input = x if return_residual and block_residual is None else None
        for index, block in enumerate(self.blocks if block_residual is None else ()):
            args = (
                x,
                e0,
                rope_cos,
                rope_sin,
                context.text,
                context.audio,
                context.text_kv[index] if context.text_kv is not None else None,
                context.audio_kv[index] if context.audio_kv is not None else None,
                shard.frame_sizes[shard.rank] if shard is not None else grid[0],
                index >= first_mask_block,
                shard,
            )
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                x, state = self._gradient_checkpointing_func(block, *args)
            else:
                x, state = block(*args)
            if state is not None:
                states.append(state)
        residual = (block_residual if block_residual is not None else x - block_input) if return_residual else None

        # 5. head with 2-way modulation (local tokens), gather the sequence, unpatchify
        patches = self.head(x, e)
        if shard is not None:
            patches = self.sequence_parallel.gather_tokens(patches, shard)  # [B, S_all, p*C_out]
        sample = unpatchify(patches, grid, cfg.patch_size, cfg.out_channels)  # [B, C_out, F, H, W]

        # 6. focus-by-predicting on video tokens only
        mask_logits = None
        if return_mask:
            video_grid = (grid[0] - num_ref_frames, grid[1], grid[2])
            video_tokens = math.prod(video_grid)
            mask_logits = self.mask_predictor([state[:, :video_tokens] for state in states], video_grid)
        return HumoTransformerOutput(
            sample=sample, mask_logits=mask_logits, num_ref_frames=num_ref_frames, block_residual=residual
        )
