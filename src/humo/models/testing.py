"""Random but non-trivial DiT weights, for tests and benchmarks that need a model without a checkpoint.

The model's own initialisation zeroes the output head and every audio output projection (so plain Wan weights
reproduce Wan), which makes every guidance branch and every audio input give the same output; a check run on
such a model cannot fail. :func:`randomize_` gives every parameter a value instead.
"""

from __future__ import annotations

import math

import torch


def randomize_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """In place: norms near 1 (``1 + 0.1 N(0, 1)``), everything else ``N(0, 1) / sqrt(fan_in)``; returns it in eval mode."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            param.copy_(1 + 0.1 * noise if "norm" in name else noise / math.sqrt(max(param.shape[-1], 1)))
    return model.eval()
