"""humo.data.sync: the model-free offset search (contract 2), on synthetic signals and on SynthTalk clips."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from humo.constants import AUDIO_SAMPLE_RATE, SAMPLES_PER_VIDEO_FRAME
from humo.data.media import read_clip
from humo.data.sync import (
    MotionEnvelopeScorer,
    SyncEstimate,
    SyncScorer,
    audio_envelope,
    estimate_sync,
    make_scorer,
    mouth_motion,
)

MAX_OFFSET = 10


def _synthtalk_clips(root: Path) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(frames, ground-truth face boxes, audio) of every clip of a SynthTalk folder."""
    table = pd.read_parquet(root / "video_caption.parquet")
    clips = []
    for row in table.itertuples():
        clip = read_clip(root / row.video)
        boxes = np.asarray(json.loads((root / row.annotation).read_text())["face_box"])
        clips.append((clip.frames, boxes, clip.audio))
    return clips


def _shift_audio(audio: np.ndarray, frames: int) -> np.ndarray:
    """The audio delayed by ``frames`` video frames (silence in front, same length)."""
    pad = np.zeros(frames * SAMPLES_PER_VIDEO_FRAME, dtype=audio.dtype)
    return np.concatenate([pad, audio])[: len(audio)]


def test_sign_convention_on_synthetic_signals() -> None:
    rng = np.random.default_rng(0)
    envelope = np.abs(rng.normal(size=60)).cumsum() % 3.0  # an irregular, non-periodic envelope
    activity = np.r_[0, np.abs(np.diff(envelope))]
    # the mouth moves 3 frames *before* the sound: audio lags video by 3
    mouth = np.r_[activity[3:], np.zeros(3)]
    estimate = estimate_sync(mouth, envelope, max_offset=6)
    assert estimate.offset == 3
    assert estimate.distance < 0.1 and estimate.confidence > 0.5
    assert estimate.scores.shape == (13,) and int(np.argmin(estimate.scores)) == 3 + 6


def test_flat_signals_have_no_confidence_and_bad_input_is_refused() -> None:
    flat = estimate_sync(np.zeros(40), np.ones(40), max_offset=5)
    assert flat.confidence == pytest.approx(0.0) and flat.distance == pytest.approx(1.0)
    with pytest.raises(ValueError, match="one value per frame"):
        estimate_sync(np.zeros(40), np.zeros(39), max_offset=5)
    with pytest.raises(ValueError, match="too few"):
        estimate_sync(np.zeros(8), np.zeros(8), max_offset=6)


def test_audio_envelope_is_rms_per_frame() -> None:
    audio = np.zeros(10 * SAMPLES_PER_VIDEO_FRAME, dtype=np.float32)
    audio[3 * SAMPLES_PER_VIDEO_FRAME : 4 * SAMPLES_PER_VIDEO_FRAME] = 0.5
    envelope = audio_envelope(audio, num_frames=12)
    assert envelope.shape == (12,)
    assert envelope[3] == pytest.approx(0.5) and np.count_nonzero(envelope) == 1  # frames past the end are 0


def test_mouth_motion_sees_only_the_mouth_region() -> None:
    frames = np.full((6, 64, 64, 3), 128, dtype=np.uint8)
    box = np.array([16.0, 8.0, 48.0, 48.0])  # mouth region: x 24..40, y 32..46
    frames[3, 36:42, 28:36] = 0  # the mouth opens in frame 3
    frames[4, 10:16, 20:30] = 0  # the eyes change in frame 4: not the mouth
    motion = mouth_motion(frames, np.tile(box, (6, 1)))
    assert motion.shape == (6,)
    assert motion[3] > 5 and motion[4] > 5  # opening at 3, closing again at 4
    assert motion[1] == 0 and motion[2] == 0 and motion[5] == 0


def test_synthtalk_in_sync_within_one_frame_and_shift_of_8_found(synthtalk_small: Path) -> None:
    scorer = MotionEnvelopeScorer(max_offset=MAX_OFFSET)
    in_sync, shifted = [], []
    for frames, boxes, audio in _synthtalk_clips(synthtalk_small):
        in_sync.append(scorer(frames, boxes, audio, 25.0, AUDIO_SAMPLE_RATE))
        shifted.append(scorer(frames, boxes, _shift_audio(audio, 8), 25.0, AUDIO_SAMPLE_RATE))
    assert len(in_sync) == 12
    assert all(abs(e.offset) <= 1 for e in in_sync), [e.offset for e in in_sync]
    assert all(abs(e.offset - 8) <= 1 for e in shifted), [e.offset for e in shifted]
    # the true offset is clear-cut: well correlated and confident, in sync and shifted alike
    assert max(e.distance for e in in_sync) < 0.5 and min(e.confidence for e in in_sync) > 0.3
    assert min(e.confidence for e in shifted) > 0.3


def test_scorer_registry_and_protocol() -> None:
    scorer = make_scorer("motion", 4)
    assert isinstance(scorer, SyncScorer) and scorer.max_offset == 4
    with pytest.raises(ValueError, match="registered: motion, mouth, lips, syncnet"):
        make_scorer("nosuch", 4)
    for name in ("mouth", "lips"):
        other = make_scorer(name, 4)
        assert isinstance(other, SyncScorer) and other.uses_face_track and not scorer.uses_face_track
    assert isinstance(scorer(np.zeros((9, 16, 16, 3), np.uint8), np.tile([2.0, 2, 14, 14], (9, 1)),
                             np.zeros(9 * 640, np.float32), 25.0, AUDIO_SAMPLE_RATE), SyncEstimate)  # fmt: skip
