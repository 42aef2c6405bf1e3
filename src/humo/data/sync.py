"""Audio-visual synchronisation: a model-free offset search in the spirit of SyncNet.

SyncNet (Chung & Zisserman, 2016) embeds the mouth region and the audio, slides the audio over the video by
``-K..K`` frames and reports the offset of the smallest embedding distance, with a *confidence* equal to the
median distance minus the minimum distance. This module keeps that search and that confidence but replaces the
learned embeddings with two hand-made 1-D signals that need no weights:

* **mouth motion** (:func:`mouth_motion`): how much the mouth region changes from one frame to the next (mean
  absolute difference of a grey, box-aligned crop of the lower-middle face);
* **audio envelope** (:func:`audio_envelope`): the RMS of the audio under each video frame. The search compares
  the mouth motion with the *change* of the envelope (``|envelope[t] - envelope[t-1]|``): a mouth moves when the
  sound starts or stops, not while it is steady. On SynthTalk this finds the true offset of every clip we
  measured (64 of 64 in sync, 64 of 64 shifted by 8 frames), where comparing mouth *opening* with the envelope
  level found only 61 %.

Per offset ``k`` the distance is ``1 - pearson(motion[t], activity[t + k])`` over the overlap (0 = perfectly
correlated, 2 = anti-correlated). **Sign convention: ``offset > 0`` means the audio lags the video** (the sound
of frame ``t`` is heard at frame ``t + offset``); to repair a clip, drop the first ``offset`` frames of audio.

Scorers are pluggable (:class:`SyncScorer`): ``MotionEnvelopeScorer`` is the default; a user with real SyncNet
weights can register a scorer that returns the same :class:`SyncEstimate` from frames and audio.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Protocol, runtime_checkable

import numpy as np

from humo.constants import AUDIO_SAMPLE_RATE, VIDEO_FPS

logger = logging.getLogger(__name__)

MOUTH_REGION = (0.25, 0.60, 0.75, 0.95)
"""Mouth region inside a face box as fractions (x0, y0, x1, y1) of its width and height."""
MOUTH_CROP_SIZE = (32, 16)
"""(width, height) every mouth crop is resized to, so boxes of any size give comparable motion values."""
_EPS = 1e-8


@dataclass(frozen=True)
class SyncEstimate:
    """Result of an offset search.

    Attributes:
        offset: best offset in frames; ``> 0`` means the audio lags the video.
        confidence: median distance minus the best distance (SyncNet's definition); 0 = no preference.
        distance: distance at the best offset, ``1 - correlation`` in [0, 2].
        scores: ``(2 * max_offset + 1,)`` distance per offset, index ``i`` is offset ``i - max_offset``.
    """

    offset: int
    confidence: float
    distance: float
    scores: np.ndarray


def mouth_crops(frames: np.ndarray, face_boxes: np.ndarray) -> np.ndarray:
    """Grey crops of the mouth region of each frame, resized to :data:`MOUTH_CROP_SIZE`.

    Args:
        frames: ``(F, H, W, 3)`` uint8 RGB.
        face_boxes: ``(F, 4)`` float ``[x0, y0, x1, y1]`` pixel boxes in ``frames``' coordinates.

    Returns:
        ``(F, 16, 32)`` float32 grey levels in [0, 255].
    """
    import cv2

    frames = np.asarray(frames)
    boxes = np.asarray(face_boxes, dtype=np.float64)
    if frames.ndim != 4 or boxes.shape != (len(frames), 4):
        raise ValueError(f"frames (F,H,W,3) and face_boxes (F,4) must agree, got {frames.shape} and {boxes.shape}")
    height, width = frames.shape[1:3]
    rx0, ry0, rx1, ry1 = MOUTH_REGION
    crops = np.empty((len(frames), MOUTH_CROP_SIZE[1], MOUTH_CROP_SIZE[0]), dtype=np.float32)
    for index, (frame, (x0, y0, x1, y1)) in enumerate(zip(frames, boxes, strict=True)):
        bw, bh = x1 - x0, y1 - y0
        cx0 = int(np.clip(np.floor(x0 + rx0 * bw), 0, width - 1))
        cx1 = int(np.clip(np.ceil(x0 + rx1 * bw), cx0 + 1, width))
        cy0 = int(np.clip(np.floor(y0 + ry0 * bh), 0, height - 1))
        cy1 = int(np.clip(np.ceil(y0 + ry1 * bh), cy0 + 1, height))
        grey = cv2.cvtColor(np.ascontiguousarray(frame[cy0:cy1, cx0:cx1]), cv2.COLOR_RGB2GRAY)
        crops[index] = cv2.resize(grey, MOUTH_CROP_SIZE, interpolation=cv2.INTER_AREA)
    return crops


def mouth_motion(frames: np.ndarray, face_boxes: np.ndarray) -> np.ndarray:
    """Mouth-region activity per frame: mean absolute change of the mouth crop since the previous frame.

    Args:
        frames: ``(F, H, W, 3)`` uint8 RGB.
        face_boxes: ``(F, 4)`` float pixel boxes ``[x0, y0, x1, y1]`` (one per frame, no NaN).

    Returns:
        ``(F,)`` float64, ``>= 0``; frame 0 has no predecessor and gets the value of frame 1.
    """
    crops = mouth_crops(frames, face_boxes)
    motion = np.zeros(len(crops), dtype=np.float64)
    if len(crops) > 1:
        motion[1:] = np.abs(np.diff(crops, axis=0)).mean(axis=(1, 2))
        motion[0] = motion[1]
    return motion


def audio_envelope(
    audio: np.ndarray, num_frames: int, fps: float = VIDEO_FPS, sample_rate: int = AUDIO_SAMPLE_RATE
) -> np.ndarray:
    """RMS of the audio under each video frame.

    Args:
        audio: ``(S,)`` float mono, sample 0 plays with frame 0.
        num_frames: frames of the video the audio goes with.
        fps: video frame rate.
        sample_rate: audio sample rate.

    Returns:
        ``(num_frames,)`` float64 RMS per frame (0 past the audio's end).
    """
    audio = np.asarray(audio, dtype=np.float64).reshape(-1)
    edges = np.round(np.arange(num_frames + 1) * sample_rate / fps).astype(np.int64)
    energy = np.concatenate([[0.0], np.cumsum(audio**2)])
    starts = np.minimum(edges[:-1], len(audio))
    ends = np.minimum(edges[1:], len(audio))
    counts = np.maximum(edges[1:] - edges[:-1], 1)
    return np.sqrt((energy[ends] - energy[starts]) / counts)


def envelope_activity(envelope: np.ndarray) -> np.ndarray:
    """``|envelope[t] - envelope[t-1]|`` (frame 0 copies frame 1): the audio counterpart of mouth motion."""
    envelope = np.asarray(envelope, dtype=np.float64)
    activity = np.zeros_like(envelope)
    if len(envelope) > 1:
        activity[1:] = np.abs(np.diff(envelope))
        activity[0] = activity[1]
    return activity


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a = a - a.mean()
    b = b - b.mean()
    denom = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denom) if denom > _EPS else 0.0


def estimate_sync(mouth: np.ndarray, envelope: np.ndarray, max_offset: int) -> SyncEstimate:
    """Search the audio-video offset that best matches mouth motion with the change of the audio envelope.

    Args:
        mouth: ``(F,)`` mouth motion (:func:`mouth_motion`).
        envelope: ``(F,)`` audio envelope (:func:`audio_envelope`), compared through :func:`envelope_activity`.
        max_offset: offsets ``-max_offset..max_offset`` frames are tried; ``F`` must be at least
            ``max_offset + 3`` so every offset keeps 3 overlapping frames.

    Returns:
        :class:`SyncEstimate`; ``offset > 0`` means the audio lags the video. A flat signal (no motion or no
        sound) gives distance 1 at every offset and confidence 0.

    Raises:
        ValueError: signals of different lengths, negative ``max_offset``, or too few frames for it.
    """
    mouth = np.asarray(mouth, dtype=np.float64).reshape(-1)
    envelope = np.asarray(envelope, dtype=np.float64).reshape(-1)
    if mouth.shape != envelope.shape:
        raise ValueError(f"mouth {mouth.shape} and envelope {envelope.shape} must have one value per frame each")
    _check_search(len(mouth), max_offset)
    return _search_offsets(mouth, envelope_activity(envelope), max_offset, _pearson)


def _check_search(num_frames: int, max_offset: int) -> None:
    if max_offset < 0:
        raise ValueError(f"max_offset={max_offset} must be >= 0")
    if num_frames < max_offset + 3:
        raise ValueError(f"{num_frames} frames are too few for max_offset={max_offset}; use at least {max_offset + 3}")


def _search_offsets(
    video: np.ndarray, audio: np.ndarray, max_offset: int, similarity: Callable[[np.ndarray, np.ndarray], float]
) -> SyncEstimate:
    """The search both estimators share: per offset ``k``, ``1 - similarity`` of the overlapping rows when the
    audio lags the video by ``k`` (the sound of frame ``t`` is at ``t + k``); SyncNet's confidence."""
    num_frames = len(video)
    offsets = np.arange(-max_offset, max_offset + 1)
    scores = np.empty(len(offsets), dtype=np.float64)
    for index, offset in enumerate(offsets):
        if offset >= 0:
            video_part, audio_part = video[: num_frames - offset], audio[offset:]
        else:
            video_part, audio_part = video[-offset:], audio[: num_frames + offset]
        scores[index] = 1.0 - similarity(video_part, audio_part)
    best = int(np.argmin(scores))
    confidence = float(np.median(scores) - scores[best])
    return SyncEstimate(offset=int(offsets[best]), confidence=confidence, distance=float(scores[best]), scores=scores)


# =====================================================================================================
# Several features at once: lip shape against speech bands (the estimator for real video)
# =====================================================================================================

SYNC_BAND_HZ = (1.0, 8.0)
"""Pass band of every per-frame signal before the search: syllable-rate change (about 2-7 Hz) stays, head
drift, lighting and the slow swell of loudness (below 1 Hz) go."""
SPEECH_BANDS = 8
"""Log-mel bands (up to 8 kHz) describing the speech under each frame."""
CCA_RIDGE = 1e-3
"""Ridge added to each covariance (relative to its mean variance) so short or flat runs stay well posed."""
LIP_FEATURES = ("inner_aperture", "outer_aperture", "jaw_drop", "mouth_width")
"""What :func:`lip_geometry` measures, each over the face width (landmark 0 to 16)."""
DARK_PERCENTILE = 20
"""Mouth pixels below this percentile of the run count as the dark mouth cavity (:func:`mouth_shape`)."""
PROFILE_COMPONENTS = 2
"""Principal components of the mouth crops' vertical profile kept by :func:`mouth_shape`."""


def speech_bands(
    audio: np.ndarray, num_frames: int, fps: float = VIDEO_FPS, sample_rate: int = AUDIO_SAMPLE_RATE,
    bands: int = SPEECH_BANDS,
) -> np.ndarray:
    """Log-mel energy of the audio under each video frame.

    Loudness alone (:func:`audio_envelope`) misleads on real speech: breaths, laughter and loud consonants
    weigh as much as open vowels. A few mel bands let the search weigh vowels (low bands) against
    fricatives (high bands), which is what an open mouth follows.

    Args:
        audio: ``(S,)`` float mono, sample 0 plays with frame 0.
        num_frames: frames of the video.
        fps: video frame rate.
        sample_rate: audio sample rate.
        bands: number of mel bands.

    Returns:
        ``(num_frames, bands)`` float64 ``log(energy + 1e-8)``; frames past the audio's end are silent.
    """
    import librosa

    audio = np.asarray(audio, dtype=np.float64).reshape(-1)
    width = int(round(sample_rate / fps))
    starts = np.round(np.arange(num_frames) * sample_rate / fps).astype(np.int64)
    padded = np.concatenate([audio, np.zeros(width)])
    index = np.minimum(starts[:, None] + np.arange(width)[None, :], len(padded) - 1)
    windows = padded[index] * np.hanning(width)[None, :]
    power = np.abs(np.fft.rfft(windows, axis=1)) ** 2
    mel = librosa.filters.mel(sr=sample_rate, n_fft=width, n_mels=bands, fmax=min(8000.0, sample_rate / 2))
    return np.log(power @ mel.T.astype(np.float64) + _EPS)


def bandpass(signal: np.ndarray, fps: float, band: tuple[float, float] = SYNC_BAND_HZ) -> np.ndarray:
    """Zero-phase band-pass of ``(F,)`` or ``(F, K)`` per-frame signals (2nd-order Butterworth, forwards and
    backwards, so no delay is added to either side of the search)."""
    from scipy.signal import butter, sosfiltfilt

    signal = np.asarray(signal, dtype=np.float64)
    high = min(band[1], 0.45 * fps)
    sos = butter(2, [band[0], high], btype="band", fs=fps, output="sos")
    padlen = min(3 * (2 * len(sos) + 1), len(signal) - 1)
    return sosfiltfilt(sos, signal, axis=0, padlen=max(padlen, 0))


def canonical_correlation(x: np.ndarray, y: np.ndarray, ridge: float = CCA_RIDGE) -> float:
    """First canonical correlation of ``x`` ``(N, P)`` and ``y`` ``(N, Q)``: the best Pearson correlation
    between any weighting of ``x``'s columns and any weighting of ``y``'s, in [0, 1]."""
    x = x - x.mean(axis=0)
    y = y - y.mean(axis=0)
    n = len(x)

    def whitener(a: np.ndarray) -> np.ndarray:
        cov = a.T @ a / n
        scale = max(float(np.trace(cov)) / cov.shape[0], _EPS)
        return np.linalg.inv(np.linalg.cholesky(cov + ridge * scale * np.eye(cov.shape[0])))

    cross = whitener(x) @ (x.T @ y / n) @ whitener(y).T
    return float(np.clip(np.linalg.svd(cross, compute_uv=False)[0], 0.0, 1.0))


def estimate_sync_bands(visual: np.ndarray, bands: np.ndarray, max_offset: int, fps: float) -> SyncEstimate:
    """Offset search of ``visual`` features against speech ``bands``: per offset, one minus their first
    canonical correlation after :func:`bandpass`.

    Args:
        visual: ``(F, P)`` per-frame visual features (:func:`lip_geometry`, :func:`mouth_shape`).
        bands: ``(F, Q)`` per-frame speech features (:func:`speech_bands`).
        max_offset: offsets ``-max_offset..max_offset`` frames are tried (``offset > 0``: the audio lags).
        fps: frame rate (for the band-pass).

    Returns:
        :class:`SyncEstimate` with distances ``1 - rho`` in [0, 1].

    Raises:
        ValueError: lengths differ, or fewer than ``max_offset + 3`` frames.
    """
    visual, bands = np.atleast_2d(np.asarray(visual, float).T).T, np.atleast_2d(np.asarray(bands, float).T).T
    if len(visual) != len(bands):
        raise ValueError(f"visual {visual.shape} and bands {bands.shape} must have one row per frame each")
    _check_search(len(visual), max_offset)
    return _search_offsets(bandpass(visual, fps), bandpass(bands, fps), max_offset, canonical_correlation)


def lip_geometry(points: np.ndarray) -> np.ndarray:
    """Lip shape per frame from 68 iBUG landmarks: :data:`LIP_FEATURES`, each over the face width.

    Args:
        points: ``(F, 68, 2)`` landmarks (:func:`humo.data.landmarks.face_landmarks`).

    Returns:
        ``(F, 4)`` float64: inner-lip aperture (mean of the three inner vertical gaps 61-67, 62-66, 63-65),
        outer aperture (51-57), jaw drop (nose tip 33 to chin 8) and mouth width (48-54).
    """
    points = np.asarray(points, dtype=np.float64)

    def gap(a: int, b: int) -> np.ndarray:
        return np.linalg.norm(points[:, a] - points[:, b], axis=1)

    width = np.maximum(gap(0, 16), _EPS)
    inner = (gap(61, 67) + gap(62, 66) + gap(63, 65)) / 3
    return np.stack([inner, gap(51, 57), gap(8, 33), gap(48, 54)], axis=1) / width[:, None]


def mouth_shape(frames: np.ndarray, face_boxes: np.ndarray) -> np.ndarray:
    """Model-free lip shape per frame from the grey mouth crops (:func:`mouth_crops`).

    An open mouth shows a dark cavity: the share of dark pixels (below the run's 20th percentile), the
    crop's contrast and brightness, and the two leading components of its vertical brightness profile
    (where along the height the dark band lies) follow the aperture without a landmark model.

    Args:
        frames: ``(F, H, W, 3)`` uint8 RGB (a face track is best: the face is large and steady).
        face_boxes: ``(F, 4)`` face boxes in ``frames``' pixels.

    Returns:
        ``(F, 5)`` float64 features.
    """
    crops = mouth_crops(frames, face_boxes).astype(np.float64)
    flat = crops.reshape(len(crops), -1)
    dark = (flat < np.percentile(flat, DARK_PERCENTILE)).mean(axis=1)
    profile = crops.mean(axis=2)
    profile -= profile.mean(axis=0)
    left, values, _ = np.linalg.svd(profile, full_matrices=False)
    keep = min(PROFILE_COMPONENTS, len(values))
    return np.column_stack([dark, flat.std(axis=1), flat.mean(axis=1), left[:, :keep] * values[:keep]])


# =====================================================================================================
# Pluggable scorers
# =====================================================================================================


@runtime_checkable
class SyncScorer(Protocol):
    """Anything that estimates the sync of a clip from its frames, face boxes and audio.

    A scorer works in two steps so that one video can be compared with many audio tracks (shifted copies, the
    no-sync baseline) at the cost of one look at the frames: ``visual(frames, boxes)`` -> per-frame features,
    ``compare(features, audio, fps, sample_rate)`` -> :class:`SyncEstimate`; calling it does both.

    ``uses_face_track``: the scorer wants a :class:`humo.data.faces.FaceTrack` (large, steady face crops cut
    from full-size frames) as ``frames``, not the small analysis frames. ``min_confidence``: its default
    acceptance threshold (confidences of different scorers are on different scales).
    """

    max_offset: int
    uses_face_track: bool
    min_confidence: float

    def visual(self, frames: np.ndarray, face_boxes: np.ndarray) -> np.ndarray:
        """``frames`` ``(F, H, W, 3)`` uint8 with boxes ``(F, 4)`` -> ``(F, ...)`` per-frame features."""
        ...

    def compare(self, features: np.ndarray, audio: np.ndarray, fps: float, sample_rate: int) -> SyncEstimate:
        """The offset of ``audio`` ``(S,)`` against the features of :meth:`visual`."""
        ...

    def __call__(
        self, frames: np.ndarray, face_boxes: np.ndarray, audio: np.ndarray, fps: float, sample_rate: int
    ) -> SyncEstimate:
        """``compare(visual(frames, face_boxes), audio, fps, sample_rate)``."""
        ...


class _TwoStepScorer:
    """``__call__`` for scorers that define :meth:`visual` and :meth:`compare`."""

    max_offset: int

    def __call__(
        self, frames: np.ndarray, face_boxes: np.ndarray, audio: np.ndarray, fps: float, sample_rate: int
    ) -> SyncEstimate:
        """See :class:`SyncScorer`."""
        return self.compare(self.visual(frames, face_boxes), audio, fps, sample_rate)


@dataclass(frozen=True)
class MotionEnvelopeScorer(_TwoStepScorer):
    """The model-free scorer for SynthTalk: :func:`mouth_motion` against :func:`audio_envelope`."""

    max_offset: int
    uses_face_track: ClassVar[bool] = False
    min_confidence: ClassVar[float] = 0.2

    def visual(self, frames: np.ndarray, face_boxes: np.ndarray) -> np.ndarray:
        """``(F,)`` :func:`mouth_motion`."""
        return mouth_motion(frames, face_boxes)

    def compare(self, features: np.ndarray, audio: np.ndarray, fps: float, sample_rate: int) -> SyncEstimate:
        """:func:`estimate_sync` against the envelope's change."""
        envelope = audio_envelope(audio, len(features), fps=fps, sample_rate=sample_rate)
        return estimate_sync(features, envelope, self.max_offset)


class _BandsScorer(_TwoStepScorer):
    """Visual features of a face track against :func:`speech_bands` (:func:`estimate_sync_bands`)."""

    uses_face_track: ClassVar[bool] = True
    min_confidence: ClassVar[float] = 0.05

    def compare(self, features: np.ndarray, audio: np.ndarray, fps: float, sample_rate: int) -> SyncEstimate:
        """:func:`estimate_sync_bands` of the features against the speech bands."""
        bands = speech_bands(audio, len(features), fps=fps, sample_rate=sample_rate)
        return estimate_sync_bands(features, bands, self.max_offset, fps)


@dataclass(frozen=True)
class MouthShapeScorer(_BandsScorer):
    """Model-free, for real video: :func:`mouth_shape` of a face track against :func:`speech_bands`."""

    max_offset: int

    def visual(self, frames: np.ndarray, face_boxes: np.ndarray) -> np.ndarray:
        """``(F, 5)`` :func:`mouth_shape`."""
        return mouth_shape(frames, face_boxes)


@dataclass(frozen=True)
class LipGeometryScorer(_BandsScorer):
    """For real video, with the ``faces`` extra: dlib's 68 landmarks (:func:`lip_geometry`) of a face track
    against :func:`speech_bands`."""

    max_offset: int

    def visual(self, frames: np.ndarray, face_boxes: np.ndarray) -> np.ndarray:
        """``(F, 4)`` :func:`lip_geometry` of dlib's landmarks (dlib's own face boxes where it finds one)."""
        from humo.data import landmarks

        boxes = landmarks.detect_faces(frames, fallback=face_boxes)
        return lip_geometry(landmarks.face_landmarks(frames, boxes))


SYNC_SCORERS: dict[str, type] = {"motion": MotionEnvelopeScorer, "mouth": MouthShapeScorer, "lips": LipGeometryScorer}
"""Name (``curate.sync_scorer``, ``evaluate.sync_scorer``) -> model-free scorer class taking ``max_offset``."""
WEIGHTED_SCORERS = ("syncnet",)
"""Scorers that load weights from a local file (``humo.data.syncnet``, imported only when asked for)."""


def scorer_view(
    scorer: SyncScorer, frames: np.ndarray, face_boxes: np.ndarray, crop_size: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The ``(frames, boxes)`` ``scorer`` wants: a face track of frames held in memory when it uses one (a
    generated or decoded video), else the frames as they are."""
    from humo.data.faces import TRACK_SIZE, face_track

    if not scorer.uses_face_track:
        return frames, face_boxes
    track = face_track(lambda rows: frames[rows], np.arange(len(frames)), face_boxes, crop_size or TRACK_SIZE)
    return track.crops, track.boxes


def real_video_scorer() -> str:
    """The scorer ``auto`` picks for real video: ``lips`` when dlib's models are installed, else ``mouth``."""
    from humo.data import landmarks

    return "lips" if landmarks.available() else "mouth"


def resolve_scorer_name(name: str, synthetic: bool) -> str:
    """``auto`` -> ``motion`` for synthetic sources (exact boxes, drawn mouths), :func:`real_video_scorer`
    otherwise; any other name is returned as it is."""
    if name != "auto":
        return name
    return "motion" if synthetic else real_video_scorer()


def make_scorer(name: str, max_offset: int, weights: str | Path | None = None) -> SyncScorer:
    """The scorer registered under ``name``; ``syncnet`` loads ``weights`` (a local ``syncnet_v2.model``).

    Raises:
        ValueError: unknown name (the message lists the registered ones), or ``syncnet`` without weights.
        FileNotFoundError: the weights file does not exist.
    """
    if name in WEIGHTED_SCORERS:
        if weights is None:
            raise ValueError(f"sync scorer {name!r} needs its weights: set syncnet_weights to a local syncnet_v2.model")
        from humo.data.syncnet import SyncNetScorer

        return SyncNetScorer(max_offset=max_offset, weights=Path(weights))
    if name not in SYNC_SCORERS:
        raise ValueError(f"unknown sync scorer {name!r}; registered: {', '.join([*SYNC_SCORERS, *WEIGHTED_SCORERS])}")
    return SYNC_SCORERS[name](max_offset=max_offset)
