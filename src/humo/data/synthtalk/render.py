"""Draw SynthTalk frames and reference images with numpy: a talking-head close-up, vectorised over frames.

Geometry is written in pixels of a 64x64 frame ("design pixels") and scaled by ``min(height, width) / 64``,
centred, for other sizes. Each frame is drawn on a grid SUPERSAMPLE times finer than the output as a map of
part labels (painter's order: wall, back hair, neck, shirt, ears, face, hair, nose, brows, eyes, lips,
mouth), coloured through a per-clip palette and box-filtered down, which anti-aliases the edges and lets
the mouth open by fractions of a pixel.

At 64x64 the face is 30-37 pixels wide and 38-43 tall with the mouth closed. The mouth is 18 pixels wide;
with its lips it is 4 + 17.5 * opening pixels tall, so at an opening of 0.7 (the quietest syllable peak) it
spans 16x16 pixels, 2x2 latent cells of an 8x VAE. The chin drops with the lower lip. The wall stays visible
beside the head and the shirt across the bottom rows.
"""

from __future__ import annotations

import numpy as np

from humo.data.synthtalk.world import (
    BACKGROUND_COLOURS,
    BACKGROUND_PATTERNS,
    EYE_COLOURS,
    FACE_SHAPES,
    HAIR_COLOURS,
    HAIR_STYLES,
    MOTIONS,
    SHIRT_COLOURS,
    SKIN_TONES,
    Appearance,
    Identity,
    Motion,
    Pose,
)

DESIGN_SIZE = 64.0
SUPERSAMPLE = 3
"""Sub-pixels per output pixel along each axis."""

# --- head (design pixels; head coordinates u to the right, v downwards, origin at the head centre) ---
HEAD_CENTRE = (32.0, 24.0)
FACE_GEOMETRY: dict[str, tuple[float, float, int]] = {
    "oval": (16.5, 20.0, 2),
    "round": (18.5, 19.0, 2),
    "square": (17.5, 19.5, 3),
    "long": (15.0, 21.5, 2),
}
"""Face shape -> (half width, half height, superellipse exponent)."""
JAW_DROP = 0.7
"""The chin moves down by this fraction of the mouth opening."""
EAR_U_INSET, EAR_V, EAR_RADII = 0.5, -1.0, (2.6, 4.0)
BROW_U, BROW_V, BROW_RADII = 6.5, -7.6, (3.4, 0.8)
EYE_U, EYE_V, EYE_RADII = 6.5, -4.0, (3.0, 2.0)
IRIS_RADIUS, PUPIL_RADIUS = 1.6, 0.7
NOSE_V, NOSE_RADII = 3.0, (1.6, 2.4)
MOUTH_V = 8.0
"""Height of the upper lip's inner edge; the lower lip and jaw move down from here."""
MOUTH_HALF_WIDTH, MOUTH_INNER_HALF_WIDTH, LIP_THICKNESS = 9.0, 8.0, 2.0
MOUTH_MAX_OPEN = 17.5
"""Height of the dark mouth opening at opening 1."""

# --- hair (fractions of the face half height ry, except where marked) ------------------------------
HAIR_MARGIN = (1.8, 2.2)
"""The hair cap is the face ellipse grown by these design pixels (x, y) and lifted by HAIR_LIFT."""
HAIR_LIFT = 1.0
HAIRLINE: dict[str, tuple[float, float, float]] = {
    # style -> (hairline height at the centre, rise towards the temples, lowest v of hair beside the face)
    "short": (-0.55, 0.30, -0.10),
    "long": (-0.50, 0.25, 0.35),
    "fringe": (-0.30, 0.00, -0.05),
    "bun": (-0.60, 0.30, -0.20),
    "curly": (-0.48, 0.10, 0.15),
}
LONG_HAIR_BACK = (3.5, 0.45, 1.15)
"""Long hair behind the head: extra half width (px), centre v and half height (in ry)."""
FRINGE_WAVE, FRINGE_WAVE_RATE = 0.035, 1.4
"""The fringe's lower edge waves by this share of ry, this many radians per design pixel."""
BUN_RADIUS, BUN_LIFT = 5.5, 2.2
CURLY_MARGIN, CURLY_LOBES, CURLY_DEPTH, CURLY_LOWEST = (5.0, 4.5), 9, 0.06, 0.4

# --- body and wall ----------------------------------------------------------------------------------
NECK_HALF_WIDTH = 6.5
SHOULDER_CENTRE_Y, SHOULDER_RADII, SHOULDER_EXPONENT = 70.0, (30.0, 18.0), 3
COLLAR_RADII = (6.5, 3.5)
TORSO_FOLLOW = 0.3
"""Share of the head's sideways motion the shoulders follow."""
PATTERN_PERIOD, DOT_RADIUS = 8.0, 1.6

# --- colours ------------------------------------------------------------------------------------------
PATTERN_SHADE, NECK_SHADE, EAR_SHADE, NOSE_SHADE = 0.82, 0.82, 0.9, 0.86
LIP_TINT, LIP_MIX = (170.0, 60.0, 70.0), 0.35
SCLERA_COLOUR, PUPIL_COLOUR, MOUTH_COLOUR = (236, 236, 236), (16, 16, 20), (40, 10, 16)

# Part labels, in the palette's order.
(
    WALL, WALL_SHADE, HAIR, SHIRT, NECK, EAR, SKIN, NOSE, SCLERA, IRIS, PUPIL, LIPS, MOUTH,
) = range(13)

_FIELD, _FIELD_MASK = np.uint64(16), np.uint64(0xFFFF)

assert set(FACE_GEOMETRY) == set(FACE_SHAPES) and set(HAIRLINE) == set(HAIR_STYLES)  # one table per attribute


# =====================================================================================================
# Helpers
# =====================================================================================================


def _ipow(values: np.ndarray, exponent: int) -> np.ndarray:
    """``|values| ** exponent`` for a small integer exponent, by multiplication (much faster than pow)."""
    magnitude = np.abs(values)
    result = magnitude * magnitude
    for _ in range(exponent - 2):
        result *= magnitude
    return result


def _inside(
    u: np.ndarray,
    v: np.ndarray,
    centre_v: float | np.ndarray,
    radii: tuple[float | np.ndarray, float | np.ndarray],
    exponent: int = 2,
) -> np.ndarray:
    """Points inside the superellipse of half sizes ``radii`` centred at head coordinates (0, centre_v)."""
    return _ipow(u / radii[0], exponent) + _ipow((v - centre_v) / radii[1], exponent) <= 1.0


def _palette(identity: Identity, appearance: Appearance) -> np.ndarray:
    """Colour of each part label, ``(13, 3)`` uint8."""
    skin = np.array(SKIN_TONES[identity.skin_tone], dtype=np.float64)
    wall = np.array(BACKGROUND_COLOURS[appearance.background_colour], dtype=np.float64)
    hair = HAIR_COLOURS[identity.hair_colour]
    lips = (1.0 - LIP_MIX) * skin + LIP_MIX * np.array(LIP_TINT)
    colours = [
        wall, PATTERN_SHADE * wall, hair, SHIRT_COLOURS[appearance.shirt_colour], NECK_SHADE * skin,
        EAR_SHADE * skin, skin, NOSE_SHADE * skin, SCLERA_COLOUR, EYE_COLOURS[identity.eye_colour],
        PUPIL_COLOUR, lips, MOUTH_COLOUR,
    ]
    return np.clip(np.round(np.array(colours, dtype=np.float64)), 0, 255).astype(np.uint8)


def _design_grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Sub-pixel centres in design pixels: ``x (1, 1, W*s)`` and ``y (1, H*s, 1)`` float32."""
    unit = min(height, width) / DESIGN_SIZE
    xs = (np.arange(width * SUPERSAMPLE, dtype=np.float32) + 0.5) / SUPERSAMPLE
    ys = (np.arange(height * SUPERSAMPLE, dtype=np.float32) + 0.5) / SUPERSAMPLE
    x = (xs - width / 2) / unit + DESIGN_SIZE / 2
    y = (ys - height / 2) / unit + DESIGN_SIZE / 2
    return x[None, None, :], y[None, :, None]


def _to_pixels(x: np.ndarray, y: np.ndarray, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Design pixels -> output pixels (the inverse of :func:`_design_grid`'s mapping)."""
    unit = min(height, width) / DESIGN_SIZE
    return (x - DESIGN_SIZE / 2) * unit + width / 2, (y - DESIGN_SIZE / 2) * unit + height / 2


# =====================================================================================================
# Motion
# =====================================================================================================


def head_offsets(motion: Motion, num_frames: int, fps: float) -> np.ndarray:
    """Per-frame head motion on top of the clip's pose.

    Returns:
        ``(F, 3)`` float64: dx, dy (design pixels) and roll (degrees) of each frame.

    Raises:
        ValueError: an unknown motion kind.
    """
    if motion.kind not in MOTIONS:
        raise ValueError(f"motion kind {motion.kind!r} is not one of {', '.join(MOTIONS)}")
    angle = 2.0 * np.pi * motion.frequency_hz * np.arange(num_frames) / fps + motion.phase
    wave = np.sin(angle)
    offsets = np.zeros((num_frames, 3))
    if motion.kind == "nodding":
        offsets[:, 1] = motion.amplitude_px * wave
    elif motion.kind == "swaying":
        offsets[:, 0] = motion.amplitude_px * wave
        offsets[:, 2] = -motion.roll_deg * wave  # the head tilts towards the side it moves to
    return offsets


# =====================================================================================================
# Boxes
# =====================================================================================================

_BOUNDARY_ANGLES = np.linspace(0.0, 2.0 * np.pi, 181)[:-1]


def _box(
    centre_x: np.ndarray,
    centre_y: np.ndarray,
    roll: np.ndarray,
    scale: float,
    u: np.ndarray,
    v: np.ndarray,
    height: int,
    width: int,
) -> np.ndarray:
    """Axis-aligned pixel box ``(F, 4)`` of head-coordinate outlines ``u, v (F, K)`` after pose and scaling."""
    cos, sin = np.cos(roll)[:, None], np.sin(roll)[:, None]
    x = centre_x[:, None] + scale * (u * cos - v * sin)
    y = centre_y[:, None] + scale * (u * sin + v * cos)
    px, py = _to_pixels(x, y, height, width)
    boxes = np.stack([px.min(1), py.min(1), px.max(1), py.max(1)], axis=1)
    return np.clip(boxes, 0.0, [width, height, width, height])


def _face_outline(shape: str, open_height: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Head-coordinate outline ``(F, K)`` of the face superellipse with its chin dropped per frame."""
    rx, ry, exponent = FACE_GEOMETRY[shape]
    c, s = np.cos(_BOUNDARY_ANGLES), np.sin(_BOUNDARY_ANGLES)
    u = rx * np.sign(c) * np.abs(c) ** (2.0 / exponent)
    v_unit = np.sign(s) * np.abs(s) ** (2.0 / exponent)
    chin = ry + JAW_DROP * open_height[:, None]
    v = np.where(v_unit > 0, v_unit * chin, v_unit * ry)
    return np.broadcast_to(u, v.shape), v


def _mouth_outline(open_height: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Head-coordinate outline ``(F, K)`` of the lips' outer edge per frame."""
    half_height = open_height[:, None] / 2 + LIP_THICKNESS
    u = np.broadcast_to(MOUTH_HALF_WIDTH * np.cos(_BOUNDARY_ANGLES), (len(open_height), len(_BOUNDARY_ANGLES)))
    v = MOUTH_V + open_height[:, None] / 2 + half_height * np.sin(_BOUNDARY_ANGLES)
    return u, v


# =====================================================================================================
# Drawing
# =====================================================================================================


def _wall_labels(pattern: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``(H*s, W*s)`` uint8 labels of the wall; at 64x64 the top-left corner is always the base colour."""
    if pattern not in BACKGROUND_PATTERNS:
        raise ValueError(f"background pattern {pattern!r} is not one of {', '.join(BACKGROUND_PATTERNS)}")
    half = PATTERN_PERIOD / 2
    x2, y2 = np.broadcast_arrays(x[0], y[0])
    if pattern == "striped":
        shade = (x2 // half) % 2 == 1
    elif pattern == "checked":
        shade = ((x2 // PATTERN_PERIOD) + (y2 // PATTERN_PERIOD)) % 2 == 1
    elif pattern == "dotted":
        shade = (x2 % PATTERN_PERIOD - half) ** 2 + (y2 % PATTERN_PERIOD - half) ** 2 <= DOT_RADIUS**2
    else:
        shade = np.zeros(x2.shape, dtype=bool)
    return np.where(shade, WALL_SHADE, WALL).astype(np.uint8)


class _Head:
    """The head's pose in every frame; gives head coordinates on windows of the sub-pixel grid.

    Coordinates are computed only where a part can be (a window covering it in every frame), which keeps
    small parts such as eyes and mouth cheap.
    """

    def __init__(
        self, x: np.ndarray, y: np.ndarray, centre_x: np.ndarray, centre_y: np.ndarray, roll: np.ndarray, scale: float
    ) -> None:
        self.x, self.y, self.scale = x, y, scale
        self.centre_x, self.centre_y = centre_x, centre_y  # (F,) design pixels
        self.cos, self.sin = np.cos(roll), np.sin(roll)

    def window(
        self, u_bounds: tuple[float, float], v_bounds: tuple[float, float]
    ) -> tuple[tuple[slice, slice, slice], np.ndarray, np.ndarray]:
        """The grid window holding a head-coordinate box in all frames, and head coordinates there.

        Returns:
            ``(index, u, v)``: ``labels[index]`` is a view of the window; ``u, v`` are ``(F, rows, cols)``
            float32 head coordinates (undoing translation, roll and scale).
        """
        us = np.array([u_bounds[0], u_bounds[1], u_bounds[0], u_bounds[1]])
        vs = np.array([v_bounds[0], v_bounds[0], v_bounds[1], v_bounds[1]])
        cos, sin = self.cos[:, None], self.sin[:, None]
        xs = self.centre_x[:, None] + self.scale * (us * cos - vs * sin)  # (F, 4) corners in the image
        ys = self.centre_y[:, None] + self.scale * (us * sin + vs * cos)
        grid_x, grid_y = self.x[0, 0], self.y[0, :, 0]
        cols = slice(np.searchsorted(grid_x, xs.min() - 1.0), np.searchsorted(grid_x, xs.max() + 1.0, "right"))
        rows = slice(np.searchsorted(grid_y, ys.min() - 1.0), np.searchsorted(grid_y, ys.max() + 1.0, "right"))
        dx = self.x[:, :, cols] - self.centre_x[:, None, None].astype(np.float32)  # (F, 1, cols)
        dy = self.y[:, rows, :] - self.centre_y[:, None, None].astype(np.float32)  # (F, rows, 1)
        cos = (self.cos / self.scale)[:, None, None].astype(np.float32)
        sin = (self.sin / self.scale)[:, None, None].astype(np.float32)
        return (slice(None), rows, cols), dx * cos + dy * sin, dy * cos - dx * sin


def _draw_back_hair(labels: np.ndarray, head: _Head, style: str, rx: float, ry: float) -> None:
    """Hair behind the head: long hair down to the shoulders, a bun on top, or a curly cloud around."""
    if style == "long":
        extra, centre, half = LONG_HAIR_BACK
        index, u, v = head.window((-rx - extra, rx + extra), ((centre - half) * ry, (centre + half) * ry))
        labels[index][_inside(u, v, centre * ry, (rx + extra, half * ry), exponent=4)] = HAIR
    elif style == "bun":
        centre = -ry - BUN_LIFT
        index, u, v = head.window((-BUN_RADIUS, BUN_RADIUS), (centre - BUN_RADIUS, centre + BUN_RADIUS))
        labels[index][_inside(u, v, centre, (BUN_RADIUS, BUN_RADIUS))] = HAIR
    elif style == "curly":
        half_width, half_height = rx + CURLY_MARGIN[0], ry + CURLY_MARGIN[1]
        reach = 1.0 + CURLY_DEPTH
        index, u, v = head.window(
            (-half_width * reach, half_width * reach), (-HAIR_LIFT - half_height * reach, CURLY_LOWEST * ry)
        )
        nu, nv = u / half_width, (v + HAIR_LIFT) / half_height
        lobes = 1.0 + CURLY_DEPTH * np.sin(CURLY_LOBES * np.arctan2(nv, nu))  # a bumpy outline
        labels[index][(nu * nu + nv * nv <= lobes * lobes) & (v < CURLY_LOWEST * ry)] = HAIR


def _draw_body(
    labels: np.ndarray, x: np.ndarray, y: np.ndarray, head: _Head, pose: Pose, sideways: np.ndarray
) -> None:
    """Neck (following the head) and shirt (following a share of its sideways motion), with a round collar."""
    scale = pose.scale
    centre_x = head.centre_x[:, None, None].astype(np.float32)
    centre_y = head.centre_y[:, None, None].astype(np.float32)
    labels[(np.abs(x - centre_x) < NECK_HALF_WIDTH * scale) & (y > centre_y)] = NECK
    torso_x = (HEAD_CENTRE[0] + pose.dx + TORSO_FOLLOW * sideways)[:, None, None].astype(np.float32)
    torso_y = HEAD_CENTRE[1] + pose.dy + (SHOULDER_CENTRE_Y - HEAD_CENTRE[1]) * scale
    shoulder_rx, shoulder_ry = SHOULDER_RADII[0] * scale, SHOULDER_RADII[1] * scale
    collar_y = torso_y - shoulder_ry  # the top of the shoulders
    rows = slice(int(np.searchsorted(y[0, :, 0], collar_y)), None)
    dx, dy = x - torso_x, y[:, rows] - torso_y
    shirt = _ipow(dx / shoulder_rx, SHOULDER_EXPONENT) + _ipow(dy / shoulder_ry, SHOULDER_EXPONENT) <= 1.0
    collar = _ipow(dx / (COLLAR_RADII[0] * scale), 2) + _ipow((dy + shoulder_ry) / (COLLAR_RADII[1] * scale), 2) <= 1.0
    labels[:, rows][shirt & ~collar] = SHIRT


def render_frames(
    identity: Identity,
    appearance: Appearance,
    pose: Pose,
    offsets: np.ndarray,
    openings: np.ndarray,
    height: int,
    width: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw a person talking.

    Args:
        identity: skin, hair, eyes and face shape.
        appearance: shirt colour and wall.
        pose: the person's placement (offset, roll, scale) for the whole clip.
        offsets: ``(F, 3)`` per-frame head motion (dx, dy design pixels, roll degrees), see :func:`head_offsets`.
        openings: ``(F,)`` mouth opening in [0, 1] per frame (0 = closed lips, no dark pixels).
        height: frame height in pixels.
        width: frame width in pixels.

    Returns:
        ``(frames, face_boxes, mouth_boxes)``: ``(F, H, W, 3)`` uint8 RGB; ``(F, 4)`` float boxes
        ``x0, y0, x1, y1`` in pixels (pixel ``i`` spans ``[i, i + 1)``) of the face (forehead, partly under
        the hair, to chin; ears excluded) and of the mouth with its lips.

    Raises:
        ValueError: mismatched lengths, openings outside [0, 1], or an unknown attribute value.
    """
    offsets = np.asarray(offsets, dtype=np.float64).reshape(-1, 3)
    openings = np.asarray(openings, dtype=np.float64).reshape(-1)
    if len(offsets) != len(openings):
        raise ValueError(f"offsets has {len(offsets)} frames but openings has {len(openings)}; give one per frame")
    if openings.size and (openings.min() < 0.0 or openings.max() > 1.0):
        raise ValueError(f"mouth openings must lie in [0, 1], got {openings.min()}..{openings.max()}")
    for value, table in ((identity.face_shape, FACE_GEOMETRY), (identity.hair_style, HAIRLINE)):
        if value not in table:
            raise ValueError(f"{value!r} is not one of {', '.join(table)}")
    rx, ry, exponent = FACE_GEOMETRY[identity.face_shape]
    hairline_centre, hairline_rise, side_lowest = HAIRLINE[identity.hair_style]
    num_frames = len(openings)
    x, y = _design_grid(height, width)
    head = _Head(
        x,
        y,
        centre_x=HEAD_CENTRE[0] + pose.dx + offsets[:, 0],
        centre_y=HEAD_CENTRE[1] + pose.dy + offsets[:, 1],
        roll=np.deg2rad(pose.roll_deg + offsets[:, 2]),
        scale=pose.scale,
    )
    open_height = MOUTH_MAX_OPEN * openings  # (F,) design pixels
    max_open = float(open_height.max(initial=0.0))
    h = open_height[:, None, None].astype(np.float32)  # (F, 1, 1)
    labels = np.repeat(_wall_labels(appearance.background_pattern, x, y)[None], num_frames, axis=0)

    # 1. hair behind the head, neck and shirt
    _draw_back_hair(labels, head, identity.hair_style, rx, ry)
    _draw_body(labels, x, y, head, pose, sideways=offsets[:, 0])

    # 2. ears, then the face, whose chin drops with the lower lip
    ear_rx, ear_ry = EAR_RADII
    index, u, v = head.window((-rx - ear_rx, rx + ear_rx), (EAR_V - ear_ry, EAR_V + ear_ry))
    labels[index][_inside(np.abs(u) - (rx - EAR_U_INSET), v, EAR_V, EAR_RADII)] = EAR
    index, u, v = head.window((-rx, rx), (-ry, ry + JAW_DROP * max_open))
    face_ry = np.where(v > 0, ry + JAW_DROP * h, np.float32(ry))
    labels[index][_ipow(u / rx, exponent) + _ipow(v / face_ry, exponent) <= 1.0] = SKIN

    # 3. hair in front: above the hairline, and beside the face down to the style's lowest point
    cap_rx, cap_ry = rx + HAIR_MARGIN[0], ry + HAIR_MARGIN[1]
    index, u, v = head.window((-cap_rx, cap_rx), (-HAIR_LIFT - cap_ry, side_lowest * ry))
    window = labels[index]
    if identity.hair_style == "fringe":
        hairline = ry * (hairline_centre + FRINGE_WAVE * np.cos(FRINGE_WAVE_RATE * u))
    else:
        hairline = ry * (hairline_centre + hairline_rise * _ipow(u / rx, 2))
    beside_face = (window != SKIN) & (v < side_lowest * ry)
    window[_inside(u, v, -HAIR_LIFT, (cap_rx, cap_ry)) & ((v < hairline) | beside_face)] = HAIR

    # 4. nose, brows and eyes
    index, u, v = head.window((-NOSE_RADII[0], NOSE_RADII[0]), (NOSE_V - NOSE_RADII[1], NOSE_V + NOSE_RADII[1]))
    labels[index][_inside(u, v, NOSE_V, NOSE_RADII)] = NOSE
    reach = max(BROW_U + BROW_RADII[0], EYE_U + EYE_RADII[0])
    index, u, v = head.window((-reach, reach), (BROW_V - BROW_RADII[1], EYE_V + EYE_RADII[1]))
    window, side_u = labels[index], np.abs(u)  # both eyes at once: mirror u
    window[_inside(side_u - BROW_U, v, BROW_V, BROW_RADII)] = HAIR
    window[_inside(side_u - EYE_U, v, EYE_V, EYE_RADII)] = SCLERA
    window[_inside(side_u - EYE_U, v, EYE_V, (IRIS_RADIUS, IRIS_RADIUS))] = IRIS
    window[_inside(side_u - EYE_U, v, EYE_V, (PUPIL_RADIUS, PUPIL_RADIUS))] = PUPIL

    # 5. mouth: the upper lip stays, the lower lip moves down by the opening
    index, u, v = head.window(
        (-MOUTH_HALF_WIDTH, MOUTH_HALF_WIDTH), (MOUTH_V - LIP_THICKNESS, MOUTH_V + max_open + LIP_THICKNESS)
    )
    window, mouth_centre = labels[index], MOUTH_V + h / 2
    window[_inside(u, v, mouth_centre, (MOUTH_HALF_WIDTH, h / 2 + LIP_THICKNESS))] = LIPS
    window[_inside(u, v, mouth_centre, (MOUTH_INNER_HALF_WIDTH, np.maximum(h / 2, 1e-6)))] = MOUTH

    frames = _colour_and_shrink(labels, _palette(identity, appearance), height, width)
    boxes = (head.centre_x, head.centre_y, np.deg2rad(pose.roll_deg + offsets[:, 2]), pose.scale)
    face_boxes = _box(*boxes, *_face_outline(identity.face_shape, open_height), height, width)
    mouth_boxes = _box(*boxes, *_mouth_outline(open_height), height, width)
    return frames, face_boxes, mouth_boxes


def _colour_and_shrink(labels: np.ndarray, palette: np.ndarray, height: int, width: int) -> np.ndarray:
    """Colour the ``(F, H*s, W*s)`` label map and box-filter it to ``(F, H, W, 3)`` uint8.

    The three channels travel packed in 16-bit fields of one uint64 (a sum of SUPERSAMPLE**2 bytes cannot
    overflow a field), which makes the look-up and the sums several times faster than on (..., 3) arrays.
    """
    wide = palette.astype(np.uint64)
    packed = np.take(wide[:, 0] | wide[:, 1] << _FIELD | wide[:, 2] << (2 * _FIELD), labels)
    sums = np.zeros((len(labels), height, width), dtype=np.uint64)
    for row in range(SUPERSAMPLE):
        for col in range(SUPERSAMPLE):
            sums += packed[:, row::SUPERSAMPLE, col::SUPERSAMPLE]
    channels = np.stack([(sums >> (k * _FIELD)) & _FIELD_MASK for k in range(3)], axis=-1)
    return ((channels + SUPERSAMPLE**2 // 2) // SUPERSAMPLE**2).astype(np.uint8)


def render_reference(
    identity: Identity, appearance: Appearance, pose: Pose, height: int, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """The reference image: one still frame of ``identity`` with the mouth closed.

    Returns:
        ``(image, face_box)``: ``(H, W, 3)`` uint8 RGB and the ``(4,)`` face box as in :func:`render_frames`.
    """
    frames, face_boxes, _ = render_frames(identity, appearance, pose, np.zeros((1, 3)), np.zeros(1), height, width)
    return frames[0], face_boxes[0]
