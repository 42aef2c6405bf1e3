"""HuMo's multi-condition classifier-free guidance as pure functions (humo-reference.md 2.2).

Write ``v(T, I, A)`` for one DiT call with text, image and audio conditions, and ``∅`` for a null condition
(null text is the negative prompt, null image a zero reference slot or the zero-video latent, null audio
all-zero features through the audio projection). Each function below combines already computed branch
predictions; running the branches (in one batched forward) is the pipeline's job.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

UPSTREAM_SWITCH_TIMESTEP = 980
"""17B TIA switches from the text-dominant to the identity/audio phase at t = 980 (the first 5 of 50 steps)."""
UPSTREAM_LATE_TEXT_OFFSET = 2.0
"""After the switch the joint text+image scale is ``scale_text - 2`` (5.0 -> 3.0 by default)."""


def guidance_ta(
    v_text_audio: torch.Tensor, v_text: torch.Tensor, v_null: torch.Tensor, scale_audio: float, scale_text: float
) -> torch.Tensor:
    """TA mode, both variants: ``s_a [v(T,∅,A) - v(T,∅,∅)] + s_t [v(T,∅,∅) - v(∅,∅,∅)] + v(∅,∅,∅)``."""
    return scale_audio * (v_text_audio - v_text) + scale_text * (v_text - v_null) + v_null


def guidance_tia_17b(
    v_tia: torch.Tensor,
    v_ti: torch.Tensor,
    v_i: torch.Tensor,
    v_null: torch.Tensor,
    timestep: float,
    scale_audio: float,
    scale_text: float,
    switch_timestep: float = UPSTREAM_SWITCH_TIMESTEP,
    late_text_offset: float = UPSTREAM_LATE_TEXT_OFFSET,
) -> torch.Tensor:
    """TIA mode of HuMo-17B with the time-adaptive switch.

    Early (``timestep > switch_timestep``), the negative branch keeps the image, so only text is guided:
    ``s_a [v(T,I,A) - v(T,I,∅)] + s_t [v(T,I,∅) - v(∅,I,∅)] + v(∅,I,∅)``.
    Late, text and image are guided jointly with a lower weight:
    ``s_a [v(T,I,A) - v(T,I,∅)] + (s_t - 2) [v(T,I,∅) - v(∅,∅,∅)] + v(∅,∅,∅)``.

    Args:
        v_tia, v_ti, v_i, v_null: predictions of v(T,I,A), v(T,I,∅), v(∅,I,∅) and v(∅,∅,∅); ``v_i`` is only
            used early and ``v_null`` only late, so a caller may pass the unused one as any tensor.
        timestep: the integer-valued timestep of this step (0..999).
    """
    audio_term = scale_audio * (v_tia - v_ti)
    if timestep > switch_timestep:
        return audio_term + scale_text * (v_ti - v_i) + v_i
    return audio_term + (scale_text - late_text_offset) * (v_ti - v_null) + v_null


def guidance_tia_1_7b(
    v_tia: torch.Tensor,
    v_ta: torch.Tensor,
    v_t: torch.Tensor,
    v_null: torch.Tensor,
    scale_image: float,
    scale_audio: float,
    scale_text: float,
) -> torch.Tensor:
    """TIA mode of HuMo-1.7B, four branches, no time switch:
    ``s_i [v(T,I,A) - v(T,∅,A)] + s_a [v(T,∅,A) - v(T,∅,∅)] + s_t [v(T,∅,∅) - v(∅,∅,∅)] + v(∅,∅,∅)``.
    """
    return scale_image * (v_tia - v_ta) + scale_audio * (v_ta - v_t) + scale_text * (v_t - v_null) + v_null


def guidance_nested(
    v_tia: torch.Tensor,
    v_ti: torch.Tensor,
    v_t: torch.Tensor,
    v_null: torch.Tensor,
    scale_audio: float,
    scale_image: float,
    scale_text: float,
) -> torch.Tensor:
    """Paper Eq. (4): audio on top, then image, then text:
    ``λa [v(T,I,A) - v(T,I,∅)] + λi [v(T,I,∅) - v(T,∅,∅)] + λt [v(T,∅,∅) - v(∅,∅,∅)] + v(∅,∅,∅)``.
    """
    return scale_audio * (v_tia - v_ti) + scale_image * (v_ti - v_t) + scale_text * (v_t - v_null) + v_null


@dataclass(frozen=True)
class PiecewiseScale:
    """A guidance scale that is piecewise constant in the timestep.

    ``values[k]`` applies while ``timestep > switch_points[k]`` and at or below the previous switch point;
    ``values[-1]`` applies below the last switch point. ``switch_points`` must be strictly decreasing.
    Example: ``PiecewiseScale(values=(5.0, 3.0), switch_points=(980,))`` is 5.0 above t = 980, then 3.0.
    """

    values: tuple[float, ...]
    switch_points: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if len(self.values) != len(self.switch_points) + 1:
            raise ValueError(
                f"need one more value than switch points, got values={self.values} switch_points={self.switch_points}"
            )
        if any(a <= b for a, b in zip(self.switch_points, self.switch_points[1:])):
            raise ValueError(f"switch_points must be strictly decreasing, got {self.switch_points}")

    def __call__(self, timestep: float) -> float:
        for value, switch in zip(self.values, self.switch_points):
            if timestep > switch:
                return value
        return self.values[-1]
