"""Video VAE: diffusers ``AutoencoderKLWan`` behind a small interface with normalised latents.

* ``wan`` (real): the Wan2.1 VAE from ``<wan>/vae`` of a diffusers-format Wan2.1 folder; latents are normalised
  per channel with the config's ``latents_mean`` / ``latents_std`` (upstream's hard-coded table,
  humo-reference.md 1.2).
* ``tiny`` (embedded): an ``AutoencoderKLWan`` (Wan2.2-style patchify + residual blocks) with a small ``base_dim`` and
  the same causal 4x temporal / 8x spatial compression to 16 channels, trained on SynthTalk by the ``train_vae`` stage
  (:mod:`humo.training.vae`), which measures the per-channel latent mean/std and stores them in the saved
  config, so the same normalisation code serves both kinds.

Pixels are in ``[-1, 1]``; encoding uses the posterior mean (upstream does not sample). Also here, because
inference and precompute must agree on them: :func:`letterbox_image` (upstream's reference-image preprocessing)
and the uint8 <-> ``[-1, 1]`` tensor conversions.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from humo.config import VaeConfig
from humo.constants import LATENT_CHANNELS, VAE_SPATIAL_STRIDE, VAE_TEMPORAL_STRIDE

logger = logging.getLogger(__name__)

TINY_PATCH_SIZE = 2
"""Pixel patchify (2x2 pixels -> 12 channels) in front of the encoder, as in Wan2.2's VAE: half of the 8x stride."""
TINY_DIM_MULT = (1, 2, 2)
"""Channel multipliers of the tiny VAE's levels; 2 downsampling steps after the 2x patchify give the 8x stride."""
TINY_TEMPORAL_DOWNSAMPLE = (True, True)
"""Which downsampling steps also halve time: both, for the 4x temporal stride."""
TINY_NUM_RES_BLOCKS = 1
"""Residual blocks per level of the tiny VAE (Wan2.1 uses 2; 1 halves the cost on a CPU)."""
PAD_VALUE = 255
"""Upstream pads letterboxed reference images with white."""
PIXEL_RANGE_TOLERANCE = 1e-3


def build_tiny_vae(base_dim: int, num_res_blocks: int = TINY_NUM_RES_BLOCKS):
    """A randomly initialised tiny ``AutoencoderKLWan`` with Wan2.1's compression (4x time, 8x space, 16 channels).

    Wan2.2's variant of the family (2x2 patchify and residual down/up blocks with average-pooling shortcuts):
    measured on SynthTalk (2 CPU threads), Wan2.1's plain variant at base_dim 16 still reconstructed an average
    face after 1000 steps (held-out PSNR 12 dB), while this one passes colours through its shortcuts from the
    first steps (PSNR 16 dB after 200 steps) at a third of the parameters.

    Args:
        base_dim: channels of the first level (96 in Wan2.1).
        num_res_blocks: residual blocks per level.

    Returns:
        ``diffusers.AutoencoderKLWan`` with identity latent statistics (mean 0, std 1) until ``train_vae`` measures them.
    """
    from diffusers import AutoencoderKLWan

    return AutoencoderKLWan(
        base_dim=base_dim,
        z_dim=LATENT_CHANNELS,
        dim_mult=list(TINY_DIM_MULT),
        num_res_blocks=num_res_blocks,
        attn_scales=[],
        temperal_downsample=list(TINY_TEMPORAL_DOWNSAMPLE),
        in_channels=3 * TINY_PATCH_SIZE**2,
        out_channels=3 * TINY_PATCH_SIZE**2,
        patch_size=TINY_PATCH_SIZE,
        is_residual=True,
        latents_mean=[0.0] * LATENT_CHANNELS,
        latents_std=[1.0] * LATENT_CHANNELS,
    )


def _check_pixels(video: torch.Tensor, what: str) -> None:
    if not video.is_floating_point():
        raise ValueError(f"{what} must be float pixels in [-1, 1], got dtype {video.dtype}; use frames_to_tensor()")
    low, high = video.min().item(), video.max().item()
    if low < -1 - PIXEL_RANGE_TOLERANCE or high > 1 + PIXEL_RANGE_TOLERANCE:
        raise ValueError(
            f"{what} values span [{low:.3f}, {high:.3f}], outside [-1, 1]; convert uint8 frames with frames_to_tensor()"
        )


class VideoVAE(nn.Module):
    """Encode videos to normalised latents and decode them back.

    Args:
        vae: a ``diffusers.AutoencoderKLWan`` whose config holds ``latents_mean`` / ``latents_std``.

    Attributes:
        z_dim: latent channels (16).
        temporal_stride / spatial_stride: 4 and 8.
    """

    def __init__(self, vae) -> None:
        super().__init__()
        self.vae = vae.eval().requires_grad_(False)
        self.z_dim = int(vae.config.z_dim)
        self.temporal_stride = VAE_TEMPORAL_STRIDE
        self.spatial_stride = VAE_SPATIAL_STRIDE
        shape = (1, self.z_dim, 1, 1, 1)
        self.register_buffer("latents_mean", torch.tensor(vae.config.latents_mean).view(shape), persistent=False)
        self.register_buffer("latents_std", torch.tensor(vae.config.latents_std).view(shape), persistent=False)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.vae.parameters()).dtype

    def check_video(self, video: torch.Tensor) -> None:
        """Raise ValueError unless ``video`` is ``[B, 3, 4k+1, H, W]`` float in [-1, 1] with H, W multiples of 8."""
        if video.ndim != 5 or video.shape[1] != 3:
            raise ValueError(
                f"video must be [batch, 3, frames, height, width], got shape {tuple(video.shape)}; "
                "frames (F, H, W, 3) uint8 become [3, F, H, W] with frames_to_tensor()"
            )
        frames, height, width = video.shape[2:]
        if (frames - 1) % self.temporal_stride:
            raise ValueError(
                f"video has {frames} frames (shape {tuple(video.shape)}); the VAE needs 4k+1 frames (e.g. 33); "
                f"cut it to {(frames - 1) // self.temporal_stride * self.temporal_stride + 1}"
            )
        if height % self.spatial_stride or width % self.spatial_stride:
            raise ValueError(
                f"video is {height}x{width} (shape {tuple(video.shape)}); height and width must be multiples of "
                f"{self.spatial_stride}"
            )
        _check_pixels(video, "video")

    @torch.no_grad()
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """``video [B, 3, F, H, W]`` in [-1, 1], ``F = 4k+1`` -> normalised latents ``[B, 16, (F-1)//4+1, H/8, W/8]``."""
        self.check_video(video)
        posterior = self.vae.encode(video.to(self.latents_mean.device, self.dtype)).latent_dist
        return ((posterior.mode().float() - self.latents_mean) / self.latents_std).contiguous()

    @torch.no_grad()
    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """``image [B, 3, H, W]`` in [-1, 1] -> ``[B, 16, 1, H/8, W/8]``: the latent of a 1-frame video."""
        if image.ndim != 4 or image.shape[1] != 3:
            raise ValueError(f"image must be [batch, 3, height, width], got shape {tuple(image.shape)}")
        return self.encode(image[:, :, None])

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised ``latents [B, 16, T, h, w]`` -> ``[B, 3, 4(T-1)+1, 8h, 8w]`` float32 pixels in [-1, 1]."""
        if latents.ndim != 5 or latents.shape[1] != self.z_dim:
            raise ValueError(
                f"latents must be [batch, {self.z_dim}, latent_frames, h, w], got shape {tuple(latents.shape)}"
            )
        z = latents.to(self.latents_mean.device).float() * self.latents_std + self.latents_mean
        return self.vae.decode(z.to(self.dtype)).sample.float().clamp(-1.0, 1.0)


def _vae_folder(cfg: VaeConfig, trained_dir: Path | None) -> Path:
    if cfg.kind == "wan":
        folder = Path(cfg.path) / "vae"
        fix = "point encoders.vae.path at a diffusers-format Wan2.1 folder (it holds vae/config.json)"
    else:
        chosen = cfg.path if cfg.path is not None else trained_dir
        if chosen is None:
            raise FileNotFoundError(
                "the tiny VAE is trained by the train_vae stage: run `humo train-vae` and pass its output "
                "(artifacts/train_vae/vae) as trained_dir, or set encoders.vae.path"
            )
        folder = Path(chosen)
        fix = "run `humo train-vae` (or `dvc repro train_vae`) to create it, or fix encoders.vae.path"
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"VAE folder {folder} has no config.json; {fix}")
    return folder


def load_vae(
    cfg: VaeConfig,
    trained_dir: Path | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> VideoVAE:
    """Load the configured VAE (no download).

    Args:
        cfg: ``encoders.vae``: ``kind`` (``tiny`` or ``wan``) and ``path``.
        trained_dir: for ``tiny`` without ``cfg.path``: the train_vae output folder ``artifacts/train_vae/vae``.
        device: where the VAE runs.
        dtype: weights dtype.

    Raises:
        FileNotFoundError: the folder (or its config.json) is missing; the message says how to make it.
    """
    from diffusers import AutoencoderKLWan

    folder = _vae_folder(cfg, trained_dir)
    vae = AutoencoderKLWan.from_pretrained(folder, torch_dtype=dtype)
    logger.info("VAE %s from %s (base_dim %d)", cfg.kind, folder, vae.config.base_dim)
    return VideoVAE(vae).to(device)


# -----------------------------------------------------------------------------------------------------
# Pixels
# -----------------------------------------------------------------------------------------------------


def letterbox_image(image: Image.Image | np.ndarray, height: int, width: int) -> np.ndarray:
    """Upstream's reference-image preprocessing (humo-reference.md 1.5): fit inside ``height x width`` keeping the
    aspect ratio (LANCZOS), centre-pad with white.

    Args:
        image: a PIL image (any mode) or an array ``(h, w, 3)`` / ``(h, w, 4)`` / ``(h, w)`` uint8.
        height, width: the output size.

    Returns:
        ``(height, width, 3)`` uint8 RGB; normalise with :func:`frames_to_tensor` before encoding.
    """
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (3, 4)):
            raise ValueError(
                f"image array must be uint8 (h, w), (h, w, 3) or (h, w, 4), got {image.dtype} {image.shape}"
            )
        image = Image.fromarray(image)
    if height < 1 or width < 1:
        raise ValueError(f"letterbox size must be positive, got {height}x{width}")
    image = image.convert("RGB")
    ratio = image.width / image.height
    if ratio > width / height:  # wider than the target: fit the width
        new_width, new_height = width, max(1, round(width / ratio))
    else:
        new_width, new_height = max(1, round(height * ratio)), height
    if (new_width, new_height) != image.size:
        image = image.resize((new_width, new_height), Image.Resampling.LANCZOS)
    canvas = Image.new("RGB", (width, height), (PAD_VALUE,) * 3)
    canvas.paste(image, ((width - new_width) // 2, (height - new_height) // 2))
    return np.asarray(canvas, dtype=np.uint8)


def frames_to_tensor(frames: np.ndarray) -> torch.Tensor:
    """uint8 ``(F, H, W, 3)`` frames or a ``(H, W, 3)`` image -> float32 ``[3, F, H, W]`` / ``[3, H, W]`` in [-1, 1]."""
    if frames.dtype != np.uint8 or frames.ndim not in (3, 4) or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 (F, H, W, 3) or (H, W, 3), got {frames.dtype} {frames.shape}")
    tensor = torch.from_numpy(np.ascontiguousarray(frames)).float() / 127.5 - 1.0
    return tensor.movedim(-1, 0).contiguous()


def tensor_to_frames(video: torch.Tensor) -> np.ndarray:
    """float ``[3, F, H, W]`` (or ``[3, H, W]``) in [-1, 1] -> uint8 ``(F, H, W, 3)`` (or ``(H, W, 3)``).

    Deviation from upstream: values are rounded to the nearest integer (upstream truncates), so a round trip
    through :func:`frames_to_tensor` is exact.
    """
    if video.ndim not in (3, 4) or video.shape[0] != 3:
        raise ValueError(f"video must be [3, F, H, W] or [3, H, W], got shape {tuple(video.shape)}")
    pixels = ((video.detach().float().clamp(-1, 1) + 1.0) * 127.5).round()
    return pixels.movedim(0, -1).to(torch.uint8).cpu().numpy()
