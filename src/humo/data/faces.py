"""Faces: per-frame face boxes from a pluggable detector, gap filling, and the face checks of a clip.

Detectors (``curate.face_detector``):

* ``opencv``: OpenCV's bundled frontal-face Haar cascade (``cv2.data.haarcascades``, shipped in the
  ``opencv-python-headless<5`` wheel, offline). The largest detection of each frame is kept.
* ``annotation``: the ground-truth ``face_box`` per frame of a SynthTalk annotation json.
* ``auto``: ``annotation`` when the source has an annotation, ``opencv`` otherwise.

SynthTalk's faces are drawn shapes, not photographs, and the Haar cascade (trained on photographs) fails on
them. Measured on the default dataset: with the stage's settings it finds a face in 0.9 % of the frames of the
first 64 clips (every clip rejected ``no_face``); over 8 clips and 16 combinations of histogram equalisation,
``minNeighbors`` 3/4, scale factor 1.1/1.15 and minimum size, the best rate was 9.5 %. That is why ``auto``
uses the ground truth when a dataset ships it; on real video the cascade is what runs (it found the face in
100 % of the sampled frames of ``musetalk_sun.mp4``).
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

logger = logging.getLogger(__name__)

HAAR_CASCADE = "haarcascade_frontalface_default.xml"
HAAR_SCALE_FACTOR = 1.15
HAAR_MIN_NEIGHBORS = 4
HAAR_MIN_SIZE_FRACTION = 0.08
"""Smallest face the cascade looks for, as a fraction of the frame's shorter side."""
BOX_SMOOTHING = 5
"""Frames in the running median that steadies detected boxes before mouth crops are taken."""
TRACK_MARGIN = 1.6
"""Side of a face-track crop over the median face-box side: the whole face, chin and some hair included."""
TRACK_SMOOTHING = 9
"""Frames in the running mean that steadies a face track's centre (the crop follows the head, not jitter)."""
TRACK_SIZE = 160
"""Default side of face-track crops (``curate.sync_crop_size``): the lips span ~40 px, enough for landmarks."""
TRACK_CHUNK = 32
"""Full-size frames decoded at a time while a face track is cut (a 1080p frame is 6 MB)."""


class FaceDetector(Protocol):
    """Per-frame face boxes for a sequence of frames."""

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        """``frames`` ``(F, H, W, 3)`` uint8 -> ``(F, 4)`` float ``[x0, y0, x1, y1]``, NaN where none is found."""
        ...


@functools.cache
def _cascade():
    import cv2

    path = Path(cv2.data.haarcascades) / HAAR_CASCADE
    cascade = cv2.CascadeClassifier(str(path))
    if cascade.empty():
        raise FileNotFoundError(f"OpenCV Haar cascade {path} missing; install opencv-python-headless<5")
    return cascade


def detect_faces_opencv(frames: np.ndarray, every: int = 1, min_size: float = HAAR_MIN_SIZE_FRACTION) -> np.ndarray:
    """Largest Haar-cascade face per frame, looking at every ``every``-th frame.

    Args:
        frames: ``(F, H, W, 3)`` uint8 RGB.
        every: run the cascade on frames ``0, every, 2*every, ...`` (and the last one); a frame in between
            gets the box interpolated from its two neighbours when both found a face, else NaN (faces move
            little in ``every / fps`` seconds; the cascade is the slowest step of curation on real video).
        min_size: smallest face looked for, as a fraction of the frame's shorter side.

    Returns:
        ``(F, 4)`` float64 ``[x0, y0, x1, y1]`` pixel boxes, NaN rows where no face was found.
    """
    import cv2

    cascade = _cascade()
    boxes = np.full((len(frames), 4), np.nan)
    if len(frames) == 0:
        return boxes
    side = int(max(8, min_size * min(frames.shape[1:3])))
    picks = sorted({*range(0, len(frames), max(1, every)), len(frames) - 1})
    for index in picks:
        frame = frames[index]
        grey = cv2.equalizeHist(cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2GRAY))
        found = cascade.detectMultiScale(
            grey, scaleFactor=HAAR_SCALE_FACTOR, minNeighbors=HAAR_MIN_NEIGHBORS, minSize=(side, side)
        )
        if len(found):
            x, y, w, h = max(found, key=lambda box: box[2] * box[3])
            boxes[index] = (x, y, x + w, y + h)
    for left, right in zip(picks[:-1], picks[1:], strict=True):
        if right - left > 1 and np.isfinite(boxes[left]).all() and np.isfinite(boxes[right]).all():
            weights = (np.arange(left + 1, right) - left) / (right - left)
            boxes[left + 1 : right] = boxes[left] + weights[:, None] * (boxes[right] - boxes[left])
    return boxes


def annotation_boxes(annotation: str | Path, source_indices: np.ndarray, scale: float) -> np.ndarray:
    """Ground-truth face boxes of a SynthTalk annotation at the given source frames.

    Args:
        annotation: the json with a ``face_box`` list (one ``[x0, y0, x1, y1]`` per source frame).
        source_indices: ``(K,)`` source frame per target frame.
        scale: factor from source pixels to the pixels the boxes are wanted in.

    Returns:
        ``(K, 4)`` float64 boxes.

    Raises:
        ValueError: the json has no ``face_box`` or fewer boxes than frames.
    """
    data = json.loads(Path(annotation).read_text(encoding="utf-8"))
    boxes = np.asarray(data.get("face_box", []), dtype=np.float64)
    if boxes.ndim != 2 or boxes.shape[1] != 4 or len(boxes) <= int(np.max(source_indices, initial=0)):
        raise ValueError(f"{annotation}: face_box holds {boxes.shape} boxes, not one per frame")
    return boxes[np.asarray(source_indices)] * scale


def fill_missing_boxes(boxes: np.ndarray) -> np.ndarray:
    """Interpolate NaN rows linearly between detections (held constant at the ends), then median-smooth.

    Args:
        boxes: ``(F, 4)`` float with NaN rows; at least one row must be finite.

    Returns:
        ``(F, 4)`` float64 without NaN.
    """
    boxes = np.asarray(boxes, dtype=np.float64)
    found = np.isfinite(boxes).all(axis=1)
    if not found.any():
        raise ValueError("no frame has a face box; nothing to interpolate from")
    frames = np.arange(len(boxes))
    filled = np.stack([np.interp(frames, frames[found], boxes[found, k]) for k in range(4)], axis=1)
    if len(filled) >= BOX_SMOOTHING:
        from scipy.ndimage import median_filter

        filled = median_filter(filled, size=(BOX_SMOOTHING, 1), mode="nearest")
    return filled


def face_problem(boxes: np.ndarray, frame_size: tuple[int, int], min_fraction: float, min_size: float) -> str | None:
    """Why a clip's faces are unusable, or ``None`` when they are fine.

    Args:
        boxes: ``(F, 4)`` raw detections (NaN = no face in that frame).
        frame_size: ``(width, height)`` of the frames the boxes are in.
        min_fraction: smallest share of frames with a face.
        min_size: smallest median box side as a fraction of the frame's shorter side.

    Returns:
        ``"no_face"``, ``"face_too_small"`` or ``None``.
    """
    found = np.isfinite(boxes).all(axis=1)
    if found.mean() < min_fraction or not found.any():
        return "no_face"
    sides = np.minimum(boxes[found, 2] - boxes[found, 0], boxes[found, 3] - boxes[found, 1])
    if np.median(sides) < min_size * min(frame_size):
        return "face_too_small"
    return None


def face_crop(frame: np.ndarray, box: np.ndarray, margin: float = 0.25) -> np.ndarray:
    """The face ``box`` of ``frame`` ``(H, W, 3)`` enlarged by ``margin`` on every side, clipped to the frame."""
    height, width = frame.shape[:2]
    x0, y0, x1, y1 = box
    mx, my = margin * (x1 - x0), margin * (y1 - y0)
    left, top = int(max(0, np.floor(x0 - mx))), int(max(0, np.floor(y0 - my)))
    right, bottom = int(min(width, np.ceil(x1 + mx))), int(min(height, np.ceil(y1 + my)))
    return np.ascontiguousarray(frame[top:bottom, left:right])


@dataclass(frozen=True)
class FaceTrack:
    """A steadied, square crop of one face over a run of frames, at a size fit for landmarks or SyncNet.

    Attributes:
        crops: ``(F, S, S, 3)`` uint8 RGB.
        boxes: ``(F, 4)`` the face box of each frame in crop pixels.
    """

    crops: np.ndarray
    boxes: np.ndarray


def face_track(
    read: Callable[[np.ndarray], np.ndarray], positions: np.ndarray, boxes: np.ndarray, size: int
) -> FaceTrack:
    """Cut a face track from full-resolution frames, a chunk at a time.

    Analysis frames are small (a face of a 1080p portrait video is ~30 px at 256 px), too small for lips; the
    track crops the face from the full-size frames instead. The crop's side is :data:`TRACK_MARGIN` times the
    median box side of the run and its centre a running mean of the box centres.

    Args:
        read: ``positions (K,) -> (K, H, W, 3)`` uint8 full-size frames.
        positions: ``(F,)`` frame positions of the run, passed to ``read``.
        boxes: ``(F, 4)`` gap-free face boxes ``[x0, y0, x1, y1]`` in full-size pixels.
        size: side of the square crops.

    Returns:
        The :class:`FaceTrack`.
    """
    import cv2
    from scipy.ndimage import uniform_filter1d

    boxes = np.asarray(boxes, dtype=np.float64)
    side = float(np.median(np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]))) * TRACK_MARGIN
    side = max(side, 2.0)
    centres = np.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], axis=1)
    centres = uniform_filter1d(centres, size=min(TRACK_SMOOTHING, len(centres)), axis=0, mode="nearest")
    patch = (int(round(side)), int(round(side)))
    crops = np.empty((len(positions), size, size, 3), dtype=np.uint8)
    positions = np.asarray(positions)
    for lo in range(0, len(positions), TRACK_CHUNK):
        frames = read(positions[lo : lo + TRACK_CHUNK])
        for offset, frame in enumerate(frames):
            cx, cy = centres[lo + offset]
            cut = cv2.getRectSubPix(np.ascontiguousarray(frame), patch, (float(cx), float(cy)))
            crops[lo + offset] = cv2.resize(cut, (size, size), interpolation=cv2.INTER_AREA)
    scale = size / patch[0]
    origin = centres - patch[0] / 2
    in_crop = (boxes - np.concatenate([origin, origin], axis=1)) * scale
    return FaceTrack(crops=crops, boxes=np.clip(in_crop, 0, size))
