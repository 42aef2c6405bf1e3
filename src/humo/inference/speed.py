"""Fewer DiT forwards per video: a request's step caching and guidance truncation, resolved from the config.

A request's ``speed`` picks the settings: None or ``config`` takes ``generate.cache`` and
``generate.guidance.truncate``, ``off`` neither (the exact sampler), and any other name a bundle of
``generate.speed_presets``. :func:`resolve_speed` turns the choice into what the pipeline runs: the guidance
schedule with its :class:`~humo.diffusion.guidance.Truncation` and a
:class:`~humo.diffusion.step_cache.CachePolicy` holding the model's calibration (``humo calibrate-cache``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from humo.config import SPEED_BUILTINS, GenerateConfig, SpeedPresetConfig, StepCacheConfig, TruncateConfig
from humo.diffusion.flow_matching import sampling_sigmas, sigmas_to_timesteps
from humo.diffusion.guidance import Branch, GuidanceSchedule, Truncation
from humo.diffusion.step_cache import CacheCalibration, CachePolicy


class SpeedError(ValueError):
    """A speed choice that cannot run (an unknown preset, a missing calibration, a truncation too early)."""


@dataclass(frozen=True)
class SpeedChoice:
    """What a request's ``speed`` resolved to."""

    name: str
    guidance: GuidanceSchedule
    cache: CachePolicy | None
    notes: tuple[str, ...] = ()
    """What the user should know (the configured cache left off for want of a calibration)."""

    @property
    def exact(self) -> bool:
        """Neither caching nor truncation: the output is the full sampler's, bit for bit."""
        return self.cache is None and self.guidance.truncation is None

    def record(self) -> dict[str, Any]:
        """For the sidecar and the idempotency key."""
        truncation = self.guidance.truncation
        return {
            "speed": self.name,
            "cache": self.cache.describe() if self.cache is not None else None,
            "truncate": (
                {"at_or_below": truncation.at_or_below, "drop": [b.name for b in truncation.drop]}
                if truncation is not None else None
            ),
        }


@functools.lru_cache(maxsize=8)
def _read_calibration(path: str, mtime_ns: int) -> CacheCalibration:
    return CacheCalibration.load(Path(path))


def load_calibration(path: Path) -> CacheCalibration:
    """The calibration file at ``path``, read once per version of the file.

    Raises:
        FileNotFoundError: no file (the message names ``humo calibrate-cache``).
    """
    path = Path(path)
    if not path.is_file():
        CacheCalibration.load(path)  # raises with the hint
    return _read_calibration(str(path.resolve()), path.stat().st_mtime_ns)


def preset(settings: GenerateConfig, name: str | None) -> SpeedPresetConfig:
    """The cache and truncation settings of speed ``name`` (None: ``config``).

    Raises:
        SpeedError: an unknown name (the known ones are listed).
    """
    name = name or "config"
    if name == "off":
        return SpeedPresetConfig()
    if name == "config":
        return SpeedPresetConfig(cache=settings.cache, truncate=settings.guidance.truncate)
    if name not in settings.speed_presets:
        known = ", ".join([*SPEED_BUILTINS, *settings.speed_presets])
        raise SpeedError(f"unknown speed {name!r}; use one of {known} (generate.speed_presets)")
    return settings.speed_presets[name]


def truncation_for(truncate: TruncateConfig, steps: int, shift: float) -> Truncation | None:
    """``truncate.from_step`` as the timestep of that step of the run's schedule (None when off or past the end)."""
    if not truncate.enabled or truncate.from_step >= steps:
        return None
    timesteps = sigmas_to_timesteps(sampling_sigmas(steps, shift))[:-1]
    return Truncation(at_or_below=float(timesteps[truncate.from_step]), drop=tuple(map(Branch.parse, truncate.drop)))


def cache_policy(cache: StepCacheConfig, calibration: Path) -> CachePolicy | None:
    """The policy of ``cache`` with the calibration read (None when off)."""
    if not cache.enabled:
        return None
    return CachePolicy(
        criterion=cache.criterion, threshold=cache.threshold, calibration=load_calibration(calibration),
        max_skips=cache.max_skips, retain_fraction=cache.retain_fraction,
    )


def resolve_speed(
    settings: GenerateConfig, name: str | None, steps: int, guidance: GuidanceSchedule
) -> SpeedChoice:
    """A request's speed: ``guidance`` truncated as the choice says, and its cache policy.

    The configured default (``name`` None) runs without its cache when the model has no calibration yet, with a
    note saying so; a request that names a speed gets an error instead.

    Raises:
        SpeedError: an unknown preset, a truncation that starts before the guidance switch, or a named speed whose
            calibration file is missing.
    """
    chosen = preset(settings, name)
    notes: tuple[str, ...] = ()
    try:
        truncated = guidance.with_truncation(truncation_for(chosen.truncate, steps, settings.shift))
        try:
            policy = cache_policy(chosen.cache, settings.cache_calibration)
        except FileNotFoundError as err:
            if name is not None:
                raise
            policy, notes = None, (f"step cache off: {err}",)
    except (ValueError, FileNotFoundError) as err:
        raise SpeedError(f"speed {name or 'config'!r}: {err}") from None
    return SpeedChoice(name=name or "config", guidance=truncated, cache=policy, notes=notes)
