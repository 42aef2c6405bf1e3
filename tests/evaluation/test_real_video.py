"""Real-video evaluation on ../shared/data/real (MuseTalk's sun.mp4 + sun.wav): face presence, quality, sync.

What the sync figures show on this sample is reported, not assumed: the person in sun.mp4 poses with her lips
closed, so her video is not in sync with sun.wav (a MuseTalk *driving* audio); the test checks that the figures
are computed on the real media (muxed AAC round trip included) and that the no-sync baseline is there to read
them against.
"""

from __future__ import annotations

import numpy as np
import pytest

from humo.data import landmarks
from humo.data.media import write_shifted_copy
from humo.data.probe import FrameReader
from humo.evaluation.real import describe, evaluate_real_video, null_summary

needs_faces = pytest.mark.skipif(not landmarks.available(), reason="needs humo[faces] (dlib)")

MAX_OFFSET = 15
SHIFT = 8


@pytest.mark.slow
def test_real_video_figures(real_data) -> None:
    figures = evaluate_real_video(real_data / "musetalk_sun.mp4", real_data / "musetalk_sun.wav", SHIFT, MAX_OFFSET)
    assert figures["num_frames"] == 550 and figures["fps"] == 25.0 and figures["size"] == [576, 768]
    assert figures["face_presence"] > 0.9  # one person facing the camera throughout
    quality = figures["quality"]
    assert quality["sharpness"] > 0 and quality["face_sharpness"] > 0
    assert 30 < quality["brightness"] < 230 and quality["clipped_fraction"] < 0.1
    assert 0 < quality["motion"] < 0.1 and quality["flicker"] < 5
    for name in ("own_audio", "shifted_audio"):
        assert len(figures[name]["scores"]) == 2 * MAX_OFFSET + 1
        assert abs(figures[name]["sync_offset"]) <= MAX_OFFSET
    own, shifted = np.array(figures["own_audio"]["scores"]), np.array(figures["shifted_audio"]["scores"])
    assert not np.allclose(own, shifted)  # the shifted copy really is another pairing
    null = figures["null"]
    assert null["p95"] >= null["mean"] and 0.0 <= null["own_audio_percentile"] <= 100.0
    assert figures["provenance"] == "proxy"
    # she does not speak these words: her own pairing is no better than audio rolled out of place
    assert figures["own_audio"]["sync_confidence_at_zero"] < null["p95"]


@pytest.mark.slow
@needs_faces
@pytest.mark.parametrize("name", ["latentsync_demo1", "latentsync_demo2"])
def test_own_speech_beats_the_no_sync_baseline_and_a_400ms_copy_does_not(real_data, tmp_path, name) -> None:
    own = evaluate_real_video(real_data / f"{name}.mp4", None, 8, 15)
    copy = write_shifted_copy(real_data / f"{name}.mp4", tmp_path / f"{name}_+400ms.mp4", 0.4)
    late = evaluate_real_video(copy, None, 8, 15)
    assert own["sync_scorer"] == late["sync_scorer"] == "lips"
    assert own["own_audio"]["sync_confidence_at_zero"] > own["null"]["p95"]
    assert late["own_audio"]["sync_confidence_at_zero"] < late["null"]["p95"]
    assert abs(own["own_audio"]["sync_offset"]) <= 2 and abs(late["own_audio"]["sync_offset"] - 10) <= 2
    assert own["identity"]["halves_similarity"] > 0.95


def _face(path, frame: int):
    return landmarks.embed_face(FrameReader(path).get(np.array([frame]))[0])


@needs_faces
def test_identity_same_person_scores_clearly_above_different_people(real_data) -> None:
    from PIL import Image

    demo1 = real_data / "latentsync_demo1.mp4"
    demo2 = real_data / "latentsync_demo2.mp4"
    first, last = _face(demo1, 20), _face(demo1, 230)  # one person, 8 s apart
    other_first, other_last = _face(demo2, 40), _face(demo2, 480)
    portrait = landmarks.embed_face(np.asarray(Image.open(real_data / "humo_man_Jaime.png").convert("RGB")))
    same = [landmarks.cosine(first, last), landmarks.cosine(other_first, other_last)]
    pairs = [(first, other_first), (last, other_last), (first, portrait), (other_first, portrait)]
    different = [landmarks.cosine(a, b) for a, b in pairs]
    assert min(same) > 0.93 and max(different) < min(same) - 0.08, (same, different)


def test_a_baseline_that_cannot_be_computed_is_null_with_a_note_not_zeros() -> None:
    short = null_summary(None, 0.4, 4.2)
    assert short["mean"] is None and short["p95"] is None and short["own_audio_percentile"] is None
    assert "4.2 s" in short["note"] and "6 s" in short["note"]
    measured = null_summary(np.array([0.1, 0.2, 0.3, 0.9]), 0.5, 22.0)
    assert measured["p95"] > measured["mean"] and measured["own_audio_percentile"] == 75.0 and "note" not in measured
    figures = {
        "video": "/x/clip.mp4", "face_presence": 1.0, "shift_frames": 8, "null": short,
        "own_audio": {"sync_confidence_at_zero": 0.4, "sync_offset": 0},
        "shifted_audio": {"sync_confidence_at_zero": 0.1, "sync_offset": 8},
    }
    assert "baseline p95 not computed (clip too short)" in describe(figures)
