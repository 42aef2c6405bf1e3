"""Step caching: which guidance-branch forwards of a sampling run may reuse the last computed block residual.

A skipped forward still embeds its latents and runs the head; only the block stack is replaced by the residual
(block output minus block input) that the same branch left at its last computed step. Two published criteria
decide when (scale-notes.md section 5), both fitted on our own model by ``humo calibrate-cache``:

- ``teacache``: the relative L1 change of the timestep modulation between consecutive steps, rescaled by a
  polynomial fitted per branch (modulation change -> change of the branch's prediction), is accumulated; a step
  is skipped while the sum stays under the threshold, and a computed step resets it.
- ``magcache``: the calibrated ratio of residual norms between consecutive steps is multiplied up; the error
  ``|1 - product|`` is accumulated, and a step is skipped while that stays under the threshold.

In HuMo (as in Wan) the modulated input depends on the timestep only, so either signal is known before the run:
:func:`plan_steps` turns (timesteps, active branches, calibration, threshold) into a :class:`StepPlan` once,
which the pipeline follows and the sidecar records. Every branch computes on its first active step, on the last
step, on the first ``retain_fraction`` of the steps, and after ``max_skips`` reuses in a row.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

CacheCriterion = Literal["teacache", "magcache"]
CRITERIA: tuple[str, ...] = ("teacache", "magcache")
POLY_DEGREE = 4
"""Degree of TeaCache's rescaling polynomial (its Wan coefficients have five terms)."""
CALIBRATION_VERSION = 1


def relative_l1(current: np.ndarray, previous: np.ndarray) -> float:
    """``mean|current - previous| / mean|previous|`` (TeaCache's distance)."""
    scale = float(np.mean(np.abs(previous)))
    return float(np.mean(np.abs(current - previous))) / max(scale, np.finfo(np.float64).tiny)


def consecutive_changes(values: Sequence[np.ndarray]) -> np.ndarray:
    """Relative L1 change of each entry against the one before; ``inf`` for the first (nothing to reuse)."""
    changes = [math.inf] + [relative_l1(np.asarray(b), np.asarray(a)) for a, b in zip(values, values[1:])]
    return np.asarray(changes, dtype=np.float64)


# =====================================================================================================================
# Calibration: what humo calibrate-cache measured on the model
# =====================================================================================================================


@dataclass(frozen=True)
class BranchCalibration:
    """One guidance branch's fitted signals.

    Attributes:
        poly: TeaCache rescaling, highest power first (``np.polyval``): modulation change -> prediction change;
            degree 4, lower when the branch ran at fewer steps, empty when it never ran two steps in a row.
        timesteps: the calibration run's model timesteps, decreasing.
        log_ratios: ``log`` of the mean residual-norm ratio of each calibration step against the one before
            (0 for the first); read per unit timestep, so a run with other steps interpolates it.
        samples: how many (step, request) pairs the fit saw.
    """

    poly: tuple[float, ...]
    timesteps: tuple[float, ...]
    log_ratios: tuple[float, ...]
    samples: int = 0

    def predicted_change(self, modulation_change: float) -> float:
        """TeaCache: the prediction's relative change estimated from the modulation's (never negative; infinite
        for a branch the calibration never saw twice in a row)."""
        if not self.poly:
            return math.inf
        return max(float(np.polyval(self.poly, modulation_change)), 0.0)

    def log_ratio(self, t_from: float, t_to: float) -> float:
        """MagCache: log residual-norm ratio from timestep ``t_from`` down to ``t_to``, interpolated linearly in
        the cumulative log ratio over the calibration timesteps (constant past their ends)."""
        ts = np.asarray(self.timesteps, dtype=np.float64)[::-1]  # increasing, for np.interp
        cumulative = np.cumsum(np.asarray(self.log_ratios, dtype=np.float64))[::-1]  # at each timestep, from the top
        return float(np.interp(t_to, ts, cumulative) - np.interp(t_from, ts, cumulative))


@dataclass(frozen=True)
class CacheCalibration:
    """Per-branch fits of one model (written by ``humo calibrate-cache``, read by every generation)."""

    model: str
    """Name and version of the model it was fitted on."""
    steps: int
    shift: float
    branches: dict[str, BranchCalibration]
    requests: int = 0
    version: int = CALIBRATION_VERSION
    fitted: dict[str, float] = field(default_factory=dict)
    """Fit quality per branch: ``r2`` of the TeaCache polynomial."""

    def branch(self, name: str) -> BranchCalibration:
        """The fit of branch ``name``.

        Raises:
            KeyError: the calibration has no such branch (a mode it was not run with).
        """
        if name not in self.branches:
            raise KeyError(
                f"the step-cache calibration of {self.model} has no branch {name!r} (it has "
                f"{sorted(self.branches)}); rerun `humo calibrate-cache` with the mode that uses it"
            )
        return self.branches[name]

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> CacheCalibration:
        if data.get("version") != CALIBRATION_VERSION:
            raise ValueError(
                f"step-cache calibration version {data.get('version')!r} is not {CALIBRATION_VERSION}; rerun "
                "`humo calibrate-cache`"
            )
        branches = {
            name: BranchCalibration(
                poly=tuple(b["poly"]), timesteps=tuple(b["timesteps"]), log_ratios=tuple(b["log_ratios"]),
                samples=int(b.get("samples", 0)),
            )
            for name, b in data["branches"].items()
        }
        return cls(
            model=data["model"], steps=int(data["steps"]), shift=float(data["shift"]), branches=branches,
            requests=int(data.get("requests", 0)), fitted=dict(data.get("fitted", {})),
        )

    def save(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=1) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: Path) -> CacheCalibration:
        """Read a calibration file.

        Raises:
            FileNotFoundError: no file at ``path`` (the message says how to make one).
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"no step-cache calibration at {path}; run `humo calibrate-cache` (dvc repro calibrate_cache) or "
                "set generate.cache.criterion: off"
            )
        return cls.from_json(json.loads(path.read_text(encoding="utf-8")))


def fit_branch(
    timesteps: Sequence[float],
    modulation_change: np.ndarray,
    prediction_change: np.ndarray,
    residual_ratio: np.ndarray,
) -> tuple[BranchCalibration, float]:
    """Fit one branch from a calibration run without skips.

    Args:
        timesteps: ``(N,)`` model timesteps of the run.
        modulation_change: ``(N,)`` relative L1 change of the modulation per step (``inf`` first).
        prediction_change: ``(R, N)`` relative L1 change of the branch's prediction per request and step
            (NaN where the branch did not run at that step or the one before).
        residual_ratio: ``(R, N)`` residual-norm ratio per request and step (NaN likewise).

    Returns:
        The fit and the ``r2`` of its polynomial.
    """
    steps = np.broadcast_to(np.asarray(modulation_change, dtype=np.float64), prediction_change.shape)
    usable = np.isfinite(steps) & np.isfinite(prediction_change)
    x, y = steps[usable], prediction_change[usable]
    if x.size == 0:  # active on single steps only (17B's I branch at few steps): it can never reuse
        poly, r2 = np.zeros(0), float("nan")
    else:
        poly = np.polyfit(x, y, min(POLY_DEGREE, x.size - 1))
        residual = y - np.polyval(poly, x)
        r2 = 1.0 - float(np.sum(residual**2)) / max(float(np.sum((y - y.mean()) ** 2)), np.finfo(np.float64).tiny)
    seen = np.isfinite(residual_ratio)
    counts = seen.sum(axis=0)
    mean_ratio = np.where(seen, residual_ratio, 0.0).sum(axis=0) / np.maximum(counts, 1)
    log_ratios = np.log(np.where((counts > 0) & (mean_ratio > 0), mean_ratio, 1.0))
    log_ratios[0] = 0.0
    fit = BranchCalibration(
        poly=tuple(float(c) for c in poly), timesteps=tuple(float(t) for t in timesteps),
        log_ratios=tuple(float(v) for v in log_ratios), samples=int(x.size),
    )
    return fit, r2


# =====================================================================================================================
# The plan
# =====================================================================================================================


@dataclass(frozen=True)
class CachePolicy:
    """When a branch may reuse its residual: a criterion, its threshold and the calibration it reads."""

    criterion: CacheCriterion
    threshold: float
    calibration: CacheCalibration
    max_skips: int = 3
    """Reuses in a row at most, per branch."""
    retain_fraction: float = 0.2
    """The first ``ceil(retain_fraction * steps)`` steps always compute (MagCache's retention ratio)."""

    def __post_init__(self) -> None:
        if self.criterion not in CRITERIA:
            raise ValueError(f"unknown cache criterion {self.criterion!r}; use one of {', '.join(CRITERIA)}")
        if not self.threshold > 0:
            raise ValueError(f"cache threshold must be positive, got {self.threshold}")
        if self.max_skips < 1 or not 0 <= self.retain_fraction <= 1:
            raise ValueError(f"max_skips >= 1 and 0 <= retain_fraction <= 1, got {self.max_skips}, {self.retain_fraction}")

    def describe(self) -> dict[str, object]:
        return {
            "criterion": self.criterion, "threshold": self.threshold, "max_skips": self.max_skips,
            "retain_fraction": self.retain_fraction, "calibration_model": self.calibration.model,
        }


@dataclass(frozen=True)
class StepPlan:
    """Per step, the branches that run the blocks and the branches that reuse their cached residual.

    Indexed by solver step from 0; steps before the run's ``start_step`` are empty.
    """

    compute: tuple[tuple[str, ...], ...]
    reuse: tuple[tuple[str, ...], ...]
    policy: CachePolicy | None = None

    @property
    def forwards(self) -> int:
        """Branch forwards through the block stack."""
        return sum(map(len, self.compute))

    @property
    def full_forwards(self) -> int:
        """Branch forwards the run would make without caching."""
        return self.forwards + sum(map(len, self.reuse))

    def describe(self) -> dict[str, object]:
        """JSON-ready: the policy, the counts and which steps each branch reused (the sidecar's record)."""
        reused: dict[str, list[int]] = {}
        for step, names in enumerate(self.reuse):
            for name in names:
                reused.setdefault(name, []).append(step)
        return {
            "policy": self.policy.describe() if self.policy is not None else None,
            "dit_forwards": self.forwards,
            "full_forwards": self.full_forwards,
            "reused_steps": reused,
        }


def full_plan(active: Sequence[Sequence[str]], start_step: int = 0) -> StepPlan:
    """Every active branch computes at every step (no caching)."""
    compute = tuple(tuple(names) if step >= start_step else () for step, names in enumerate(active))
    return StepPlan(compute=compute, reuse=tuple(() for _ in active))


def plan_steps(
    active: Sequence[Sequence[str]],
    timesteps: Sequence[float],
    policy: CachePolicy | None,
    modulation_change: np.ndarray | None = None,
    start_step: int = 0,
) -> StepPlan:
    """The skip plan of one run: content-independent, so computed before the first step.

    Args:
        active: per step, the names of the branches the guidance evaluates (nonzero weight), in chain order.
        timesteps: ``(N,)`` the model timesteps of the run's steps.
        policy: the criterion, or None for :func:`full_plan`.
        modulation_change: ``(N,)`` relative modulation change per step (needed by ``teacache``).
        start_step: the first step the run takes (a re-noised seam pass starts later): its branches compute.

    Returns:
        The plan; a branch computes on its first active step at or after ``start_step``, on the last step, on
        retained early steps and whenever the criterion says so.
    """
    if policy is None:
        return full_plan(active, start_step)
    num_steps = len(active)
    if len(timesteps) != num_steps:
        raise ValueError(f"{len(timesteps)} timesteps for {num_steps} steps")
    if policy.criterion == "teacache" and (modulation_change is None or len(modulation_change) != num_steps):
        raise ValueError("the teacache criterion needs the modulation change of every step")
    retained = math.ceil(policy.retain_fraction * num_steps)
    decisions: list[dict[str, bool]] = [{} for _ in range(num_steps)]
    names = list(dict.fromkeys(name for step in active for name in step))
    for name in names:
        fit = policy.calibration.branch(name)
        accumulated, product, skips, previous = 0.0, 1.0, 0, None
        for step in range(start_step, num_steps):
            if name not in active[step]:
                previous = None  # inactive: its cache is stale from here on
                continue
            forced = previous is None or step < retained or step == num_steps - 1 or skips >= policy.max_skips
            if policy.criterion == "teacache":
                accumulated += fit.predicted_change(float(modulation_change[step])) if previous is not None else 0.0
                error = accumulated
            else:
                if previous is not None:
                    product *= math.exp(fit.log_ratio(float(timesteps[previous]), float(timesteps[step])))
                    accumulated += abs(1.0 - product)
                error = accumulated
            reuse = not forced and error < policy.threshold
            decisions[step][name] = not reuse
            if reuse:
                skips += 1
            else:
                accumulated, product, skips = 0.0, 1.0, 0
            previous = step
    compute = tuple(tuple(n for n in active[s] if decisions[s].get(n, False)) for s in range(num_steps))
    reuse = tuple(tuple(n for n in active[s] if decisions[s].get(n) is False) for s in range(num_steps))
    return StepPlan(compute=compute, reuse=reuse, policy=policy)
