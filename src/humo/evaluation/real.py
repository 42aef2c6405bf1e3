"""Real-video evaluation: the metrics that make sense on a real talking person without a trained real model.

For a real video and its speech (e.g. ``../shared/data/real/musetalk_sun.mp4`` + ``musetalk_sun.wav``):

1. the audio is muxed into a temporary copy of the video (:func:`humo.data.media.mux_audio`, AAC delay
   handled) and read back as one clip, exactly as a generated video would be;
2. faces are found with OpenCV's Haar cascade (:func:`humo.data.faces.detect_faces_opencv`) on frames
   downscaled to at most :data:`ANALYSIS_SIDE` pixels; the share of frames with a face is ``face_presence``;
3. sync: the generic mouth-motion estimator of :mod:`humo.data.sync` on the gap-filled face boxes, once with
   the video's own audio and once with the audio delayed by ``shift_frames`` (a known error it must see);
4. quality: sharpness, exposure, flicker and motion of the (downscaled) frames, plus the face-crop sharpness
   curation uses (:func:`humo.data.quality.sharpness`).

All figures here are **proxies** (no SynthTalk ground truth, no learned evaluator).
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from humo.data.faces import detect_faces_opencv, fill_missing_boxes
from humo.data.media import mux_audio, read_clip
from humo.data.quality import sharpness as face_sharpness
from humo.evaluation import metrics

logger = logging.getLogger(__name__)

ANALYSIS_SIDE = 384
"""Frames are downscaled so that their longer side is at most this many pixels before analysis."""
DETECT_STRIDE = 5
"""The face detector runs on every DETECT_STRIDE-th frame (Haar costs ~0.15 s a frame on a busy 2-core
CPU); boxes in between are interpolated, and face presence is the share of detector frames with a face."""
NULL_SHIFTS = 24
"""Circular shifts of the audio (by at least NULL_MIN_SHIFT_S) that give the no-sync baseline."""
NULL_MIN_SHIFT_S = 2.0


def _downscale(frames: np.ndarray, side: int) -> tuple[np.ndarray, float]:
    """Frames resized so their longer side is at most ``side``; returns them and the scale factor used."""
    import cv2

    height, width = frames.shape[1:3]
    scale = min(1.0, side / max(height, width))
    if scale == 1.0:
        return frames, 1.0
    size = (max(2, round(width * scale)), max(2, round(height * scale)))
    return np.stack([cv2.resize(frame, size, interpolation=cv2.INTER_AREA) for frame in frames]), scale


def _null_confidences(
    frames: np.ndarray, boxes: np.ndarray, audio: np.ndarray, fps: float, sample_rate: int, max_offset: int
) -> np.ndarray | None:
    """``sync_confidence_at_zero`` for the audio rolled by evenly spread shifts of at least 2 s: the no-sync
    baseline; None when the clip is shorter than ``3 * NULL_MIN_SHIFT_S`` (no shift is far enough from both ends)."""
    duration = len(audio) / sample_rate
    if duration < 3 * NULL_MIN_SHIFT_S:
        return None
    shifts = np.linspace(NULL_MIN_SHIFT_S, duration - NULL_MIN_SHIFT_S, NULL_SHIFTS)
    values = []
    for shift in shifts:
        rolled = np.roll(audio, int(round(shift * sample_rate)))
        estimate = metrics.sync_motion(frames, boxes, rolled, fps, sample_rate, max_offset)
        values.append(metrics.sync_figures(estimate)["sync_confidence_at_zero"])
    return np.asarray(values)


def null_summary(null: np.ndarray | None, own_confidence: float, duration_s: float) -> dict[str, Any]:
    """The no-sync baseline as reported: mean, p95 and the own audio's percentile, or nulls with a note saying
    why it could not be computed (never zeros, which would read as a measured baseline)."""
    what = f"sync_confidence_at_zero with the audio rolled by {NULL_SHIFTS} shifts >= {NULL_MIN_SHIFT_S} s"
    if null is None:
        return {
            "what": what, "mean": None, "p95": None, "own_audio_percentile": None,
            "note": f"not computed: the clip is {duration_s:.1f} s, the baseline needs at least "
                    f"{3 * NULL_MIN_SHIFT_S:.0f} s (shifts of {NULL_MIN_SHIFT_S} s or more from both ends)",
        }
    return {
        "what": what,
        "mean": float(np.mean(null)),
        "p95": float(np.percentile(null, 95)),
        "own_audio_percentile": float(np.mean(null < own_confidence) * 100),
    }


def describe(figures: dict[str, Any]) -> str:
    """One log line of :func:`evaluate_real_video`'s figures."""
    own, shifted, p95 = figures["own_audio"], figures["shifted_audio"], figures["null"]["p95"]
    baseline = f"{p95:.3f}" if p95 is not None else "not computed (clip too short)"
    return (
        f"{Path(figures['video']).name}: face presence {figures['face_presence']:.2f}; sync as played: own audio "
        f"{own['sync_confidence_at_zero']:.3f} (offset {own['sync_offset']:+d}), audio shifted by "
        f"{figures['shift_frames']} frames {shifted['sync_confidence_at_zero']:.3f} (offset "
        f"{shifted['sync_offset']:+d}); no-sync baseline p95 {baseline}"
    )


def evaluate_real_video(
    video: str | Path,
    audio: str | Path | None,
    shift_frames: int,
    max_offset: int,
    side: int = ANALYSIS_SIDE,
    detect_stride: int = DETECT_STRIDE,
) -> dict[str, Any]:
    """Sync (own audio vs a shifted copy), face presence and quality of a real talking-person video.

    Args:
        video: the video file (its own audio stream is used when ``audio`` is ``None``).
        audio: a speech file to mux in (the MuseTalk sample ships its audio separately), or ``None``.
        shift_frames: the delay, in frames, of the deliberately shifted copy of the audio.
        max_offset: offsets ``-max_offset..max_offset`` frames are searched.
        side: frames are downscaled to at most this longer side for analysis.
        detect_stride: run the face detector on every ``detect_stride``-th frame.

    Returns:
        A JSON-ready dict: ``video``, ``audio``, ``num_frames``, ``fps``, ``size``, ``analysis_scale``,
        ``own_audio`` and ``shifted_audio`` (sync figures, see :func:`metrics.sync_figures`, plus
        ``scores``), ``null`` (the same figure for audio rolled far out of place: what "no sync" scores on
        this video, and the percentile of the own audio in it; nulls with a ``note`` for clips
        under 6 s), ``shift_frames``, ``face_presence``, ``quality`` (incl. ``face_sharpness``),
        ``provenance`` ("proxy") and ``seconds``.

    Raises:
        ValueError: no face is found in any frame, or neither the video nor ``audio`` holds audio.
    """
    start = time.perf_counter()
    video = Path(video)
    with tempfile.TemporaryDirectory(prefix="humo-real-eval-") as tmp:
        source = video
        if audio is not None:
            source = mux_audio(video, audio, Path(tmp) / f"{video.stem}_with_audio.mp4")
        clip = read_clip(source)
    if clip.audio is None:
        raise ValueError(f"{video} has no audio stream; pass the speech file as audio")
    height, width = clip.frames.shape[1:3]
    frames, scale = _downscale(clip.frames, side)
    sound, fps, sample_rate = clip.audio, clip.fps, clip.sample_rate
    del clip  # free the full-size frames early
    logger.info("evaluating %s: %d frames at %.2f fps, analysed at %s", video.name, len(frames), fps, frames.shape[1:3])
    detections = np.full((len(frames), 4), np.nan)
    detections[::detect_stride] = detect_faces_opencv(frames[::detect_stride])
    presence = metrics.face_presence_ratio(detections[::detect_stride])
    if presence == 0.0:
        raise ValueError(f"{video}: the face detector found no face in any frame; sync cannot be measured")
    boxes = fill_missing_boxes(detections)
    own = metrics.sync_motion(frames, boxes, sound, fps, sample_rate, max_offset)
    shifted_audio = metrics.shift_audio(sound, shift_frames, fps, sample_rate)
    shifted = metrics.sync_motion(frames, boxes, shifted_audio, fps, sample_rate, max_offset)
    null = _null_confidences(frames, boxes, sound, fps, sample_rate, max_offset)
    own_figures = metrics.sync_figures(own)
    quality = metrics.quality_figures(frames)
    quality["face_sharpness"] = face_sharpness(frames, boxes)
    return {
        "video": str(video),
        "audio": str(audio) if audio is not None else None,
        "num_frames": len(frames),
        "fps": fps,
        "size": [width, height],
        "analysis_scale": scale,
        "own_audio": {**own_figures, "scores": np.round(own.scores, 4).tolist()},
        "null": null_summary(null, own_figures["sync_confidence_at_zero"], len(sound) / sample_rate),
        "shifted_audio": {**metrics.sync_figures(shifted), "scores": np.round(shifted.scores, 4).tolist()},
        "shift_frames": shift_frames,
        "max_offset": max_offset,
        "face_presence": presence,
        "quality": quality,
        "provenance": "proxy",
        "seconds": round(time.perf_counter() - start, 2),
    }
