"""Speech: voice-activity per video frame with silero-vad (default) or an energy threshold.

silero-vad's wheel ships its model (TorchScript), so it runs offline. It scores 32 ms chunks (512 samples at
16 kHz) with a speech probability; a video frame counts as speech when the chunk under its centre scores above
``curate.vad_threshold``.

Measured on SynthTalk's synthetic speech (all 512 default clips, 33 frames each, against the ground-truth
envelope > 0.05): silero marks 43 % of frames as speech where the truth is 55 %, agreeing frame by frame on
75 %: it misses many of the short synthetic syllables, and 93 of 512 clips (18 %) fall below a speech ratio of
0.2 although every clip's true ratio is at least 0.24. The RMS energy detector agrees on 96.5 % and rejects none.
So silero does *not* detect SynthTalk's speech reliably: ``curate.vad: auto`` (the default) uses the energy
detector for datasets flagged synthetic (a ``synthtalk.json`` marker, :data:`humo.data.sources.SYNTHETIC_MARKERS`)
and silero for everything else; ``silero`` or ``energy`` force one detector.
"""

from __future__ import annotations

import functools
import logging

import numpy as np

from humo.constants import AUDIO_SAMPLE_RATE, VIDEO_FPS

logger = logging.getLogger(__name__)

SILERO_CHUNK = 512
"""Samples per silero-vad chunk at 16 kHz."""


@functools.cache
def _silero_model():
    from silero_vad import load_silero_vad

    return load_silero_vad()


def silero_probabilities(audio: np.ndarray, sample_rate: int = AUDIO_SAMPLE_RATE) -> np.ndarray:
    """silero-vad speech probability of each 512-sample chunk.

    Args:
        audio: ``(S,)`` float32 mono in [-1, 1] at 16 kHz.
        sample_rate: must be 16000 (silero's 512-sample chunks are defined at 16 kHz).

    Returns:
        ``(S // 512,)`` float32 probabilities in [0, 1].
    """
    import torch

    if sample_rate != AUDIO_SAMPLE_RATE:
        raise ValueError(f"silero-vad expects {AUDIO_SAMPLE_RATE} Hz audio here, got {sample_rate}; resample first")
    model = _silero_model()
    model.reset_states()
    samples = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))
    count = len(samples) // SILERO_CHUNK
    probs = np.zeros(count, dtype=np.float32)
    with torch.inference_mode():
        for index in range(count):
            chunk = samples[index * SILERO_CHUNK : (index + 1) * SILERO_CHUNK]
            probs[index] = float(model(chunk, sample_rate))
    return probs


def silero_frame_speech(
    audio: np.ndarray, num_frames: int, threshold: float, fps: float = VIDEO_FPS, sample_rate: int = AUDIO_SAMPLE_RATE
) -> np.ndarray:
    """Speech flag per video frame from silero-vad: the chunk under the frame's centre scores above ``threshold``.

    Returns:
        ``(num_frames,)`` bool.
    """
    probs = silero_probabilities(audio, sample_rate)
    if probs.size == 0:
        return np.zeros(num_frames, dtype=bool)
    centres = ((np.arange(num_frames) + 0.5) * sample_rate / fps).astype(np.int64) // SILERO_CHUNK
    return probs[np.minimum(centres, probs.size - 1)] > threshold


def frame_rms(
    audio: np.ndarray, num_frames: int, fps: float = VIDEO_FPS, sample_rate: int = AUDIO_SAMPLE_RATE
) -> np.ndarray:
    """RMS of the audio under each video frame: ``(num_frames,)`` float64 (0 past the end)."""
    from humo.data.sync import audio_envelope

    return audio_envelope(audio, num_frames, fps=fps, sample_rate=sample_rate)


def energy_frame_speech(rms: np.ndarray, threshold_db: float, floor: float) -> np.ndarray:
    """Speech flag per frame from its RMS: within ``threshold_db`` of the loudest frame and above ``floor``.

    Args:
        rms: ``(F,)`` RMS per frame (:func:`frame_rms`).
        threshold_db: negative dB relative to the loudest frame, e.g. -30.
        floor: absolute RMS below which a frame is never speech.

    Returns:
        ``(F,)`` bool.
    """
    rms = np.asarray(rms, dtype=np.float64)
    if rms.size == 0:
        return np.zeros(0, dtype=bool)
    level = rms.max() * 10.0 ** (threshold_db / 20.0)
    return (rms >= level) & (rms > floor)


def is_silent(rms: np.ndarray, silence_rms: float) -> bool:
    """Whether no frame of ``rms`` ``(F,)`` reaches ``silence_rms``."""
    return bool(np.size(rms) == 0 or np.max(rms) < silence_rms)
