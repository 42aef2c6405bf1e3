"""Pixel probes of SynthTalk: read the renderer's attributes back from frames, without any learned model.

SynthTalk draws every part of a frame in one flat palette colour (:mod:`humo.data.synthtalk.world`,
:mod:`humo.data.synthtalk.render`), so what the conditions asked for can be measured from pixels and named
with the renderer's own vocabulary:

* **identity** (the reference image's job): skin tone from two cheek patches and hair colour from a patch on
  top of the head, located from the face box; named by the nearest entry of ``SKIN_TONES`` / ``HAIR_COLOURS``;
* **scene** (the caption's job): shirt colour from the bottom rows, wall colour from the top-left corner
  (always the wall's base colour), wall pattern by matching the renderer's own pattern templates, and the
  head-motion kind from how the head's outline moves against the wall (vertical: nodding, sideways: swaying);
* **mouth opening** (the audio's job): the share of mouth-coloured pixels in a mouth region.

Not measured (documented weakness): eye colour (the iris is about 3 pixels wide and its brown is the brown
of the hair and brows), hair style and face shape. Identities that share skin tone and hair colour therefore
look the same to :func:`measure_identity`.

Every function takes plain arrays; boxes are ``[x0, y0, x1, y1]`` float pixels (pixel ``i`` spans
``[i, i + 1)``) as in the SynthTalk annotations.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import numpy as np

from humo.data.synthtalk import render
from humo.data.synthtalk.world import (
    BACKGROUND_COLOURS,
    BACKGROUND_PATTERNS,
    HAIR_COLOURS,
    MOTION_PHRASES,
    SHIRT_COLOURS,
    SKIN_TONES,
)

logger = logging.getLogger(__name__)

RGB = tuple[int, int, int]

# Patch positions inside a face box, as fractions of its half width hw, measured from the box's centre
# column and from the face's centre row (box top + half the smallest box height of the clip: the box grows
# downwards with the jaw, and a clip has closed-mouth frames). Checked on data/raw (tests/evaluation).
CHEEK_U = (0.55, 0.72)
"""Cheek patches: |x - centre| in this range of hw (between the eyes' outer corners and the face edge)."""
CHEEK_V = (0.05, 0.18)
"""Cheek patches: rows this many hw below the face centre (below the eyes, above the mouth corners)."""
HAIR_U = 0.25
"""Hair patch: |x - centre| below this share of hw."""
HAIR_V = (0.06, 0.30)
"""Hair patch: rows this many hw below the box top (above the highest hairline of every style)."""

SHIRT_ROWS = 4
"""Bottom rows of a 64-pixel-high frame that are always shirt (scaled with the frame height)."""
SHIRT_HALF_WIDTH = 10
"""Half width in pixels (of a 64-pixel-wide frame) of the shirt patch around the centre column."""
WALL_CORNER = 3
"""Size of the top-left corner patch that is always the wall's base colour at 64x64 (render.py)."""
WALL_RESIDUAL = 12.0
"""RGB distance from the wall's base-to-shade colour line within which a pixel counts as wall."""
SCLERA_TOLERANCE = 20.0
"""RGB distance scale of the soft "eye white" weight used to track the head vertically."""
STILL_MOTION_PX = 0.3
"""Head outline movement (std over frames, pixels) below which a head counts as still."""
MOUTH_COLOUR_TOLERANCE = 60.0
"""RGB distance over which a pixel's weight as "mouth" falls from 1 (the mouth colour) to 0."""


# =====================================================================================================
# Colours
# =====================================================================================================


def nearest_name(colour: np.ndarray, palette: dict[str, RGB]) -> str:
    """The palette entry closest to ``colour`` ``(3,)`` in RGB."""
    names = list(palette)
    table = np.array([palette[name] for name in names], dtype=np.float64)
    return names[int(np.argmin(np.linalg.norm(table - np.asarray(colour, dtype=np.float64), axis=1)))]


def _patch_median(images: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Median RGB of pixels ``(rows, cols)`` (index arrays ``(F, K)``) of ``images`` ``(F, H, W, 3)``."""
    frames = np.arange(len(images))[:, None]
    return np.median(images[frames, rows, cols].astype(np.float64), axis=1)


def _box_patch(
    boxes: np.ndarray, u_range: tuple[float, float], v_range: tuple[float, float], height: int, width: int,
    mirrored: bool, from_centre: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Pixel indices ``(F, K)`` of a patch placed relative to each face box (see CHEEK_U and friends).

    Rows count from the box top, or with ``from_centre`` from the face centre (top + half the smallest
    box height among ``boxes``).
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    top = boxes[:, 1:2] + (np.min(boxes[:, 3] - boxes[:, 1]) / 2 if from_centre else 0.0)
    half = (boxes[:, 2] - boxes[:, 0]) / 2
    centre = (boxes[:, 0] + boxes[:, 2]) / 2
    grid = np.linspace(0.0, 1.0, 4)
    us = u_range[0] + (u_range[1] - u_range[0]) * grid
    vs = v_range[0] + (v_range[1] - v_range[0]) * grid
    if mirrored:
        us = np.concatenate([us, -us])
    uu, vv = np.meshgrid(us, vs)
    xs = centre[:, None] + half[:, None] * uu.reshape(1, -1)
    ys = top + half[:, None] * vv.reshape(1, -1)
    cols = np.clip(np.floor(xs), 0, width - 1).astype(np.int64)
    rows = np.clip(np.floor(ys), 0, height - 1).astype(np.int64)
    return rows, cols


# =====================================================================================================
# Identity
# =====================================================================================================


@dataclass(frozen=True)
class IdentityColours:
    """Measured identity colours of each image.

    Attributes:
        skin: ``(F, 3)`` float RGB of the cheeks.
        hair: ``(F, 3)`` float RGB of the top of the head.
    """

    skin: np.ndarray
    hair: np.ndarray

    def names(self) -> list[dict[str, str]]:
        """Nearest palette names per image: ``[{"skin_tone": ..., "hair_colour": ...}, ...]``."""
        return [
            {"skin_tone": nearest_name(skin, SKIN_TONES), "hair_colour": nearest_name(hair, HAIR_COLOURS)}
            for skin, hair in zip(self.skin, self.hair, strict=True)
        ]


def measure_identity(images: np.ndarray, face_boxes: np.ndarray) -> IdentityColours:
    """Skin and hair colour of the person in each image.

    Args:
        images: ``(F, H, W, 3)`` uint8 RGB (or one ``(H, W, 3)`` image).
        face_boxes: ``(F, 4)`` (or ``(4,)``) face boxes.

    Returns:
        :class:`IdentityColours` with one row per image.
    """
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[None]
    boxes = np.asarray(face_boxes, dtype=np.float64).reshape(-1, 4)
    if len(boxes) != len(images):
        raise ValueError(f"{len(images)} images but {len(boxes)} face boxes; give one box per image")
    height, width = images.shape[1:3]
    skin = _patch_median(images, *_box_patch(boxes, CHEEK_U, CHEEK_V, height, width, mirrored=True, from_centre=True))
    hair = _patch_median(images, *_box_patch(boxes, (0.0, HAIR_U), HAIR_V, height, width, mirrored=True))
    return IdentityColours(skin=skin, hair=hair)


# =====================================================================================================
# Scene: shirt, wall, head motion
# =====================================================================================================


@dataclass(frozen=True)
class SceneFacts:
    """What a clip shows of the caption's attributes, measured from pixels.

    Attributes:
        shirt_colour, background_colour, background_pattern, motion: names in the world's vocabulary.
        shirt_rgb, wall_rgb: ``(3,)`` measured colours.
        motion_x_px, motion_y_px: std over frames of the head's sideways / vertical position (pixels).
    """

    shirt_colour: str
    background_colour: str
    background_pattern: str
    motion: str
    shirt_rgb: np.ndarray
    wall_rgb: np.ndarray
    motion_x_px: float
    motion_y_px: float

    def names(self) -> dict[str, str]:
        """The four caption attributes by name."""
        return {
            "shirt_colour": self.shirt_colour,
            "background_colour": self.background_colour,
            "background_pattern": self.background_pattern,
            "motion": self.motion,
        }


def _pattern_templates(height: int, width: int) -> dict[str, np.ndarray]:
    """Share of the shade colour in every pixel for each wall pattern, ``(H, W)`` in [0, 1].

    Uses the renderer's own wall drawing so the templates are exactly what it paints.
    """
    x, y = render._design_grid(height, width)  # noqa: SLF001 - the renderer's wall is the ground truth
    s = render.SUPERSAMPLE
    return {
        pattern: (render._wall_labels(pattern, x, y) == render.WALL_SHADE)  # noqa: SLF001
        .reshape(height, s, width, s)
        .mean(axis=(1, 3))
        for pattern in BACKGROUND_PATTERNS
    }


def wall_shade(frames: np.ndarray, wall_rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """How much of the wall's shade colour each pixel holds, and whether it is wall at all.

    Args:
        frames: ``(F, H, W, 3)`` uint8.
        wall_rgb: ``(3,)`` the wall's base colour.

    Returns:
        ``(shade, wallness)``: ``(F, H, W)`` shade share (0 = base, 1 = shade colour) and ``(F, H, W)`` soft
        wall membership in [0, 1] (1 on the wall's colour line, 0 far from it).
    """
    base = np.asarray(wall_rgb, dtype=np.float64)
    direction = base - render.PATTERN_SHADE * base
    pixels = frames.astype(np.float64)
    shade = ((base - pixels) @ direction) / max(float(direction @ direction), 1e-6)
    closest = base - np.clip(shade, 0.0, 1.0)[..., None] * direction
    residual = np.linalg.norm(pixels - closest, axis=-1)
    inside = (shade > -0.25) & (shade < 1.25)
    wallness = np.exp(-((residual / WALL_RESIDUAL) ** 2)) * inside
    return shade, wallness


def head_track(frames: np.ndarray, face_boxes: np.ndarray, wallness: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The head's sideways and vertical position per frame.

    Bands are fixed from the median face box (so per-frame boxes never leak motion into the measurement).
    Sideways: the middle of the wall left and right of the head in a row band at forehead level. Vertical:
    the mean row of the eye whites (the top of the head is often cut by the frame and the chin moves with
    the jaw, but the eyes move with the head only).

    Args:
        frames: ``(F, H, W, 3)`` uint8.
        face_boxes: ``(F, 4)`` or ``(4,)`` face boxes; only their median is used.
        wallness: ``(F, H, W)`` soft wall membership (:func:`wall_shade`).

    Returns:
        ``(x, y)``: ``(F,)`` float pixels each.
    """
    height, width = frames.shape[1:3]
    box = np.median(np.asarray(face_boxes, dtype=np.float64).reshape(-1, 4), axis=0)
    half = (box[2] - box[0]) / 2
    centre = (box[0] + box[2]) / 2
    row0, row1 = int(np.clip(box[1] + 0.4 * half, 0, height - 1)), int(np.clip(box[1] + 0.9 * half, 1, height))
    split = int(np.clip(round(centre), 1, width - 1))
    band = wallness[:, row0 : max(row1, row0 + 1)]
    left = band[:, :, :split].sum(axis=2).mean(axis=1)
    right = band[:, :, split:].sum(axis=2).mean(axis=1)
    x = (left + (width - right)) / 2
    col0, col1 = int(max(0, np.floor(centre - 0.8 * half))), int(min(width, np.ceil(centre + 0.8 * half)))
    eye0, eye1 = int(np.clip(box[1], 0, height - 1)), int(np.clip(box[1] + 1.4 * half, 1, height))
    region = frames[:, eye0 : max(eye1, eye0 + 1), col0:col1].astype(np.float64)
    distance = np.linalg.norm(region - np.array(render.SCLERA_COLOUR, dtype=np.float64), axis=-1)
    weight = np.exp(-((distance / SCLERA_TOLERANCE) ** 2)).sum(axis=2)  # (F, rows)
    rows = np.arange(eye0, eye0 + weight.shape[1], dtype=np.float64)
    y = (weight * rows).sum(axis=1) / np.maximum(weight.sum(axis=1), 1e-6)
    return x, y


def measure_scene(frames: np.ndarray, face_boxes: np.ndarray) -> SceneFacts:
    """Measure the caption's attributes from a clip's pixels.

    Args:
        frames: ``(F, H, W, 3)`` uint8 RGB.
        face_boxes: ``(F, 4)`` or ``(4,)`` face boxes; only their median is used (to place the bands of
            :func:`head_track`), so boxes of the intended clip can be used for a generated one.

    Returns:
        :class:`SceneFacts`.
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be (F, H, W, 3), got {frames.shape}")
    height, width = frames.shape[1:3]
    rows = max(1, round(SHIRT_ROWS * height / render.DESIGN_SIZE))
    half = max(1, round(SHIRT_HALF_WIDTH * width / render.DESIGN_SIZE))
    shirt = np.median(frames[:, height - rows :, width // 2 - half : width // 2 + half].reshape(-1, 3), axis=0)
    corner = max(1, round(WALL_CORNER * min(height, width) / render.DESIGN_SIZE))
    wall = np.median(frames[:, :corner, :corner].reshape(-1, 3).astype(np.float64), axis=0)
    shade, wallness = wall_shade(frames, wall)
    weights = wallness.sum(axis=0) + 1e-6  # (H, W): pixels that are wall in many frames count most
    observed = (np.clip(shade, 0.0, 1.0) * wallness).sum(axis=0) / weights
    mask = wallness.mean(axis=0)
    errors = {
        pattern: float((np.abs(observed - template) * mask).sum() / max(mask.sum(), 1e-6))
        for pattern, template in _pattern_templates(height, width).items()
    }
    pattern = min(errors, key=errors.get)
    x, y = head_track(frames, face_boxes, wallness)
    motion_x, motion_y = float(np.std(x)), float(np.std(y))
    if max(motion_x, motion_y) < STILL_MOTION_PX:
        motion = "still"
    else:
        motion = "nodding" if motion_y > motion_x else "swaying"
    return SceneFacts(
        shirt_colour=nearest_name(shirt, SHIRT_COLOURS),
        background_colour=nearest_name(wall, BACKGROUND_COLOURS),
        background_pattern=pattern,
        motion=motion,
        shirt_rgb=shirt,
        wall_rgb=wall,
        motion_x_px=motion_x,
        motion_y_px=motion_y,
    )


# =====================================================================================================
# Captions
# =====================================================================================================

_SHIRT_RE = re.compile(rf"\b({'|'.join(SHIRT_COLOURS)}) shirt\b")
_WALL_RE = re.compile(
    rf"\b(?:({'|'.join(BACKGROUND_PATTERNS)}) )?({'|'.join(BACKGROUND_COLOURS)}) (?:wall|background)\b"
)


def parse_caption(caption: str) -> dict[str, str]:
    """The caption attributes a SynthTalk-style caption names, in the world's vocabulary.

    Args:
        caption: e.g. ``"A person in a green shirt talks in front of a striped blue wall, nodding slightly."``

    Returns:
        A dict with any of ``shirt_colour``, ``background_colour``, ``background_pattern``, ``motion``; keys
        the caption does not name are absent (a free-form caption may name none).
    """
    text = caption.lower()
    facts: dict[str, str] = {}
    if match := _SHIRT_RE.search(text):
        facts["shirt_colour"] = match.group(1)
    if match := _WALL_RE.search(text):
        if match.group(1):
            facts["background_pattern"] = match.group(1)
        facts["background_colour"] = match.group(2)
    for kind, phrase in MOTION_PHRASES.items():
        if phrase in text:
            facts["motion"] = kind
    return facts


# =====================================================================================================
# Mouth
# =====================================================================================================


def mouth_opening(frames: np.ndarray, mouth_region: np.ndarray) -> np.ndarray:
    """Share of mouth-coloured pixels in a fixed mouth region per frame (grows with the opening).

    Args:
        frames: ``(F, H, W, 3)`` uint8 RGB.
        mouth_region: ``(4,)`` one box for all frames (e.g. the union of a clip's annotated mouth boxes);
            a fixed region keeps the per-frame ground truth out of the measurement.

    Returns:
        ``(F,)`` float in [0, 1].
    """
    frames = np.asarray(frames)
    height, width = frames.shape[1:3]
    x0, y0, x1, y1 = np.asarray(mouth_region, dtype=np.float64).reshape(4)
    c0, c1 = int(np.clip(np.floor(x0), 0, width - 1)), int(np.clip(np.ceil(x1), 1, width))
    r0, r1 = int(np.clip(np.floor(y0), 0, height - 1)), int(np.clip(np.ceil(y1), 1, height))
    crop = frames[:, r0 : max(r1, r0 + 1), c0 : max(c1, c0 + 1)].astype(np.float64)
    distance = np.linalg.norm(crop - np.array(render.MOUTH_COLOUR, dtype=np.float64), axis=-1)
    return np.clip(1.0 - distance / MOUTH_COLOUR_TOLERANCE, 0.0, 1.0).mean(axis=(1, 2))


def union_box(boxes: np.ndarray, margin: float = 0.0) -> np.ndarray:
    """The box ``(4,)`` covering every box of ``boxes`` ``(F, 4)``, grown by ``margin`` pixels."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.array(
        [boxes[:, 0].min() - margin, boxes[:, 1].min() - margin, boxes[:, 2].max() + margin, boxes[:, 3].max() + margin]
    )
