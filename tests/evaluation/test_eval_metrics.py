"""Metric sanity on ground-truth SynthTalk clips: a metric that cannot fail these checks is not a metric."""

from __future__ import annotations

import math

import numpy as np
import pytest

from humo.data.synthtalk.world import BACKGROUND_COLOURS, SHIRT_COLOURS
from humo.evaluation import metrics, probes

MAX_OFFSET = 10
SHIFT = 8


def _sync(clip, frames=None, audio=None) -> dict[str, float]:
    region = probes.union_box(clip.truth["mouth_box"], margin=1.0)
    estimate = metrics.sync_exact(
        clip.frames if frames is None else frames,
        region,
        clip.audio if audio is None else audio,
        clip.fps,
        clip.sample_rate,
        MAX_OFFSET,
    )
    return metrics.sync_figures(estimate)


# ----------------------------------------------------------------------------------------------------
# The probes read the renderer's ground truth back from pixels
# ----------------------------------------------------------------------------------------------------


def test_probes_recover_every_ground_truth_attribute(truth_clips) -> None:
    for clip in truth_clips:
        truth = clip.truth
        identity = {key: truth["identity"][key] for key in ("skin_tone", "hair_colour")}
        assert probes.measure_identity(clip.reference, clip.reference_box).names() == [identity]
        assert all(names == identity for names in probes.measure_identity(clip.frames, clip.face_boxes).names())
        scene = probes.measure_scene(clip.frames, clip.face_boxes).names()
        expected = {
            "shirt_colour": truth["shirt_colour"],
            "background_colour": truth["background_colour"],
            "background_pattern": truth["background_pattern"],
            "motion": truth["motion"]["kind"],
        }
        assert scene == expected, truth["clip_id"]
        assert probes.parse_caption(clip.caption) == expected


def test_parse_caption_keeps_only_named_attributes() -> None:
    assert probes.parse_caption("A person in an orange shirt sings.") == {"shirt_colour": "orange"}
    assert probes.parse_caption("A cat on a sofa.") == {}


# ----------------------------------------------------------------------------------------------------
# Audio-visual sync
# ----------------------------------------------------------------------------------------------------


def test_sync_is_high_at_offset_zero_on_ground_truth(truth_clips) -> None:
    for clip in truth_clips:
        figures = _sync(clip)
        assert figures["sync_offset"] == 0
        assert figures["sync_confidence_at_zero"] > 0.5
        assert figures["sync_distance_at_zero"] < 0.3


@pytest.mark.parametrize("shift", [SHIFT, -SHIFT])
def test_shifted_audio_scores_clearly_worse_and_reports_the_shift(truth_clips, shift: int) -> None:
    for clip in truth_clips:
        in_sync = _sync(clip)
        shifted = _sync(clip, audio=metrics.shift_audio(clip.audio, shift, clip.fps, clip.sample_rate))
        assert shifted["sync_offset"] == shift  # offset > 0: the audio lags the video
        assert shifted["sync_confidence_at_zero"] < in_sync["sync_confidence_at_zero"] - 0.4
        assert shifted["sync_distance_at_zero"] > in_sync["sync_distance_at_zero"] + 0.4


def test_generic_motion_sync_agrees_on_ground_truth(truth_clips) -> None:
    for clip in truth_clips:
        estimate = metrics.sync_motion(clip.frames, clip.face_boxes, clip.audio, clip.fps, clip.sample_rate, MAX_OFFSET)
        assert estimate.offset == 0
        shifted = metrics.shift_audio(clip.audio, SHIFT, clip.fps, clip.sample_rate)
        moved = metrics.sync_motion(clip.frames, clip.face_boxes, shifted, clip.fps, clip.sample_rate, MAX_OFFSET)
        assert moved.offset == SHIFT


def test_frozen_video_has_zero_motion_and_low_sync(truth_clips) -> None:
    for clip in truth_clips:
        frozen = np.repeat(clip.frames[len(clip.frames) // 2][None], len(clip.frames), axis=0)
        assert metrics.quality_figures(frozen)["motion"] == 0.0
        assert metrics.quality_figures(frozen)["flicker"] == 0.0
        figures = _sync(clip, frames=frozen)
        assert abs(figures["sync_confidence_at_zero"]) < 0.05
        assert figures["sync_confidence_at_zero"] < _sync(clip)["sync_confidence_at_zero"] - 0.5
        assert metrics.quality_figures(clip.frames)["motion"] > 0.0


def test_shift_audio_keeps_length_and_moves_content() -> None:
    audio = np.zeros(6400, dtype=np.float32)
    audio[640] = 1.0
    delayed = metrics.shift_audio(audio, 2, 25.0, 16_000)
    advanced = metrics.shift_audio(audio, -1, 25.0, 16_000)
    assert len(delayed) == len(advanced) == len(audio)
    assert int(np.argmax(delayed)) == 640 + 1280 and int(np.argmax(advanced)) == 0


# ----------------------------------------------------------------------------------------------------
# Subject consistency
# ----------------------------------------------------------------------------------------------------


def _other_identity(clips, clip):
    """A clip of a person whose skin tone or hair colour differs (the colours the probes measure)."""
    mine = clip.truth["identity"]
    for other in clips:
        theirs = other.truth["identity"]
        if (theirs["skin_tone"], theirs["hair_colour"]) != (mine["skin_tone"], mine["hair_colour"]):
            return other
    raise AssertionError("the test dataset has a single skin/hair combination")


def test_another_identitys_reference_scores_clearly_lower(truth_clips) -> None:
    for clip in truth_clips:
        own = metrics.identity_exact(clip.reference, clip.reference_box, clip.frames, clip.face_boxes)
        other = _other_identity(truth_clips, clip)
        swapped = metrics.identity_exact(other.reference, other.reference_box, clip.frames, clip.face_boxes)
        assert own["identity_similarity"] > 0.9 and own["identity_attribute_match"] == 1.0
        assert swapped["identity_similarity"] < own["identity_similarity"] - 0.3
        assert swapped["identity_attribute_match"] <= 0.5
        assert metrics.identity_against_truth(clip.frames, clip.face_boxes, clip.truth["identity"]) == 1.0
        assert metrics.face_presence_synthtalk(clip.reference, clip.reference_box, clip.frames, clip.face_boxes) == 1.0


# ----------------------------------------------------------------------------------------------------
# Text alignment
# ----------------------------------------------------------------------------------------------------


def test_caption_naming_another_shirt_or_wall_scores_clearly_lower(truth_clips) -> None:
    for clip in truth_clips:
        truth = clip.truth
        own = metrics.text_alignment_exact(clip.caption, clip.frames, clip.face_boxes)
        assert own["text_alignment"] == 1.0
        shirt = next(name for name in SHIRT_COLOURS if name != truth["shirt_colour"])
        wall = next(name for name in BACKGROUND_COLOURS if name != truth["background_colour"])
        wrong_shirt = clip.caption.replace(f" {truth['shirt_colour']} shirt", f" {shirt} shirt")
        wrong_wall = clip.caption.replace(f" {truth['background_colour']} ", f" {wall} ")
        assert wrong_shirt != clip.caption and wrong_wall != clip.caption
        for caption in (wrong_shirt, wrong_wall):
            figures = metrics.text_alignment_exact(caption, clip.frames, clip.face_boxes)
            assert figures["text_alignment"] <= own["text_alignment"] - 0.25


def test_caption_without_attributes_is_undefined(truth_clips) -> None:
    clip = truth_clips[0]
    assert math.isnan(metrics.text_alignment_exact("A cat.", clip.frames, clip.face_boxes)["text_alignment"])


# ----------------------------------------------------------------------------------------------------
# Quality and motion
# ----------------------------------------------------------------------------------------------------


def test_quality_figures_respond_to_blur_flicker_and_clipping(truth_clips) -> None:
    import cv2

    frames = truth_clips[0].frames
    sharp = metrics.quality_figures(frames)
    blurred = np.stack([cv2.GaussianBlur(frame, (5, 5), 2.0) for frame in frames])
    assert metrics.quality_figures(blurred)["sharpness"] < 0.5 * sharp["sharpness"]
    flickering = frames.astype(np.int16)
    flickering[::2] += 40
    flickering = np.clip(flickering, 0, 255).astype(np.uint8)
    assert metrics.quality_figures(flickering)["flicker"] > sharp["flicker"] + 20
    white = np.full_like(frames, 255)
    assert metrics.quality_figures(white)["clipped_fraction"] == 1.0
    assert sharp["clipped_fraction"] < 0.2


def test_face_presence_ratio_counts_frames_with_a_box() -> None:
    boxes = np.array([[0, 0, 10, 10], [np.nan] * 4, [1, 1, 5, 5], [np.nan] * 4], dtype=np.float64)
    assert metrics.face_presence_ratio(boxes) == 0.5
    assert metrics.face_presence_ratio(np.zeros((0, 4))) == 0.0


def test_metric_table_names_provenance_for_every_family() -> None:
    families = {info.family for info in metrics.METRICS.values()}
    assert families == {"sync", "identity", "text", "quality"}
    assert {info.provenance for info in metrics.METRICS.values()} == {"exact", "proxy", "model"}
