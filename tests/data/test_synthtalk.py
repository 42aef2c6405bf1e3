"""SynthTalk: layout, determinism, audio-visual sync, the cross-pair reference, identity splits and safety."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from pydantic import ValidationError
from typer.testing import CliRunner

from humo.cli import app
from humo.config import SynthConfig
from humo.constants import AUDIO_SAMPLE_RATE, SAMPLES_PER_VIDEO_FRAME
from humo.data import synthtalk
from humo.data.media import read_clip
from humo.data.synthtalk import render, speech, stage, world

TINY = SynthConfig(num_clips=6, num_train_identities=2, num_heldout_identities=1, heldout_fraction=0.34, workers=1)
"""Six clips: four of two train identities, two of one held-out identity."""
DARK_LUMA = 35
"""Luma below which a pixel counts as mouth interior (the darkest skin and its lips are far above it)."""
SYNC_TOLERANCE_SAMPLES = AUDIO_SAMPLE_RATE // 100  # 10 ms


# =====================================================================================================
# Fixtures and helpers
# =====================================================================================================


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synthtalk") / "raw"
    summary = synthtalk.run(TINY, out)
    assert not summary.up_to_date and summary.num_clips == TINY.num_clips
    return out


def _annotation(root: Path, clip_id: str) -> dict:
    return json.loads((root / "annotations" / f"{clip_id}.json").read_text())


def _clip_ids(root: Path) -> list[str]:
    return pq.read_table(root / stage.CAPTIONS_NAME).column("video_id").to_pylist()


def _digests(root: Path) -> dict[str, str]:
    return {
        path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def _nearest(colour: np.ndarray, palette: dict[str, tuple[int, int, int]]) -> str:
    return min(palette, key=lambda name: float(np.sum((np.asarray(palette[name], float) - colour) ** 2)))


def _median_colour(image: np.ndarray, rows: slice, cols: slice) -> np.ndarray:
    return np.median(image[rows, cols].reshape(-1, 3).astype(float), axis=0)


def _luma(frames: np.ndarray) -> np.ndarray:
    return frames.astype(float) @ np.array([0.299, 0.587, 0.114])


def _best_lag(decoded: np.ndarray, written: np.ndarray, max_lag: int) -> int:
    """The shift (samples) of ``decoded`` against ``written`` that maximises their cross-correlation."""
    size = len(written)
    lags = range(-max_lag, max_lag + 1)
    scores = [
        np.dot(decoded[max(lag, 0) : size + min(lag, 0)], written[max(-lag, 0) : size - max(lag, 0)]) for lag in lags
    ]
    return list(lags)[int(np.argmax(scores))]


# =====================================================================================================
# Layout and determinism
# =====================================================================================================


def test_layout_parquet_rows_and_marker(dataset: Path) -> None:
    table = pq.read_table(dataset / stage.CAPTIONS_NAME)
    assert table.column_names == list(stage.CAPTION_COLUMNS)
    assert table.num_rows == TINY.num_clips
    rows = table.to_pylist()
    assert [row["video_id"] for row in rows] == [f"st_{i:06d}" for i in range(TINY.num_clips)]
    for row in rows:
        for column in ("video", "reference_image", "annotation"):
            assert (dataset / row[column]).is_file(), row[column]
        assert row["video"] == f"video/{row['video_id']}.mp4"
        truth = _annotation(dataset, row["video_id"])
        for key in ("caption", "identity_id", "split"):
            assert truth[key] == row[key]
    marker = json.loads((dataset / stage.MARKER_NAME).read_text())
    assert marker["dataset"] == "synthtalk" and marker["version"] == stage.SYNTHTALK_VERSION
    assert marker["params"]["num_clips"] == TINY.num_clips and "workers" not in marker["params"]
    assert marker["counts"] == {
        "clips": 6, "train_clips": 4, "heldout_clips": 2, "train_identities": 2, "heldout_identities": 1,
    }
    assert sorted(_digests(dataset)) == sorted(stage._expected_files(marker))  # nothing else in the folder


def test_same_params_give_identical_bytes_whatever_the_workers(dataset: Path, tmp_path: Path) -> None:
    again = synthtalk.run(TINY.model_copy(update={"workers": 2}), tmp_path / "raw")
    assert not again.up_to_date
    first, second = _digests(dataset), _digests(tmp_path / "raw")
    assert sorted(first) == sorted(second)
    differing = sorted(name for name in first if first[name] != second[name])
    assert not differing, f"not byte-identical across runs and worker counts: {differing}"


def test_second_run_is_up_to_date_and_other_params_regenerate(tmp_path: Path) -> None:
    out = tmp_path / "raw"
    small = TINY.model_copy(update={"num_clips": 3, "num_frames": 9, "heldout_fraction": 0.0})
    synthtalk.run(small, out)
    before = {path: path.stat().st_mtime_ns for path in out.rglob("*")}
    assert synthtalk.run(small.model_copy(update={"workers": 2}), out).up_to_date  # workers do not matter
    assert {path: path.stat().st_mtime_ns for path in out.rglob("*")} == before

    reseeded = small.model_copy(update={"seed": 7})
    assert not synthtalk.run(reseeded, out).up_to_date
    assert json.loads((out / stage.MARKER_NAME).read_text())["params"]["seed"] == 7
    assert sorted(path.name for path in tmp_path.iterdir()) == ["raw"]  # no temporary folders left behind

    (out / "annotations" / "st_000001.json").unlink()  # a damaged dataset is rebuilt, not trusted
    assert not synthtalk.run(reseeded, out).up_to_date
    assert (out / "annotations" / "st_000001.json").is_file()


# =====================================================================================================
# Audio, mouth and sync
# =====================================================================================================


def test_clip_reads_back_with_its_frames_fps_and_aligned_audio(dataset: Path) -> None:
    identities, specs = stage.plan_dataset(TINY)
    for spec in specs[:3]:
        clip = read_clip(dataset / "video" / f"{spec.clip_id}.mp4")
        assert clip.frames.shape == (TINY.num_frames, TINY.height, TINY.width, 3)
        assert clip.fps == pytest.approx(TINY.fps)
        assert len(clip.audio) == TINY.num_frames * SAMPLES_PER_VIDEO_FRAME  # exactly the video's duration

        # sample-level: the decoded audio is the synthesised waveform, not shifted by the AAC priming
        _, written, _, truth = synthtalk.render_clip(spec, TINY)
        assert abs(_best_lag(clip.audio, written, 2 * SYNC_TOLERANCE_SAMPLES)) < SYNC_TOLERANCE_SAMPLES
        first = truth["syllables"][0]["start"]
        onset = int(np.argmax(np.abs(clip.audio) > 0.02))
        assert abs(onset - first) < SYNC_TOLERANCE_SAMPLES

        # frame-level: the loudness of the decoded audio follows the annotated envelope with no lag
        envelope = np.asarray(truth["audio_envelope"])
        loudness = np.sqrt(np.mean(clip.audio.reshape(TINY.num_frames, -1).astype(float) ** 2, axis=1))
        frame_lags = range(-3, 4)
        correlation = [np.corrcoef(np.roll(loudness, lag), envelope)[0, 1] for lag in frame_lags]
        assert list(frame_lags)[int(np.argmax(correlation))] == 0
        assert max(correlation) > 0.9


def test_mouth_is_closed_in_silence_and_opens_with_the_envelope(dataset: Path) -> None:
    for clip_id in _clip_ids(dataset):
        truth = _annotation(dataset, clip_id)
        envelope, opening = np.asarray(truth["audio_envelope"]), np.asarray(truth["mouth_opening"])
        assert len(opening) == TINY.num_frames and 0.0 <= opening.min() and opening.max() <= 1.0
        assert np.array_equal(opening == 0, envelope == 0) and (envelope == 0).any() and (envelope > 0.5).any()
        assert np.corrcoef(opening[envelope > 0], envelope[envelope > 0])[0, 1] > 0.95

        # the rendered pixels: dark mouth-interior area inside the annotated mouth box
        luma = _luma(read_clip(dataset / "video" / f"{clip_id}.mp4").frames)
        dark = np.array([
            (luma[f, int(y0) : int(np.ceil(y1)), int(x0) : int(np.ceil(x1))] < DARK_LUMA).sum()
            for f, (x0, y0, x1, y1) in enumerate(truth["mouth_box"])
        ])
        assert dark[opening == 0].max() <= 1, "a closed mouth shows no dark interior"
        assert np.corrcoef(dark, opening)[0, 1] > 0.95

        # open mouths span 2x2 latent cells of an 8x VAE (16x16 pixels with the lips)
        boxes = np.asarray(truth["mouth_box"])
        wide_open = opening >= speech.PEAK_RANGE[0]
        assert (boxes[wide_open, 2] - boxes[wide_open, 0] >= 16).all()
        assert (boxes[wide_open, 3] - boxes[wide_open, 1] >= 16).all()


def test_speech_envelope_is_exactly_zero_in_silence() -> None:
    rng = np.random.default_rng(3)
    num_samples = speech.clip_num_samples(33, 25, AUDIO_SAMPLE_RATE)
    syllables = speech.plan_syllables(rng, num_samples, AUDIO_SAMPLE_RATE)
    audio, envelope = speech.synthesize_speech(syllables, num_samples, AUDIO_SAMPLE_RATE, noise_seed=3)
    voiced = np.zeros(num_samples, dtype=bool)
    for syllable in syllables:
        assert 80 <= (syllable.end - syllable.start) / AUDIO_SAMPLE_RATE * 1000 <= 250
        assert speech.F0_RANGE_HZ[0] <= min(syllable.f0_start, syllable.f0_end)
        assert max(syllable.f0_start, syllable.f0_end) <= speech.F0_RANGE_HZ[1]
        voiced[syllable.start : syllable.end] = True
    assert not audio[~voiced].any() and not envelope[~voiced].any()
    assert np.abs(audio).max() <= 1.0 and envelope.max() <= 1.0
    frames = speech.frame_envelope(envelope, 33, 25, AUDIO_SAMPLE_RATE)
    silent_frames = ~voiced.reshape(33, -1).any(axis=1)
    assert np.array_equal(frames == 0, silent_frames)


# =====================================================================================================
# Identity, reference image and captions
# =====================================================================================================


def test_reference_differs_in_shirt_and_wall_but_shares_the_identity(dataset: Path) -> None:
    for clip_id in _clip_ids(dataset):
        truth = _annotation(dataset, clip_id)
        frames = read_clip(dataset / "video" / f"{clip_id}.mp4").frames
        reference = np.asarray(Image.open(dataset / "reference_image" / f"{clip_id}.png").convert("RGB"))
        assert reference.shape == frames.shape[1:]
        assert truth["reference"]["shirt_colour"] != truth["shirt_colour"]
        assert truth["reference"]["background_colour"] != truth["background_colour"]
        assert truth["reference"]["pose"] != truth["pose"]

        height, width = reference.shape[:2]
        corner = (slice(0, 2), slice(0, 2))  # always the wall's base colour, whatever the pattern
        shirt = (slice(height - 2, height), slice(width // 2 - 4, width // 2 + 4))
        wall_of_reference = _nearest(_median_colour(reference, *corner), world.BACKGROUND_COLOURS)
        assert wall_of_reference == truth["reference"]["background_colour"]
        assert _nearest(_median_colour(reference, *shirt), world.SHIRT_COLOURS) == truth["reference"]["shirt_colour"]
        for frame in frames:
            assert _nearest(_median_colour(frame, *corner), world.BACKGROUND_COLOURS) == truth["background_colour"]
            assert _nearest(_median_colour(frame, *shirt), world.SHIRT_COLOURS) == truth["shirt_colour"]

        # identity: hair under the top of the face box, skin across the cheeks, in a closed-mouth frame
        closed = int(np.flatnonzero(np.asarray(truth["mouth_opening"]) == 0)[0])
        for image, box in ((reference, truth["reference"]["face_box"]), (frames[closed], truth["face_box"][closed])):
            x0, y0, x1, y1 = box
            centre, face_width, face_height = (x0 + x1) / 2, x1 - x0, y1 - y0
            hair = (slice(int(y0 + 0.5), int(y0 + 2.5)), slice(int(centre - 3), int(centre + 3)))
            cheeks = (
                slice(int(y0 + 0.45 * face_height), int(y0 + 0.6 * face_height)),
                slice(int(x0 + 0.25 * face_width), int(x1 - 0.25 * face_width)),
            )
            assert _nearest(_median_colour(image, *hair), world.HAIR_COLOURS) == truth["identity"]["hair_colour"]
            assert _nearest(_median_colour(image, *cheeks), world.SKIN_TONES) == truth["identity"]["skin_tone"]


def test_identity_pool_splits_and_allocation() -> None:
    cfg = SynthConfig()
    identities, specs = stage.plan_dataset(cfg)
    assert len(identities) == cfg.num_train_identities + cfg.num_heldout_identities
    assert len({tuple(identity.attributes().values()) for identity in identities}) == len(identities)
    heldout = {identity.identity_id for identity in identities if identity.split == "heldout"}
    assert len(heldout) == cfg.num_heldout_identities
    used = {spec.identity.identity_id for spec in specs}
    assert used == {identity.identity_id for identity in identities}  # every identity has a clip
    heldout_clips = [spec for spec in specs if spec.identity.identity_id in heldout]
    assert all(spec.identity.split == "heldout" for spec in heldout_clips)
    assert len(heldout_clips) == round(cfg.heldout_fraction * cfg.num_clips)
    # held-out identities are new combinations of attribute values the train identities show
    for attribute in ("skin_tone", "hair_colour", "hair_style", "eye_colour", "face_shape"):
        train_values = {getattr(i, attribute) for i in identities if i.split == "train"}
        assert {getattr(i, attribute) for i in identities if i.split == "heldout"} <= train_values
    # the pool does not depend on the number of clips
    assert stage.plan_dataset(cfg.model_copy(update={"num_clips": 100}))[0] == identities


def test_captions_name_clip_attributes_and_never_the_identity() -> None:
    _, specs = stage.plan_dataset(SynthConfig())
    identity_words = (
        {"hair", "haired", "skin", "skinned", "eye", "eyes", "eyed", "face", "faced", "bald"}
        | set(world.SKIN_TONES) | set(world.HAIR_STYLES) | set(world.FACE_SHAPES)
        | (set(world.HAIR_COLOURS) | set(world.EYE_COLOURS)) - set(world.SHIRT_COLOURS) - set(world.BACKGROUND_COLOURS)
    )
    for spec in specs:
        words = set(re.findall(r"[a-z]+", spec.caption.lower()))
        assert not words & identity_words, spec.caption
        appearance = spec.appearance
        assert {appearance.shirt_colour, appearance.background_colour, appearance.background_pattern} <= words
        assert world.MOTION_PHRASES[spec.motion.kind] in spec.caption
    assert len({spec.caption for spec in specs}) > 100


def test_caption_example_and_article() -> None:
    appearance = world.Appearance("orange", "blue", "striped")
    assert world.write_caption(appearance, "nodding") == (
        "A person in an orange shirt talks in front of a striped blue wall, nodding slightly."
    )
    with pytest.raises(ValueError, match="dancing"):
        world.write_caption(appearance, "dancing")


# =====================================================================================================
# Bad input
# =====================================================================================================


def test_folder_with_foreign_files_is_refused_and_untouched(tmp_path: Path) -> None:
    out = tmp_path / "raw"
    (out / "notes").mkdir(parents=True)
    (out / "notes" / "mine.txt").write_text("keep me")
    with pytest.raises(FileExistsError) as info:
        synthtalk.run(TINY, out)
    assert str(out) in str(info.value) and "choose another" in str(info.value).lower()
    assert _digests(out) == {"notes/mine.txt": hashlib.sha256(b"keep me").hexdigest()}
    assert sorted(path.name for path in tmp_path.iterdir()) == ["raw"]


def test_synthtalk_folder_with_extra_files_is_not_regenerated(tmp_path: Path) -> None:
    out = tmp_path / "raw"
    small = TINY.model_copy(update={"num_clips": 3, "num_frames": 5, "heldout_fraction": 0.0})
    synthtalk.run(small, out)
    (out / "video" / "my_own.mp4").write_bytes(b"not ours")
    before = _digests(out)
    with pytest.raises(FileExistsError, match="my_own.mp4"):
        synthtalk.run(small.model_copy(update={"seed": 1}), out)
    assert _digests(out) == before


def test_interrupted_run_keeps_the_previous_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "raw"
    small = TINY.model_copy(update={"num_clips": 3, "num_frames": 5, "heldout_fraction": 0.0})
    synthtalk.run(small, out)
    before = _digests(out)

    def crash(*args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(stage, "_write_captions", crash)
    with pytest.raises(KeyboardInterrupt):
        synthtalk.run(small.model_copy(update={"seed": 1}), out)
    assert _digests(out) == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["raw"]


@pytest.mark.parametrize(
    "update, fragment",
    [
        ({"num_clips": -3}, "num_clips"),
        ({"num_frames": 32}, r"4k\+1"),
        ({"height": 50}, "multiples of 16"),
        ({"num_clips": 4, "num_train_identities": 4, "num_heldout_identities": 1}, "every identity needs a clip"),
        ({"workers": 0}, "workers"),
    ],
)
def test_bad_settings_are_rejected_by_the_config(update: dict, fragment: str) -> None:
    with pytest.raises(ValidationError, match=fragment):
        SynthConfig(**{**TINY.model_dump(), **update})


def test_settings_the_generator_cannot_honour(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="seed=-1"):
        synthtalk.run(TINY.model_copy(update={"seed": -1}), tmp_path / "raw")
    with pytest.raises(ValueError, match="distinct attribute combinations"):
        world.build_identity_pool(0, 3000, 10)
    assert not (tmp_path / "raw").exists()


def test_cli_refuses_a_foreign_folder_with_exit_code_2(tmp_path: Path, params_path: Path) -> None:
    out = tmp_path / "raw"
    out.mkdir()
    (out / "data.csv").write_text("a,b\n")
    result = CliRunner().invoke(app, ["synth", "--params", str(params_path), f"paths.raw={out}"])
    assert result.exit_code == 2
    assert "not a SynthTalk folder" in result.output
    assert (out / "data.csv").read_text() == "a,b\n"
