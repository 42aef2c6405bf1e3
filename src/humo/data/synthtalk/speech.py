"""Speech-like audio for SynthTalk: voiced syllable bursts with a known amplitude envelope.

A clip's speech is a list of :class:`Syllable` records (when, how loud, which pitch, which vowel), drawn by
:func:`plan_syllables`. :func:`synthesize_speech` turns the plan into a waveform: each syllable is a harmonic
tone (fundamental 90-260 Hz, gliding slightly) whose harmonics are weighted by three vowel formants
(Peterson & Barney's averages), with a flat-topped amplitude envelope (raised-cosine attack and release)
and a little breath noise under the same envelope. Between syllables there are short gaps and occasional
pauses of exact digital silence.

The envelope is known exactly: :func:`frame_envelope` averages the per-sample envelope over each video
frame's samples, giving one value in [0, 1] per frame that is exactly 0 when the frame holds no sound. The
mouth of the rendered person opens by that value (design.md section 4).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# --- timing (milliseconds) ----------------------------------------------------------------------------
LEAD_SILENCE_MS = (40.0, 300.0)
"""Silence before the first syllable: every clip starts with at least one closed-mouth frame at 25 fps."""
SYLLABLE_MS = (80.0, 250.0)
GAP_MS = (30.0, 110.0)
"""Gap between syllables of a phrase."""
PAUSE_MS = (250.0, 500.0)
"""Pause between phrases, taken instead of a gap with probability PAUSE_PROBABILITY."""
PAUSE_PROBABILITY = 0.15
ATTACK_MS = 20.0
RELEASE_MS = 35.0

# --- voice --------------------------------------------------------------------------------------------
F0_RANGE_HZ = (90.0, 260.0)
VOICE_F0_HZ = (105.0, 225.0)
"""Range of a clip's base pitch (log-uniform); syllables vary around it within F0_RANGE_HZ."""
SYLLABLE_F0_SPREAD = (0.9, 1.12)
F0_GLIDE = (0.88, 1.06)
"""Ratio of a syllable's final to initial pitch (mostly falling, as in declarative speech)."""
PEAK_RANGE = (0.7, 1.0)
"""Syllable loudness (envelope peak); the mouth opens this far at the syllable's sustain."""
VOWEL_FORMANTS_HZ: dict[str, tuple[float, float, float]] = {
    "a": (730.0, 1090.0, 2440.0),
    "e": (530.0, 1840.0, 2480.0),
    "i": (270.0, 2290.0, 3010.0),
    "o": (570.0, 840.0, 2410.0),
    "u": (300.0, 870.0, 2240.0),
}
FORMANT_BANDWIDTHS_HZ = (90.0, 120.0, 180.0)
FORMANT_GAINS = (1.0, 0.6, 0.3)
SPECTRAL_TILT = 0.5
"""Harmonic k is scaled by k**-SPECTRAL_TILT before the formant weighting (glottal source roll-off)."""
HARMONIC_CEILING_HZ = 5000.0
BREATH_LEVEL = 0.04
OUTPUT_GAIN = 0.5
"""Waveform peak at envelope 1 (leaves head-room for the AAC encoder)."""
ENVELOPE_DECIMALS = 4
"""Per-frame envelope values are rounded so that annotation, renderer and readers see the same numbers."""


@dataclass(frozen=True)
class Syllable:
    """One voiced burst: samples ``[start, end)``, a pitch glide, a vowel and a loudness."""

    start: int
    end: int
    f0_start: float
    f0_end: float
    vowel: str
    peak: float


def clip_num_samples(num_frames: int, fps: float, sample_rate: int) -> int:
    """Audio samples covering ``num_frames`` video frames (the rule of :func:`humo.data.media.fit_audio_to_frames`)."""
    return int(round(num_frames / fps * sample_rate))


def _ms(rng: np.random.Generator, bounds: tuple[float, float], sample_rate: int) -> int:
    return int(round(rng.uniform(*bounds) * sample_rate / 1000.0))


def plan_syllables(rng: np.random.Generator, num_samples: int, sample_rate: int) -> tuple[Syllable, ...]:
    """Draw the syllables of a clip: lead silence, then syllables separated by gaps and pauses.

    Args:
        rng: the clip's generator for speech.
        num_samples: length of the clip's audio.
        sample_rate: Hz.

    Returns:
        Syllables in time order, all inside ``[0, num_samples)``; at least one.
    """
    voice = math.exp(rng.uniform(math.log(VOICE_F0_HZ[0]), math.log(VOICE_F0_HZ[1])))
    syllables: list[Syllable] = []
    position = _ms(rng, LEAD_SILENCE_MS, sample_rate)
    while True:
        length = _ms(rng, SYLLABLE_MS, sample_rate)
        f0_start = float(np.clip(voice * rng.uniform(*SYLLABLE_F0_SPREAD), *F0_RANGE_HZ))
        f0_end = float(np.clip(f0_start * rng.uniform(*F0_GLIDE), *F0_RANGE_HZ))
        vowel = list(VOWEL_FORMANTS_HZ)[int(rng.integers(len(VOWEL_FORMANTS_HZ)))]
        peak = float(rng.uniform(*PEAK_RANGE))
        if position + length > num_samples:
            if not syllables:  # a very short clip: one syllable that fits
                position = min(position, num_samples // 4)
                syllables.append(Syllable(position, num_samples, f0_start, f0_end, vowel, peak))
            break
        syllables.append(Syllable(position, position + length, f0_start, f0_end, vowel, peak))
        pause = rng.random() < PAUSE_PROBABILITY
        position += length + _ms(rng, PAUSE_MS if pause else GAP_MS, sample_rate)
    return tuple(syllables)


def syllable_envelope(length: int, peak: float, sample_rate: int) -> np.ndarray:
    """Flat-topped envelope of one syllable: raised-cosine attack and release, ``peak`` in between."""
    attack = min(int(round(ATTACK_MS * sample_rate / 1000.0)), length // 3)
    release = min(int(round(RELEASE_MS * sample_rate / 1000.0)), length // 3)
    envelope = np.full(length, peak, dtype=np.float64)
    if attack:
        envelope[:attack] *= 0.5 - 0.5 * np.cos(np.pi * (np.arange(attack) + 0.5) / attack)
    if release:
        envelope[length - release :] *= 0.5 + 0.5 * np.cos(np.pi * (np.arange(release) + 0.5) / release)
    return envelope


def _voiced_tone(syllable: Syllable, sample_rate: int) -> np.ndarray:
    """Harmonic tone with a pitch glide and vowel formant weighting, peak-normalised to 1."""
    length = syllable.end - syllable.start
    ratio = syllable.f0_end / syllable.f0_start
    f0 = syllable.f0_start * ratio ** (np.arange(length) / max(length - 1, 1))  # exponential glide
    phase = 2.0 * np.pi * np.cumsum(f0) / sample_rate
    harmonics = np.arange(1, int(HARMONIC_CEILING_HZ // max(syllable.f0_start, syllable.f0_end)) + 1)
    frequencies = harmonics * math.sqrt(syllable.f0_start * syllable.f0_end)
    weights = np.zeros(len(harmonics))
    for centre, bandwidth, gain in zip(
        VOWEL_FORMANTS_HZ[syllable.vowel], FORMANT_BANDWIDTHS_HZ, FORMANT_GAINS, strict=True
    ):
        weights += gain / (1.0 + ((frequencies - centre) / (bandwidth / 2.0)) ** 2)  # Lorentzian resonance
    weights *= harmonics ** (-SPECTRAL_TILT)
    tone = weights @ np.sin(np.outer(harmonics, phase))
    return tone / np.abs(tone).max()


def synthesize_speech(
    syllables: tuple[Syllable, ...] | list[Syllable], num_samples: int, sample_rate: int, noise_seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Render a syllable plan as a waveform.

    Args:
        syllables: from :func:`plan_syllables`.
        num_samples: output length.
        sample_rate: Hz.
        noise_seed: seed of the breath noise (the clip seed).

    Returns:
        ``(audio, envelope)``: ``(S,)`` float32 mono waveform in [-1, 1] and ``(S,)`` float32 amplitude
        envelope in [0, 1], exactly 0 between syllables (and the waveform is exactly 0 there too).

    Raises:
        ValueError: a syllable outside ``[0, num_samples)`` or of an unknown vowel.
    """
    rng = np.random.default_rng([noise_seed, 2])
    audio = np.zeros(num_samples, dtype=np.float64)
    envelope = np.zeros(num_samples, dtype=np.float64)
    for syllable in syllables:
        if not 0 <= syllable.start < syllable.end <= num_samples:
            raise ValueError(f"syllable {syllable} lies outside the clip's {num_samples} samples")
        if syllable.vowel not in VOWEL_FORMANTS_HZ:
            raise ValueError(f"syllable vowel {syllable.vowel!r} is not one of {', '.join(VOWEL_FORMANTS_HZ)}")
        length = syllable.end - syllable.start
        shape = syllable_envelope(length, syllable.peak, sample_rate)
        breath = BREATH_LEVEL * rng.standard_normal(length)
        audio[syllable.start : syllable.end] = OUTPUT_GAIN * shape * (_voiced_tone(syllable, sample_rate) + breath)
        envelope[syllable.start : syllable.end] = shape
    return np.clip(audio, -1.0, 1.0).astype(np.float32), envelope.astype(np.float32)


def frame_envelope(envelope: np.ndarray, num_frames: int, fps: float, sample_rate: int) -> np.ndarray:
    """Average a per-sample envelope over each video frame's samples.

    Frame ``i`` covers samples ``[round(i * sr / fps), round((i + 1) * sr / fps))``.

    Returns:
        ``(num_frames,)`` float32 in [0, 1], rounded to ENVELOPE_DECIMALS; exactly 0 for silent frames.
    """
    bounds = np.round(np.arange(num_frames + 1) * sample_rate / fps).astype(np.int64)
    if bounds[-1] > len(envelope):
        raise ValueError(f"{num_frames} frames at {fps} fps need {bounds[-1]} samples, got {len(envelope)}")
    sums = np.add.reduceat(envelope[: bounds[-1]].astype(np.float64), bounds[:-1])
    means = sums / np.diff(bounds)
    return np.round(np.clip(means, 0.0, 1.0), ENVELOPE_DECIMALS).astype(np.float32)
