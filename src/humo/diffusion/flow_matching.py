"""Flow-matching maths shared by training and sampling: small pure functions of tensors.

Convention (humo-reference.md 2.1): sigma = 1 is pure noise, sigma = 0 is data;
``x_t = (1 - sigma) * x0 + sigma * noise`` and the model predicts the velocity ``v = noise - x0``.
This is the sign the released HuMo/Wan weights expect (the paper writes the flipped convention).
The model is given the timestep ``1000 * sigma`` (an integer on the sampling grid).
"""

from __future__ import annotations

from typing import Literal

import torch

from humo.constants import NUM_TRAIN_TIMESTEPS

SAMPLING_SIGMA_MAX = 0.999
"""Upstream's schedule starts just below pure noise: linspace(0.999, 0, steps + 1)."""


def shift_sigmas(sigmas: torch.Tensor, shift: float) -> torch.Tensor:
    """Time shift ``s * sigma / (1 + (s - 1) * sigma)``: spends more steps at high noise for ``s > 1``."""
    if shift <= 0:
        raise ValueError(f"shift must be positive, got {shift}")
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def sampling_sigmas(num_steps: int, shift: float) -> torch.Tensor:
    """The ``num_steps + 1`` shifted noise levels of upstream's sampler, ending at 0.

    Returns:
        ``(num_steps + 1,)`` float64, decreasing from ``shift(0.999)`` to ``0``.
    """
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    sigmas = torch.linspace(SAMPLING_SIGMA_MAX, 0.0, num_steps + 1, dtype=torch.float64)[:-1]
    return torch.cat([shift_sigmas(sigmas, shift), sigmas.new_zeros(1)])


def sigmas_to_timesteps(sigmas: torch.Tensor) -> torch.Tensor:
    """Integer timesteps given to the model: ``int64(1000 * sigma)`` as upstream."""
    return (sigmas * NUM_TRAIN_TIMESTEPS).to(torch.int64)


def sample_training_sigmas(
    batch_size: int,
    generator: torch.Generator | None = None,
    distribution: Literal["logit_normal", "uniform"] = "logit_normal",
    shift: float = 1.0,
) -> torch.Tensor:
    """Noise levels for a training batch: logit-normal(0, 1) or uniform, then shifted.

    Returns:
        ``(batch_size,)`` float32 in (0, 1).
    """
    if distribution == "logit_normal":
        sigmas = torch.sigmoid(torch.randn(batch_size, generator=generator))
    elif distribution == "uniform":
        sigmas = torch.rand(batch_size, generator=generator)
    else:
        raise ValueError(f"unknown timestep distribution {distribution!r}; use 'logit_normal' or 'uniform'")
    return shift_sigmas(sigmas, shift)


def _expand(sigma: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Broadcast per-sample ``sigma`` (B,) over the trailing dims of ``like`` (B, ...)."""
    sigma = torch.as_tensor(sigma, dtype=like.dtype, device=like.device)
    return sigma.reshape(-1, *([1] * (like.ndim - 1))) if sigma.ndim else sigma


def add_noise(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """``x_t = (1 - sigma) x0 + sigma noise`` with per-sample ``sigma`` (B,) or a scalar."""
    s = _expand(sigma, x0)
    return (1 - s) * x0 + s * noise


def velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The regression target ``noise - x0``."""
    return noise - x0


def predict_x0(x_t: torch.Tensor, velocity: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Recover the clean sample from a velocity prediction: ``x0 = x_t - sigma v``."""
    return x_t - _expand(sigma, x_t) * velocity


def euler_step(x_t: torch.Tensor, velocity: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
    """One Euler step of the flow ODE from ``sigma`` to ``sigma_next``."""
    return x_t + (_expand(sigma_next, x_t) - _expand(sigma, x_t)) * velocity
