"""Quality figures of a clip (brightness, sharpness) and the checks that turn them into reject reasons."""

from __future__ import annotations

import numpy as np

SHARPNESS_CROP = 64
"""Side the face crop is resized to before the Laplacian, so sharpness does not depend on resolution."""
SHARPNESS_SAMPLES = 5
"""Frames of a clip measured for sharpness (evenly spaced)."""


def brightness(frames: np.ndarray) -> float:
    """Mean luma (BT.601) of ``frames`` ``(F, H, W, 3)`` uint8, in [0, 255]."""
    weights = np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return float((frames.astype(np.float32) @ weights).mean())


def sharpness(frames: np.ndarray, boxes: np.ndarray) -> float:
    """Median variance of the Laplacian of the face crop (resized to 64x64) over a few frames; low = blurry.

    Args:
        frames: ``(F, H, W, 3)`` uint8 RGB.
        boxes: ``(F, 4)`` face boxes without NaN.
    """
    import cv2

    from humo.data.faces import face_crop

    picks = np.unique(np.linspace(0, len(frames) - 1, SHARPNESS_SAMPLES).round().astype(int))
    values = []
    for index in picks:
        crop = face_crop(frames[index], boxes[index], margin=0.0)
        if crop.size == 0:
            continue
        grey = cv2.cvtColor(cv2.resize(crop, (SHARPNESS_CROP, SHARPNESS_CROP)), cv2.COLOR_RGB2GRAY)
        values.append(float(cv2.Laplacian(grey, cv2.CV_64F).var()))
    return float(np.median(values)) if values else 0.0


def quality_problem(
    brightness_value: float, sharpness_value: float, min_brightness: float, max_brightness: float, min_sharpness: float
) -> str | None:
    """``"too_dark"``, ``"too_bright"``, ``"blurry"`` or ``None``."""
    if brightness_value < min_brightness:
        return "too_dark"
    if brightness_value > max_brightness:
        return "too_bright"
    if sharpness_value < min_sharpness:
        return "blurry"
    return None
