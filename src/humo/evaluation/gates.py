"""The promotion gate: thresholds from params (``evaluate.gate``) decide whether a candidate may be promoted.

The decision and every figure behind it are written out by the evaluate stage (``reports/evaluate/gate.json``);
the register stage reads ``passed`` and ``reason`` from there and only moves the ``champion`` alias when the
gate passed (and the candidate beats the champion, see :mod:`humo.registry`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from humo.config import EvaluateGateConfig
from humo.evaluation.metrics import METRICS


@dataclass(frozen=True)
class GateCheck:
    """One bound: ``value`` must be ``>= bound`` (kind ``minimum``) or ``<= bound`` (kind ``maximum``)."""

    metric: str
    kind: Literal["minimum", "maximum"]
    bound: float
    value: float
    passed: bool


@dataclass(frozen=True)
class GateDecision:
    """The gate's verdict with the checks behind it."""

    passed: bool
    reason: str
    mode: str
    checks: list[GateCheck] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (``passed``, ``reason``, ``mode``, ``checks``), as the register stage reads it."""
        return {
            "passed": self.passed,
            "reason": self.reason,
            "mode": self.mode,
            "checks": [asdict(check) for check in self.checks],
        }


def passes(metrics: Mapping[str, float], thresholds: EvaluateGateConfig) -> GateDecision:
    """Check the candidate's figures against the gate's bounds.

    Args:
        metrics: figure name -> value for the gate's mode (means over the evaluation set).
        thresholds: the ``evaluate.gate`` section (mode, minimum and maximum bounds).

    Returns:
        A :class:`GateDecision`; it fails when a bound is missed or a bounded figure is missing or NaN, and its
        ``reason`` names every failed check with its value and bound.

    Raises:
        ValueError: a bound names a figure that :data:`~humo.evaluation.metrics.METRICS` does not define.
    """
    checks: list[GateCheck] = []
    for kind, bounds in (("minimum", thresholds.minimum), ("maximum", thresholds.maximum)):
        for name, bound in bounds.items():
            if name not in METRICS:
                raise ValueError(
                    f"evaluate.gate.{kind} names unknown figure {name!r}; known figures: {', '.join(METRICS)}"
                )
            value = float(metrics.get(name, math.nan))
            ok = math.isfinite(value) and (value >= bound if kind == "minimum" else value <= bound)
            checks.append(GateCheck(name, kind, float(bound), value, ok))  # type: ignore[arg-type]
    failed = [check for check in checks if not check.passed]
    if failed:
        reason = "; ".join(
            f"{c.metric}={c.value:.4g} {'<' if c.kind == 'minimum' else '>'} {c.bound:g}"
            if math.isfinite(c.value)
            else f"{c.metric} not measured"
            for c in failed
        )
    else:
        reason = f"all {len(checks)} thresholds met in {thresholds.mode}"
    return GateDecision(passed=not failed, reason=reason, mode=thresholds.mode, checks=checks)
