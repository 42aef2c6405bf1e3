"""Real-video evaluation on ../shared/data/real (MuseTalk's sun.mp4 + sun.wav): face presence, quality, sync.

What the sync figures show on this sample is reported, not assumed: the person in sun.mp4 poses with her lips
closed, so her video is not in sync with sun.wav (a MuseTalk *driving* audio); the test checks that the figures
are computed on the real media (muxed AAC round trip included) and that the no-sync baseline is there to read
them against.
"""

from __future__ import annotations

import numpy as np
import pytest

from humo.evaluation.real import describe, evaluate_real_video, null_summary

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
