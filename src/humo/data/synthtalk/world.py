"""The SynthTalk world: attribute tables, the identity pool, per-clip sampling and captions.

Design.md section 4 splits what a clip shows between the three conditions of HuMo:

* **identity** (skin tone, hair colour, hair style, eye colour, face shape) is shown only by the reference
  image and never named in the caption;
* **appearance** (shirt colour, background colour and pattern, head motion) is named by the caption;
* **speech** drives the mouth (:mod:`humo.data.synthtalk.speech`).

Everything random here is drawn from numpy generators seeded by ``(seed, stream, index)`` through
:class:`numpy.random.SeedSequence`, so a clip's content depends on the dataset seed and its index only (not
on the number of worker processes or the order clips are rendered in).
"""

from __future__ import annotations

import itertools
import logging
import math
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np

from humo.data.synthtalk.speech import Syllable, plan_syllables

logger = logging.getLogger(__name__)

RGB = tuple[int, int, int]
Split = Literal["train", "heldout"]

# =====================================================================================================
# Attribute tables
# =====================================================================================================
# Identity vocabularies (never used in captions). Skin tone names are deliberately not colour words, so a
# caption can be checked for identity leaks word by word.
SKIN_TONES: dict[str, RGB] = {
    "porcelain": (246, 220, 203),
    "fair": (232, 190, 160),
    "honey": (214, 160, 118),
    "tan": (180, 128, 88),
    "umber": (138, 92, 62),
    "ebony": (92, 60, 44),
}
HAIR_COLOURS: dict[str, RGB] = {
    "black": (24, 22, 24),
    "brown": (96, 58, 30),
    "blond": (226, 192, 112),
    "auburn": (160, 62, 30),
    "grey": (170, 170, 176),
}
HAIR_STYLES: tuple[str, ...] = ("short", "long", "fringe", "bun", "curly")
EYE_COLOURS: dict[str, RGB] = {
    "brown": (100, 60, 30),
    "blue": (60, 120, 210),
    "green": (60, 150, 80),
    "grey": (140, 150, 160),
}
FACE_SHAPES: tuple[str, ...] = ("oval", "round", "square", "long")

# Per-clip vocabularies (what captions talk about). Shirts are saturated, walls are pastel, so the shirt
# always stands out from the wall.
SHIRT_COLOURS: dict[str, RGB] = {
    "red": (200, 40, 40),
    "orange": (236, 128, 28),
    "yellow": (236, 204, 40),
    "green": (40, 150, 60),
    "teal": (20, 136, 136),
    "blue": (36, 76, 200),
    "purple": (120, 56, 172),
    "pink": (236, 120, 172),
    "white": (242, 242, 242),
    "black": (30, 30, 36),
}
BACKGROUND_COLOURS: dict[str, RGB] = {
    "blue": (140, 172, 224),
    "green": (150, 204, 150),
    "grey": (160, 160, 160),
    "beige": (222, 208, 176),
    "pink": (236, 190, 200),
    "purple": (180, 160, 220),
    "yellow": (240, 226, 150),
    "teal": (130, 200, 200),
    "orange": (240, 184, 130),
}
BACKGROUND_PATTERNS: tuple[str, ...] = ("plain", "striped", "checked", "dotted")
MOTIONS: tuple[str, ...] = ("still", "nodding", "swaying")

# Head motion (pixels of a 64x64 frame, hertz, degrees), drawn uniformly per clip.
NOD_AMPLITUDE_PX = (1.2, 2.2)
NOD_FREQUENCY_HZ = (1.0, 2.0)
SWAY_AMPLITUDE_PX = (1.5, 3.0)
SWAY_FREQUENCY_HZ = (0.5, 1.2)
SWAY_ROLL_DEG = (3.0, 6.0)
CLIP_OFFSET_PX = (2.0, 1.0)
"""Largest horizontal / vertical offset of a clip's head from the frame centre line."""

# Reference pose: a different framing of the same person (paper's cross-pair rule: no copy-paste shortcut).
REFERENCE_SCALE = (0.82, 0.95)
REFERENCE_OFFSET_PX = (5.0, 2.0)
REFERENCE_MIN_SHIFT_PX = 2.0
REFERENCE_ROLL_DEG = 6.0

CAPTION_TEMPLATES: tuple[str, ...] = (
    "A person in {shirt} shirt talks in front of a {pattern} {background} wall, {motion}.",
    "Wearing {shirt} shirt, a person speaks in front of a {pattern} {background} wall, {motion}.",
    "A person wearing {shirt} shirt is talking against a {pattern} {background} background, {motion}.",
)
MOTION_PHRASES: dict[str, str] = {
    "still": "holding their head still",
    "nodding": "nodding slightly",
    "swaying": "swaying gently from side to side",
}

assert set(MOTION_PHRASES) == set(MOTIONS)  # every motion has its caption phrase

CLIP_ID_FORMAT = "st_{index:06d}"
IDENTITY_ID_FORMAT = "id_{index:03d}"

# Independent random streams of one dataset seed (SeedSequence entropy: (seed, stream[, index])).
_POOL_STREAM, _ALLOCATION_STREAM, _CLIP_STREAM = 1, 2, 3


# =====================================================================================================
# Records
# =====================================================================================================


@dataclass(frozen=True)
class Identity:
    """A person of the pool; shown by the reference image only."""

    identity_id: str
    split: Split
    """Held-out identities never appear in train clips; they are for evaluation."""
    skin_tone: str
    hair_colour: str
    hair_style: str
    eye_colour: str
    face_shape: str

    def attributes(self) -> dict[str, str]:
        """The five identity attributes by name."""
        return {key: value for key, value in asdict(self).items() if key not in ("identity_id", "split")}


@dataclass(frozen=True)
class Appearance:
    """What a caption names: shirt and wall (the motion lives in :class:`Motion`)."""

    shirt_colour: str
    background_colour: str
    background_pattern: str


@dataclass(frozen=True)
class Motion:
    """Head motion of a clip: a sinusoid in x (swaying, with roll) or y (nodding)."""

    kind: str
    amplitude_px: float = 0.0
    frequency_hz: float = 0.0
    phase: float = 0.0
    roll_deg: float = 0.0


@dataclass(frozen=True)
class Pose:
    """Where the head sits: offset from the default position (pixels of a 64x64 frame), roll, scale."""

    dx: float = 0.0
    dy: float = 0.0
    roll_deg: float = 0.0
    scale: float = 1.0


@dataclass(frozen=True)
class ClipSpec:
    """Everything needed to render one clip and its reference image; a pure function of (seed, index)."""

    index: int
    clip_id: str
    clip_seed: int
    identity: Identity
    appearance: Appearance
    motion: Motion
    pose: Pose
    reference_appearance: Appearance
    reference_pose: Pose
    syllables: tuple[Syllable, ...]
    caption: str


# =====================================================================================================
# Identity pool
# =====================================================================================================


def build_identity_pool(seed: int, num_train: int, num_heldout: int) -> list[Identity]:
    """The fixed pool of identities: ``num_train`` train identities, then ``num_heldout`` held-out ones.

    All identities differ in their attribute tuple. Every attribute value of a held-out identity also occurs
    among the train identities, so held-out identities are new *combinations*, not unseen colours.

    Args:
        seed: dataset seed (non-negative).
        num_train: number of train identities.
        num_heldout: number of held-out identities.

    Returns:
        ``num_train + num_heldout`` identities with ids ``id_000``, ``id_001``, ... in that order.

    Raises:
        ValueError: more identities requested than distinct attribute tuples exist, or too few train
            identities to cover the attribute values of the held-out ones.
    """
    combos = list(itertools.product(SKIN_TONES, HAIR_COLOURS, HAIR_STYLES, EYE_COLOURS, FACE_SHAPES))
    if num_train + num_heldout > len(combos):
        raise ValueError(
            f"{num_train}+{num_heldout} identities requested but only {len(combos)} distinct attribute "
            f"combinations exist; lower synth.num_train_identities / synth.num_heldout_identities"
        )
    rng = np.random.default_rng([seed, _POOL_STREAM])
    order = rng.permutation(len(combos))
    train = [combos[i] for i in order[:num_train]]
    seen = [set(values) for values in zip(*train, strict=True)] if train else [set() for _ in range(5)]
    heldout = [
        combos[i] for i in order[num_train:] if all(value in seen[k] for k, value in enumerate(combos[i]))
    ][:num_heldout]
    if len(heldout) < num_heldout:
        raise ValueError(
            f"only {len(heldout)} of {num_heldout} held-out identities can be built from attribute values the "
            f"{num_train} train identities cover; raise synth.num_train_identities"
        )
    return [
        Identity(IDENTITY_ID_FORMAT.format(index=index), split, *combo)
        for index, (split, combo) in enumerate([("train", c) for c in train] + [("heldout", c) for c in heldout])
    ]


def allocate_clips(
    seed: int, num_clips: int, identities: list[Identity], heldout_fraction: float
) -> list[Identity]:
    """Assign an identity to every clip index.

    Held-out identities get ``round(heldout_fraction * num_clips)`` clips (raised or lowered so that every
    identity gets at least one clip; a warning says so), spread as evenly as possible; the order is shuffled.

    Returns:
        ``num_clips`` identities, entry ``i`` being the identity of clip ``i``.

    Raises:
        ValueError: fewer clips than identities.
    """
    train = [identity for identity in identities if identity.split == "train"]
    heldout = [identity for identity in identities if identity.split == "heldout"]
    if num_clips < len(identities):
        raise ValueError(f"num_clips={num_clips} is smaller than the {len(identities)} identities; raise num_clips")
    wanted = round(heldout_fraction * num_clips) if heldout else 0
    num_heldout = min(max(wanted, len(heldout)), num_clips - len(train))
    if heldout and num_heldout != wanted:
        logger.warning(
            "held-out clips: %d instead of round(%s * %d) = %d, so that every identity gets a clip",
            num_heldout, heldout_fraction, num_clips, wanted,
        )
    if not heldout and heldout_fraction > 0:
        logger.warning("heldout_fraction=%s ignored: there are no held-out identities", heldout_fraction)
    owners = [train[i % len(train)] for i in range(num_clips - num_heldout)]
    owners += [heldout[i % len(heldout)] for i in range(num_heldout)]
    rng = np.random.default_rng([seed, _ALLOCATION_STREAM])
    return [owners[i] for i in rng.permutation(num_clips)]


# =====================================================================================================
# Per-clip sampling
# =====================================================================================================


def clip_seed(seed: int, index: int) -> int:
    """The seed of clip ``index``: a 63-bit integer derived from (dataset seed, index)."""
    state = np.random.SeedSequence([seed, _CLIP_STREAM, index]).generate_state(1, dtype=np.uint64)
    return int(state[0] >> np.uint64(1))


def _choice(rng: np.random.Generator, options: list[str] | tuple[str, ...]) -> str:
    return options[int(rng.integers(len(options)))]


def _sample_appearance(rng: np.random.Generator, avoid: Appearance | None = None) -> Appearance:
    """A shirt and a wall; with ``avoid``, every one of the three differs from ``avoid``'s."""
    shirts = [name for name in SHIRT_COLOURS if avoid is None or name != avoid.shirt_colour]
    shirt = _choice(rng, shirts)
    walls = [
        name for name in BACKGROUND_COLOURS if name != shirt and (avoid is None or name != avoid.background_colour)
    ]
    patterns = [name for name in BACKGROUND_PATTERNS if avoid is None or name != avoid.background_pattern]
    return Appearance(shirt, _choice(rng, walls), _choice(rng, patterns))


def _sample_motion(rng: np.random.Generator) -> Motion:
    kind = _choice(rng, MOTIONS)
    phase = float(rng.uniform(0.0, 2.0 * math.pi))
    if kind == "nodding":
        return Motion(kind, float(rng.uniform(*NOD_AMPLITUDE_PX)), float(rng.uniform(*NOD_FREQUENCY_HZ)), phase)
    if kind == "swaying":
        return Motion(
            kind,
            float(rng.uniform(*SWAY_AMPLITUDE_PX)),
            float(rng.uniform(*SWAY_FREQUENCY_HZ)),
            phase,
            float(rng.uniform(*SWAY_ROLL_DEG)),
        )
    return Motion(kind)


def _sample_reference_pose(rng: np.random.Generator, clip_pose: Pose) -> Pose:
    """A smaller, shifted, tilted framing whose offset is at least REFERENCE_MIN_SHIFT_PX from the clip's."""
    max_dx, max_dy = REFERENCE_OFFSET_PX
    dx = float(rng.uniform(REFERENCE_MIN_SHIFT_PX, max_dx)) * (1.0 if rng.random() < 0.5 else -1.0)
    return Pose(
        dx=clip_pose.dx + dx,
        dy=float(rng.uniform(-max_dy, max_dy)),
        roll_deg=float(rng.uniform(-REFERENCE_ROLL_DEG, REFERENCE_ROLL_DEG)),
        scale=float(rng.uniform(*REFERENCE_SCALE)),
    )


def sample_clip_spec(
    seed: int, index: int, identity: Identity, num_samples: int, sample_rate: int
) -> ClipSpec:
    """Draw the appearance, motion, reference framing and speech of clip ``index`` of ``identity``.

    Args:
        seed: dataset seed.
        index: clip index (its id is ``st_{index:06d}``).
        identity: who speaks.
        num_samples: audio length in samples (the clip's duration).
        sample_rate: audio sample rate in Hz.

    Returns:
        The clip's :class:`ClipSpec`; the same arguments always give the same spec.
    """
    own_seed = clip_seed(seed, index)
    rng = np.random.default_rng(own_seed)
    appearance = _sample_appearance(rng)
    motion = _sample_motion(rng)
    max_dx, max_dy = CLIP_OFFSET_PX
    pose = Pose(dx=float(rng.uniform(-max_dx, max_dx)), dy=float(rng.uniform(-max_dy, max_dy)))
    reference_appearance = _sample_appearance(rng, avoid=appearance)
    reference_pose = _sample_reference_pose(rng, pose)
    syllables = plan_syllables(np.random.default_rng([own_seed, 1]), num_samples, sample_rate)
    caption = write_caption(appearance, motion.kind, template=int(rng.integers(len(CAPTION_TEMPLATES))))
    return ClipSpec(
        index=index,
        clip_id=CLIP_ID_FORMAT.format(index=index),
        clip_seed=own_seed,
        identity=identity,
        appearance=appearance,
        motion=motion,
        pose=pose,
        reference_appearance=reference_appearance,
        reference_pose=reference_pose,
        syllables=syllables,
        caption=caption,
    )


# =====================================================================================================
# Captions
# =====================================================================================================


def _with_article(word: str) -> str:
    return f"{'an' if word[0] in 'aeiou' else 'a'} {word}"


def write_caption(appearance: Appearance, motion: str, template: int = 0) -> str:
    """The caption of a clip: shirt, wall and motion only; it never describes the face or hair.

    Args:
        appearance: shirt colour, background colour and pattern.
        motion: one of :data:`MOTIONS`.
        template: index into :data:`CAPTION_TEMPLATES` (varied per clip for some wording diversity).

    Returns:
        One sentence, e.g. ``"A person in a green shirt talks in front of a striped blue wall, nodding
        slightly."``

    Raises:
        ValueError: an unknown motion or template index.
    """
    if motion not in MOTION_PHRASES:
        raise ValueError(f"motion={motion!r} is not one of {', '.join(MOTION_PHRASES)}")
    if not 0 <= template < len(CAPTION_TEMPLATES):
        raise ValueError(f"template={template} must be in 0..{len(CAPTION_TEMPLATES) - 1}")
    return CAPTION_TEMPLATES[template].format(
        shirt=_with_article(appearance.shirt_colour),
        pattern=appearance.background_pattern,
        background=appearance.background_colour,
        motion=MOTION_PHRASES[motion],
    )
