"""Shot boundaries by colour-histogram distance, and cutting shots into fixed-length clips.

PySceneDetect was the first choice, but its PyPI package (0.7.2) requires ``opencv-python`` 5, which would
replace our ``opencv-python-headless<5`` and with it the Haar cascades curation uses (design.md section 6).
This module implements the method of PySceneDetect's ``HistogramDetector`` instead: per-frame colour
histograms (HSV, 16 x 4 x 4 bins), a symmetric chi-square distance between consecutive frames, a cut where the
distance exceeds a threshold. Clips are then placed only inside shots, never across a cut.
"""

from __future__ import annotations

import logging

import numpy as np

logger = logging.getLogger(__name__)

HIST_BINS = (16, 4, 4)
"""Bins of the HSV histogram (hue, saturation, value)."""


def frame_histograms(frames: np.ndarray) -> np.ndarray:
    """Normalised HSV colour histogram of each frame.

    Args:
        frames: ``(F, H, W, 3)`` uint8 RGB.

    Returns:
        ``(F, 256)`` float32, each row sums to 1.
    """
    import cv2

    hists = np.empty((len(frames), int(np.prod(HIST_BINS))), dtype=np.float32)
    for index, frame in enumerate(frames):
        hsv = cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2HSV)
        hist = cv2.calcHist([hsv], [0, 1, 2], None, list(HIST_BINS), [0, 180, 0, 256, 0, 256]).reshape(-1)
        hists[index] = hist / max(float(hist.sum()), 1.0)
    return hists


def histogram_distances(hists: np.ndarray) -> np.ndarray:
    """Symmetric chi-square distance between consecutive histograms: ``(F-1,)`` in [0, 1] (1 = disjoint)."""
    a, b = hists[:-1], hists[1:]
    total = a + b
    safe = np.where(total > 0, total, 1.0)
    return 0.5 * np.where(total > 0, (a - b) ** 2 / safe, 0.0).sum(axis=1)


def detect_shots(frames: np.ndarray, threshold: float) -> list[tuple[int, int]]:
    """Split a frame sequence into shots.

    Args:
        frames: ``(F, H, W, 3)`` uint8 RGB (small frames are fine: the histogram ignores size).
        threshold: a cut lies between frames ``i`` and ``i+1`` when their distance exceeds this.

    Returns:
        ``[(start, end), ...]`` half-open frame ranges covering ``0..F`` in order.
    """
    if len(frames) == 0:
        return []
    distances = histogram_distances(frame_histograms(frames))
    cuts = (np.flatnonzero(distances > threshold) + 1).tolist()
    edges = [0, *cuts, len(frames)]
    return [(start, end) for start, end in zip(edges[:-1], edges[1:], strict=True) if end > start]


def cut_clips(shots: list[tuple[int, int]], num_frames: int) -> list[tuple[int, int]]:
    """Non-overlapping windows of ``num_frames`` inside each shot, left-aligned.

    Returns:
        ``[(shot_index, start_frame), ...]``; shots shorter than ``num_frames`` give none.
    """
    clips = []
    for shot_index, (start, end) in enumerate(shots):
        for clip_start in range(start, end - num_frames + 1, num_frames):
            clips.append((shot_index, clip_start))
    return clips
