"""HuMo's multi-condition classifier-free guidance as pure functions (humo-reference.md 2.2).

Write ``v(T, I, A)`` for one DiT call with text, image and audio conditions, and ``∅`` for a null condition
(null text is the negative prompt, null image a zero reference slot or the zero-video latent, null audio
all-zero features through the audio projection). Each function below combines already computed branch
predictions; running the branches (in one batched forward) is the pipeline's job.

:class:`GuidanceSchedule` is the general form: a chain of branches whose link scales are piecewise-constant
functions of the timestep (:class:`PiecewiseScale`); :func:`build_guidance` gives upstream's 17B (time-adaptive,
switch at t = 980) and 1.7B (static 4-branch) forms and a custom Eq. (4) nesting for every mode.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

UPSTREAM_SWITCH_TIMESTEP = 980
"""17B TIA switches from the text-dominant to the identity/audio phase at t = 980 (the first 5 of 50 steps)."""
UPSTREAM_LATE_TEXT_OFFSET = 2.0
"""After the switch the joint text+image scale is ``scale_text - 2`` (5.0 -> 3.0 by default)."""
UPSTREAM_SCALES: dict[str, dict[str, float]] = {
    "humo-17b": {"text": 5.0, "image": 4.0, "audio": 5.5},
    "humo-1.7b": {"text": 7.0, "image": 4.0, "audio": 7.5},
}
"""Upstream's guidance scales per form (humo-reference.md 2.3): 17B ``generate.yaml`` / ``infer_t(i)a.sh`` s_t 5.0,
s_a 5.5 (s_i unused by that form); 1.7B ``*_1_7B.sh`` scripts s_t 7.0 (``generate_1_7B.yaml`` says 7.5), s_i 4.0,
s_a 7.5."""


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


# =====================================================================================================================
# The general time-adaptive schedule: a chain of branches with piecewise-constant link scales
# =====================================================================================================================


@dataclass(frozen=True, order=True)
class Branch:
    """Which conditions one DiT call sees: text (else the negative prompt), image (else null), audio (else null)."""

    text: bool
    image: bool
    audio: bool

    @classmethod
    def parse(cls, name: str) -> Branch:
        """``"TIA"``, ``"TI"``, ``"I"``, ``"∅"`` (or ``""``/``"null"``) -> a :class:`Branch`."""
        letters = "" if name in ("∅", "null") else name.upper()
        if set(letters) - set("TIA"):
            raise ValueError(f"branch name {name!r} may only use the letters T, I, A (or '∅' for all-null)")
        return cls(text="T" in letters, image="I" in letters, audio="A" in letters)

    @property
    def name(self) -> str:
        """``"TIA"`` style name; ``"∅"`` when every condition is null."""
        return "".join(letter for letter, on in zip("TIA", (self.text, self.image, self.audio)) if on) or "∅"

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class Truncation:
    """Guidance truncation: from ``at_or_below`` down, the ``drop`` branches are no longer evaluated.

    A dropped branch is folded out of the chain so that its coefficient becomes 0: the link above it takes the
    scale of the link below it (the condition it separated is then guided jointly with the next one), and a
    dropped base sets the last link's scale to 1 (that condition is no longer guided). Dropping the base late is
    the classic "CFG truncation" (the unconditional branch is skipped).
    """

    at_or_below: float
    """Timestep from which (inclusive, downwards) the truncation applies."""
    drop: tuple[Branch, ...]


@dataclass(frozen=True)
class GuidanceSchedule:
    """Multi-condition CFG as a chain of branches whose link scales are piecewise constant in the timestep.

    With branches ``b_0 (most conditions) .. b_K (the base)`` and link scales ``s_1 .. s_K``:

    ``v = b_K + sum_k s_k(t) * (b_{k-1} - b_k)``

    so the coefficient of ``b_0`` is ``s_1``, of ``b_k`` is ``s_{k+1} - s_k`` and of the base ``1 - s_K``. A branch
    whose coefficient is exactly 0 at a step is not evaluated at that step. Every upstream form is such a chain:

    - TA (both models): ``TA -> T -> ∅`` with scales ``(s_a, s_t)``.
    - 1.7B TIA: ``TIA -> TA -> T -> ∅`` with ``(s_i, s_a, s_t)``.
    - 17B TIA: ``TIA -> TI -> I -> ∅`` with ``s_a``; ``s_t`` above the switch and ``s_t - 2`` below it for
      ``TI - I``; ``1`` above and ``s_t - 2`` below for ``I - ∅``. Above the switch ``∅`` gets coefficient
      ``1 - 1 = 0`` and below it ``I`` gets ``(s_t-2) - (s_t-2) = 0``: 3 calls per step, as upstream
      (:func:`guidance_tia_17b`).
    - Paper Eq. (4): ``TIA -> TI -> T -> ∅`` with ``(λa, λi, λt)``.

    Attributes:
        chain: branches from the fully conditioned one to the base.
        scales: one :class:`PiecewiseScale` per link, ``scales[k]`` multiplying ``chain[k] - chain[k+1]``.
    """

    chain: tuple[Branch, ...]
    scales: tuple[PiecewiseScale, ...]
    truncation: Truncation | None = None

    def __post_init__(self) -> None:
        if len(self.chain) < 1 or len(self.scales) != len(self.chain) - 1:
            raise ValueError(
                f"a chain of {len(self.chain)} branches needs {max(len(self.chain) - 1, 0)} link scales, got "
                f"{len(self.scales)}"
            )
        if len(set(self.chain)) != len(self.chain):
            raise ValueError(f"chain {[b.name for b in self.chain]} repeats a branch; each branch appears once")
        if self.truncation is not None:
            self._check_truncation(self.truncation)

    def _check_truncation(self, truncation: Truncation) -> None:
        names = [b.name for b in self.chain]
        if self.chain[0] in truncation.drop:
            raise ValueError(f"guidance truncation cannot drop {names[0]}, the fully conditioned branch of {names}")
        unknown = [b.name for b in truncation.drop if b not in self.chain]
        if unknown:
            raise ValueError(f"guidance truncation drops {unknown}, which are not in the chain {names}")
        switches = [point for scale in self.scales for point in scale.switch_points]
        if switches and truncation.at_or_below >= min(switches):
            raise ValueError(
                f"guidance truncation from timestep {truncation.at_or_below:g} would start before the guidance "
                f"switch at {min(switches):g}; start it at a later step"
            )

    def with_truncation(self, truncation: Truncation | None) -> GuidanceSchedule:
        """The same schedule truncated (branches of ``truncation.drop`` not in the chain are ignored)."""
        if truncation is not None:
            kept = tuple(b for b in truncation.drop if b in self.chain)
            truncation = Truncation(truncation.at_or_below, kept) if kept else None
        return GuidanceSchedule(self.chain, self.scales, truncation)

    def link_scales(self, timestep: float) -> list[float]:
        """The link scales at ``timestep``, after the truncation's folds when it applies."""
        link = [scale(timestep) for scale in self.scales]
        truncation = self.truncation
        if truncation is not None and timestep <= truncation.at_or_below:
            # from the base upwards, so that dropping two neighbours folds both
            for index in sorted((self.chain.index(b) for b in truncation.drop), reverse=True):
                link[index - 1] = 1.0 if index == len(self.chain) - 1 else link[index]
        return link

    def coefficients(self, timestep: float) -> dict[Branch, float]:
        """Weight of each branch at ``timestep``; branches with weight 0 are left out.

        Returns:
            ``{branch: coefficient}`` in chain order; the coefficients sum to 1.
        """
        link = self.link_scales(timestep)
        weights = [*link, 1.0]  # weight of b_k before subtracting the previous link
        previous = [0.0, *link]
        coefficients = {branch: w - p for branch, w, p in zip(self.chain, weights, previous)}
        return {branch: c for branch, c in coefficients.items() if c != 0.0}

    def combine(self, predictions: dict[Branch, torch.Tensor], timestep: float) -> torch.Tensor:
        """The guided velocity at ``timestep`` from the branch predictions (only the active ones are needed).

        Raises:
            KeyError: a branch with a nonzero coefficient is missing from ``predictions``.
        """
        total: torch.Tensor | None = None
        for branch, coefficient in self.coefficients(timestep).items():
            if branch not in predictions:
                raise KeyError(f"guidance needs branch {branch.name} at timestep {timestep} but it was not computed")
            term = coefficient * predictions[branch]
            total = term if total is None else total + term
        assert total is not None  # the coefficients sum to 1, so at least one is nonzero
        return total

    @property
    def branches(self) -> tuple[Branch, ...]:
        """Every branch of the chain (some may be idle at a given step)."""
        return self.chain

    def describe(self) -> dict[str, object]:
        """A JSON-ready description (for sidecars and logs)."""
        described: dict[str, object] = {
            "chain": [branch.name for branch in self.chain],
            "scales": [{"values": list(s.values), "switch_points": list(s.switch_points)} for s in self.scales],
        }
        if self.truncation is not None:
            described["truncation"] = {
                "at_or_below": self.truncation.at_or_below, "drop": [b.name for b in self.truncation.drop],
            }
        return described


GuidanceForm = Literal["humo-17b", "humo-1.7b", "custom"]
"""``humo-17b``: upstream 17B (time-adaptive TIA); ``humo-1.7b``: upstream 1.7B (static 4-branch TIA);
``custom``: paper Eq. (4) nesting (audio, then image, then text) with a piecewise scale per condition."""


def constant(value: float) -> PiecewiseScale:
    """A scale that does not change with the timestep."""
    return PiecewiseScale(values=(float(value),))


def build_guidance(
    form: GuidanceForm,
    mode: str,
    scale_text: float,
    scale_image: float,
    scale_audio: float,
    switch_timestep: float = UPSTREAM_SWITCH_TIMESTEP,
    late_text_offset: float = UPSTREAM_LATE_TEXT_OFFSET,
    custom: dict[str, PiecewiseScale] | None = None,
) -> GuidanceSchedule:
    """The guidance schedule of ``form`` for a generation ``mode`` (``"T"``, ``"TI"``, ``"TA"`` or ``"TIA"``).

    TA is the same in both upstream forms (``TA -> T -> ∅``). TI was never shipped upstream: the ``humo-17b`` form
    uses the 17B TIA schedule without the audio link (text-dominant layout first, then joint text+image guidance),
    the ``humo-1.7b`` form the nested ``TI -> T -> ∅`` with ``(s_i, s_t)``. T is plain CFG ``T -> ∅``.

    Args:
        form: see :data:`GuidanceForm`.
        mode: which conditions the request has.
        scale_text, scale_image, scale_audio: upstream's ``s_t``, ``s_i``, ``s_a`` (``scale_image`` is unused by
            the 17B form, which merges image into the text term).
        switch_timestep: 17B switch (980); late_text_offset: 17B's ``s_t - 2``.
        custom: for ``form="custom"``: ``{"text": ..., "image": ..., "audio": ...}`` piecewise scales.

    Raises:
        ValueError: unknown form or mode, or a custom form without a needed scale.
    """
    mode = mode.upper()
    if mode not in ("T", "TI", "TA", "TIA"):
        raise ValueError(f"unknown mode {mode!r}; use one of T, TI, TA, TIA")
    B = Branch.parse
    s_t, s_i, s_a = constant(scale_text), constant(scale_image), constant(scale_audio)
    if form == "custom":
        custom = custom or {}
        needed = {"T": ["text"], "TI": ["image", "text"], "TA": ["audio", "text"], "TIA": ["audio", "image", "text"]}
        missing = [name for name in needed[mode] if name not in custom]
        if missing:
            raise ValueError(f"custom guidance for mode {mode} needs scales for {missing}; add them to guidance.custom")
        chain_names = {"T": ["T"], "TI": ["TI", "T"], "TA": ["TA", "T"], "TIA": ["TIA", "TI", "T"]}[mode] + ["∅"]
        return GuidanceSchedule(tuple(map(B, chain_names)), tuple(custom[name] for name in needed[mode]))
    if mode == "T":
        return GuidanceSchedule((B("T"), B("∅")), (s_t,))
    if mode == "TA":
        return GuidanceSchedule((B("TA"), B("T"), B("∅")), (s_a, s_t))
    if form == "humo-17b":
        late = scale_text - late_text_offset
        text_link = PiecewiseScale(values=(scale_text, late), switch_points=(switch_timestep,))
        image_link = PiecewiseScale(values=(1.0, late), switch_points=(switch_timestep,))
        if mode == "TIA":
            return GuidanceSchedule((B("TIA"), B("TI"), B("I"), B("∅")), (s_a, text_link, image_link))
        return GuidanceSchedule((B("TI"), B("I"), B("∅")), (text_link, image_link))
    if form == "humo-1.7b":
        if mode == "TIA":
            return GuidanceSchedule((B("TIA"), B("TA"), B("T"), B("∅")), (s_i, s_a, s_t))
        return GuidanceSchedule((B("TI"), B("T"), B("∅")), (s_i, s_t))
    raise ValueError(f"unknown guidance form {form!r}; use 'humo-17b', 'humo-1.7b' or 'custom'")
