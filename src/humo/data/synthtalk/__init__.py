"""SynthTalk: the embedded, procedurally rendered talking-person dataset (design.md section 4).

A 64x64, 25 fps talking-head close-up with 16 kHz speech-like audio, exact ground truth and one job per
HuMo condition: the **reference image** carries the identity (skin tone, hair colour and style, eye colour,
face shape), the **caption** carries the shirt, the wall and the head motion, and the **audio** drives the
mouth, whose opening equals the audio's per-frame amplitude envelope (0 in silence).

Modules, from the leaves up:

* :mod:`~humo.data.synthtalk.speech`: syllable plans, waveform synthesis, the known envelope;
* :mod:`~humo.data.synthtalk.world`: attribute tables, identity pool, per-clip sampling, captions;
* :mod:`~humo.data.synthtalk.render`: frames and reference images (numpy, vectorised);
* :mod:`~humo.data.synthtalk.stage`: :func:`run`, writing the HuMoSet layout safely and deterministically.

Example::

    from humo.config import SynthConfig
    from humo.data import synthtalk

    summary = synthtalk.run(SynthConfig(num_clips=8, num_train_identities=2, num_heldout_identities=1), out)
"""

from __future__ import annotations

from humo.data.synthtalk.render import head_offsets, render_frames, render_reference
from humo.data.synthtalk.speech import Syllable, frame_envelope, plan_syllables, synthesize_speech
from humo.data.synthtalk.stage import (
    CAPTION_COLUMNS,
    CAPTIONS_NAME,
    LAYOUT,
    MARKER_NAME,
    SYNTHTALK_VERSION,
    SynthSummary,
    plan_dataset,
    render_clip,
    run,
)
from humo.data.synthtalk.world import (
    Appearance,
    ClipSpec,
    Identity,
    Motion,
    Pose,
    allocate_clips,
    build_identity_pool,
    sample_clip_spec,
    write_caption,
)

__all__ = [
    "CAPTIONS_NAME",
    "CAPTION_COLUMNS",
    "LAYOUT",
    "MARKER_NAME",
    "SYNTHTALK_VERSION",
    "Appearance",
    "ClipSpec",
    "Identity",
    "Motion",
    "Pose",
    "SynthSummary",
    "Syllable",
    "allocate_clips",
    "build_identity_pool",
    "frame_envelope",
    "head_offsets",
    "plan_dataset",
    "plan_syllables",
    "render_clip",
    "render_frames",
    "render_reference",
    "run",
    "sample_clip_spec",
    "synthesize_speech",
    "write_caption",
]
