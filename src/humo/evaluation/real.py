"""Real-video evaluation: the metrics that make sense on a real talking person without a trained real model.

For a real video and its speech (its own audio stream, or a separate file such as MuseTalk's ``sun.wav``):

1. frames are resampled to 25 fps by timestamps and decoded small (longer side :data:`ANALYSIS_SIDE`) for
   faces and quality; the audio is read and fitted to the frames;
2. faces are found with OpenCV's Haar cascade (:func:`humo.data.faces.detect_faces_opencv`); the share of
   detector frames with a face is ``face_presence``;
3. sync over the whole video with a scorer of :mod:`humo.data.sync` (``evaluate.real_sync_scorer``; the
   ``lips`` and ``mouth`` scorers see a face track cut from the full-size frames), once with the video's own
   audio, once with the audio delayed by ``shift_frames`` (a known error it must see), and against a no-sync
   baseline (the audio rolled by 2 s or more);
4. identity, when dlib's models are installed (``humo[faces]``): the cosine of dlib's face embeddings between
   the two halves of the video, and to a reference image when one is given;
5. quality: sharpness, exposure, flicker and motion of the small frames, plus the face-crop sharpness
   curation uses (:func:`humo.data.quality.sharpness`).

All figures here are **proxies** (no SynthTalk ground truth, no learned evaluator).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from humo.constants import AUDIO_SAMPLE_RATE, VIDEO_FPS
from humo.data import landmarks
from humo.data.faces import TRACK_SIZE, detect_faces_opencv, face_track, fill_missing_boxes
from humo.data.media import fit_audio_to_frames, read_audio
from humo.data.probe import FrameReader, analysis_size, probe_source, resample_indices
from humo.data.quality import sharpness as face_sharpness
from humo.data.sync import SyncScorer, make_scorer, resolve_scorer_name
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


IDENTITY_SAMPLES = 16
"""Face-track frames per half of the video whose dlib embeddings are averaged for the identity figure."""


def _null_confidences(
    scorer: SyncScorer, features: np.ndarray, audio: np.ndarray, fps: float, sample_rate: int
) -> np.ndarray | None:
    """``sync_confidence_at_zero`` for the audio rolled by evenly spread shifts of at least 2 s: the no-sync
    baseline; None when the clip is shorter than ``3 * NULL_MIN_SHIFT_S`` (no shift is far enough from both ends)."""
    duration = len(audio) / sample_rate
    if duration < 3 * NULL_MIN_SHIFT_S:
        return None
    shifts = np.linspace(NULL_MIN_SHIFT_S, duration - NULL_MIN_SHIFT_S, NULL_SHIFTS)
    values = []
    for shift in shifts:
        estimate = scorer.compare(features, np.roll(audio, int(round(shift * sample_rate))), fps, sample_rate)
        values.append(metrics.sync_figures(estimate)["sync_confidence_at_zero"])
    return np.asarray(values)


def identity_figures(crops: np.ndarray, boxes: np.ndarray, reference: np.ndarray | None = None) -> dict[str, Any]:
    """Face-embedding identity of a face track (dlib's ResNet, 128-d, the role ArcFace plays for ID-Cur).

    Args:
        crops: ``(F, S, S, 3)`` face-track crops; boxes: ``(F, 4)`` their face boxes.
        reference: an RGB image of the expected person, or ``None``.

    Returns:
        ``halves_similarity`` (cosine of the mean embeddings of the first and second half: the same person
        scores high), ``reference_similarity`` (mean embedding against the reference's face; null without
        one), ``frames`` used; or nulls with a ``note`` when dlib is not installed.
    """
    if not landmarks.available():
        return {"halves_similarity": None, "reference_similarity": None, "note": landmarks.INSTALL_HINT}
    half = len(crops) // 2
    picks = [np.linspace(lo, hi - 1, min(IDENTITY_SAMPLES, hi - lo)).round().astype(int) for lo, hi in ((0, half), (half, len(crops)))]
    means = []
    for rows in picks:
        found = landmarks.detect_faces(crops[rows], fallback=boxes[rows])
        means.append(landmarks.face_embeddings(crops[rows], found).mean(axis=0))
    figures: dict[str, Any] = {"halves_similarity": landmarks.cosine(means[0], means[1]), "reference_similarity": None}
    if reference is not None:
        figures["reference_similarity"] = landmarks.cosine(landmarks.embed_face(reference), means[0] + means[1])
    figures["frames"] = int(sum(len(rows) for rows in picks))
    return figures


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
    identity = figures.get("identity") or {}
    halves = identity.get("halves_similarity")
    who = f"; identity across halves {halves:.3f}" if halves is not None else ""
    if identity.get("reference_similarity") is not None:
        who += f", to the reference {identity['reference_similarity']:.3f}"
    return (
        f"{Path(figures['video']).name}: face presence {figures['face_presence']:.2f}; sync as played "
        f"({figures.get('sync_scorer', 'motion')}): own audio {own['sync_confidence_at_zero']:.3f} (offset "
        f"{own['sync_offset']:+.0f}), audio shifted by {figures['shift_frames']} frames "
        f"{shifted['sync_confidence_at_zero']:.3f} (offset {shifted['sync_offset']:+.0f}); no-sync baseline p95 "
        f"{baseline}{who}"
    )


def evaluate_real_video(
    video: str | Path,
    audio: str | Path | None,
    shift_frames: int,
    max_offset: int,
    scorer: str = "auto",
    reference: str | Path | None = None,
    weights: str | Path | None = None,
    side: int = ANALYSIS_SIDE,
    detect_stride: int = DETECT_STRIDE,
) -> dict[str, Any]:
    """Sync (own audio vs a shifted copy vs no sync), identity, face presence and quality of a real video.

    Args:
        video: the video file (its own audio stream is used when ``audio`` is ``None``).
        audio: a speech file that goes with the video (the MuseTalk sample ships its audio separately).
        shift_frames: the delay, in frames, of the deliberately shifted copy of the audio.
        max_offset: offsets ``-max_offset..max_offset`` frames are searched.
        scorer: a name in :data:`humo.data.sync.SYNC_SCORERS`, or ``auto`` (``lips`` with dlib, else ``mouth``).
        reference: an image of the person, for ``identity.reference_similarity``.
        weights: a local ``syncnet_v2.model`` when ``scorer`` is ``syncnet``.
        side: frames are decoded at most this longer side for faces and quality.
        detect_stride: run the face detector on every ``detect_stride``-th frame.

    Returns:
        A JSON-ready dict: ``video``, ``audio``, ``num_frames``, ``fps``, ``size``, ``analysis_scale``,
        ``sync_scorer``, ``own_audio`` and ``shifted_audio`` (sync figures, see :func:`metrics.sync_figures`,
        plus ``scores``), ``null`` (the same figure for audio rolled far out of place: what "no sync" scores
        on this video, and the percentile of the own audio in it; nulls with a ``note`` for clips under 6 s),
        ``shift_frames``, ``face_presence``, ``identity`` (:func:`identity_figures`), ``quality`` (incl.
        ``face_sharpness``), ``provenance`` ("proxy") and ``seconds``.

    Raises:
        ValueError: no face is found in any frame, or neither the video nor ``audio`` holds audio.
        humo.data.media.MediaError: a file cannot be read.
    """
    start = time.perf_counter()
    video = Path(video)
    name = resolve_scorer_name(scorer, synthetic=False)
    sync = make_scorer(name, max_offset, weights=weights)  # a missing weights file fails before any decoding
    probe = probe_source(video)
    indices = resample_indices(probe.timestamps, probe.duration, VIDEO_FPS)
    fps, sample_rate = float(VIDEO_FPS), AUDIO_SAMPLE_RATE
    sound = fit_audio_to_frames(read_audio(audio if audio is not None else video, sample_rate), len(indices), fps, sample_rate)
    size = analysis_size(probe.width, probe.height, side)
    scale = size[0] / probe.width
    frames = FrameReader(video, size).get(indices)
    logger.info("evaluating %s: %d frames at %.2f fps, analysed at %s", video.name, len(frames), fps, frames.shape[1:3])
    detections = np.full((len(frames), 4), np.nan)
    detections[::detect_stride] = detect_faces_opencv(frames[::detect_stride])
    presence = metrics.face_presence_ratio(detections[::detect_stride])
    if presence == 0.0:
        raise ValueError(f"{video}: the face detector found no face in any frame; sync cannot be measured")
    boxes = fill_missing_boxes(detections)
    full = FrameReader(video)
    track = face_track(lambda rows: full.get(indices[rows]), np.arange(len(indices)), boxes / scale, TRACK_SIZE)
    view, view_boxes = (track.crops, track.boxes) if sync.uses_face_track else (frames, boxes)
    features = sync.visual(view, view_boxes)
    own = sync.compare(features, sound, fps, sample_rate)
    shifted = sync.compare(features, metrics.shift_audio(sound, shift_frames, fps, sample_rate), fps, sample_rate)
    null = _null_confidences(sync, features, sound, fps, sample_rate)
    own_figures = metrics.sync_figures(own)
    quality = metrics.quality_figures(frames)
    quality["face_sharpness"] = face_sharpness(frames, boxes)
    ref_image = None
    if reference is not None:
        from PIL import Image

        ref_image = np.asarray(Image.open(reference).convert("RGB"))
    return {
        "video": str(video),
        "audio": str(audio) if audio is not None else None,
        "num_frames": len(frames),
        "fps": fps,
        "size": [probe.width, probe.height],
        "analysis_scale": scale,
        "sync_scorer": name,
        "own_audio": {**own_figures, "scores": np.round(own.scores, 4).tolist()},
        "null": null_summary(null, own_figures["sync_confidence_at_zero"], len(sound) / sample_rate),
        "shifted_audio": {**metrics.sync_figures(shifted), "scores": np.round(shifted.scores, 4).tolist()},
        "shift_frames": shift_frames,
        "max_offset": max_offset,
        "face_presence": presence,
        "identity": identity_figures(track.crops, track.boxes, ref_image),
        "quality": quality,
        "provenance": "proxy",
        "seconds": round(time.perf_counter() - start, 2),
    }
