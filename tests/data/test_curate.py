"""The curate stage: each step as a function, the stage on SynthTalk, sync rejection, crashes and bad input."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile

from humo.config import CurateConfig, PathsConfig
from humo.constants import SAMPLES_PER_VIDEO_FRAME
from humo.data import curate, faces, shots, speech
from humo.data.captions import CaptionError, read_caption_file
from humo.data.manifest import MANIFEST_COLUMNS, read_manifest, read_rejects
from humo.data.media import read_clip, write_video
from humo.data.probe import decode_frames, probe_source, resample_indices
from humo.data.sources import read_folder, read_humoset, read_sources


def _paths(tmp_path: Path) -> PathsConfig:
    return PathsConfig(raw=tmp_path / "raw", artifacts=tmp_path / "artifacts", reports=tmp_path / "reports")


def _run(tmp_path: Path, **overrides) -> tuple[curate.CurateSummary, pd.DataFrame, list[dict]]:
    cfg = CurateConfig(**{"workers": 1, **overrides})
    summary = curate.run(cfg, _paths(tmp_path), project_root=tmp_path)
    out = tmp_path / "artifacts" / "curate"
    return summary, read_manifest(out / "manifest.parquet"), read_rejects(out / "rejects.jsonl")


def _noise_video(rng: np.random.Generator, frames: int, size: int = 64) -> np.ndarray:
    return rng.integers(0, 255, size=(frames, size, size, 3), dtype=np.uint8)


def _speechy_audio(rng: np.random.Generator, frames: int) -> np.ndarray:
    return (0.3 * rng.standard_normal(frames * SAMPLES_PER_VIDEO_FRAME)).astype(np.float32)


# =====================================================================================================
# Steps
# =====================================================================================================


def test_resample_29_97_to_25_does_not_drift_over_an_hour() -> None:
    num = 108_000  # one hour at 29.97 fps
    timestamps = np.arange(num) * 1001 / 30000
    duration = num * 1001 / 30000
    indices = resample_indices(timestamps, duration, 25.0)
    assert len(indices) == int(duration * 25)
    times = np.arange(len(indices)) / 25.0
    # every target frame shows the source frame on screen at its time, up to the last one
    assert np.all(timestamps[indices] <= times + 1e-4)
    nxt = np.minimum(indices + 1, num - 1)
    assert np.all((timestamps[nxt] > times - 1e-4) | (indices == num - 1))
    assert indices[-1] in (num - 1, num - 2)


def test_resample_variable_frame_rate_repeats_over_a_gap() -> None:
    timestamps = np.r_[np.arange(10) * 0.04, 1.0 + np.arange(10) * 0.04]  # 0.6 s gap after frame 9
    indices = resample_indices(timestamps, 1.4, 25.0)
    assert len(indices) == 35
    assert list(indices[:10]) == list(range(10))
    assert set(indices[10:25]) == {9}  # frame 9 stays on screen during the gap
    assert list(indices[25:]) == list(range(10, 20))


def test_resample_a_29_97_fps_file(tmp_path: Path) -> None:
    frames = np.zeros((60, 32, 32, 3), dtype=np.uint8)
    frames[:, :, :, 0] = (np.arange(60) * 4)[:, None, None]  # frame number written in the red channel
    path = write_video(tmp_path / "ntsc.mp4", frames, 30000 / 1001)
    probe = probe_source(path)
    assert probe.num_frames == 60 and probe.fps == pytest.approx(29.97, abs=0.01)
    indices = resample_indices(probe.timestamps, probe.duration, 25.0)
    assert len(indices) == 50  # 60 / 29.97 s = 2.002 s -> 50 frames at 25 fps
    expected = np.floor(np.arange(50) / 25.0 * 30000 / 1001 + 1e-6).astype(int)
    assert np.abs(indices - expected).max() == 0
    decoded = decode_frames(path, indices)
    assert np.abs(decoded[:, 16, 16, 0].astype(int) - expected * 4).max() <= 3


def test_shots_are_found_and_clips_never_cross_a_cut() -> None:
    rng = np.random.default_rng(0)
    frames = np.zeros((100, 32, 32, 3), dtype=np.uint8)
    frames[:40] = (200, 40, 40)
    frames[40:] = (30, 60, 220)
    frames = np.clip(frames + rng.integers(-8, 8, frames.shape), 0, 255).astype(np.uint8)
    found = shots.detect_shots(frames, threshold=0.5)
    assert found == [(0, 40), (40, 100)]
    clips = shots.cut_clips(found, 33)
    assert clips == [(0, 0), (1, 40)]
    for shot_index, start in clips:
        lo, hi = found[shot_index]
        assert lo <= start and start + 33 <= hi


def test_gaps_in_face_boxes_are_filled_and_checked() -> None:
    boxes = np.full((10, 4), np.nan)
    boxes[2] = (10, 10, 30, 30)
    boxes[6] = (14, 10, 34, 30)
    assert faces.face_problem(boxes, (64, 64), min_fraction=0.5, min_size=0.1) == "no_face"
    filled = faces.fill_missing_boxes(boxes)
    assert np.isfinite(filled).all() and filled[4, 0] == pytest.approx(12.0)
    boxes[:] = (10, 10, 14, 14)
    assert faces.face_problem(boxes, (64, 64), min_fraction=0.5, min_size=0.1) == "face_too_small"
    boxes[:] = (10, 10, 40, 40)
    assert faces.face_problem(boxes, (64, 64), min_fraction=0.5, min_size=0.1) is None


def test_opencv_finds_the_real_face_and_nothing_in_noise(real_data: Path) -> None:
    from PIL import Image

    image = Image.open(real_data / "humo_man_Jaime.png").convert("RGB")
    image.thumbnail((256, 256))
    photo = np.asarray(image)[None]
    noise = np.random.default_rng(0).integers(0, 255, size=(1, *photo.shape[1:]), dtype=np.uint8)
    box = faces.detect_faces_opencv(photo)[0]
    assert np.isfinite(box).all() and (box[2] - box[0]) > 0.15 * min(photo.shape[1:3])
    assert not np.isfinite(faces.detect_faces_opencv(noise)).any()


def test_speech_detectors(real_data: Path) -> None:
    from humo.data.media import read_audio

    voice = read_audio(real_data / "humo_audio1.wav")
    frames = len(voice) // SAMPLES_PER_VIDEO_FRAME
    silero = speech.silero_frame_speech(voice, frames, threshold=0.5)
    assert silero.mean() > 0.5  # real speech is found
    rng = np.random.default_rng(0)
    hum = (0.3 * np.sin(np.arange(len(voice)) * 2 * np.pi * 50 / 16000)).astype(np.float32)
    assert speech.silero_frame_speech(hum, frames, threshold=0.5).mean() < 0.1  # a steady hum is not speech
    rms = speech.frame_rms(np.r_[np.zeros(5 * 640), 0.2 * rng.standard_normal(5 * 640)].astype(np.float32), 10)
    assert speech.energy_frame_speech(rms, -30.0, 1e-3).tolist() == [False] * 5 + [True] * 5
    assert speech.is_silent(speech.frame_rms(np.zeros(6400, np.float32), 10), 1e-3)


def test_caption_files(tmp_path: Path) -> None:
    good, bad, empty = tmp_path / "a.txt", tmp_path / "b.txt", tmp_path / "c.txt"
    good.write_text(" Ein Mensch spricht. \n", encoding="utf-8")
    bad.write_bytes(b"A person \xff\xfe talks")
    empty.write_text("\n")
    assert read_caption_file(good) == "Ein Mensch spricht."
    assert read_caption_file(empty) is None
    with pytest.raises(CaptionError, match="not valid UTF-8 at byte 9"):
        read_caption_file(bad)


def test_readers(synthtalk_small: Path, tmp_path: Path) -> None:
    items = read_humoset(synthtalk_small)
    assert len(items) == 12 and all(item.synthetic and item.annotation and item.reference_image for item in items)
    assert {item.split for item in items} == {"train", "heldout"}
    (tmp_path / "b.mp4").write_bytes(b"x")
    (tmp_path / "b.wav").write_bytes(b"x")
    (tmp_path / "b.txt").write_text("caption")
    (tmp_path / "a.mkv").write_bytes(b"x")
    (tmp_path / "a.mp4").write_bytes(b"x")
    (tmp_path / "notes.md").write_text("not a video")
    folder = read_folder(tmp_path)
    assert [item.source_id for item in folder] == ["a.mkv", "a.mp4", "b"]
    b = folder[-1]
    assert b.audio == tmp_path / "b.wav" and b.caption_file == tmp_path / "b.txt" and b.reference_image is None
    with pytest.raises(FileNotFoundError, match="source_format=folder"):
        read_sources("humoset", tmp_path)
    with pytest.raises(ValueError, match="humoset, folder"):
        read_sources("webdataset", tmp_path)


def test_a_sync_scorer_that_cannot_run_fails_before_any_source(tmp_path: Path, monkeypatch) -> None:
    from humo.data import landmarks

    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "a.mp4").write_bytes(b"x")
    paths = PathsConfig(artifacts=tmp_path / "artifacts", reports=tmp_path / "reports")
    folder = {"source_format": "folder", "source_dir": tmp_path / "raw", "workers": 1}
    with pytest.raises(ValueError, match="needs its weights"):
        curate.run(CurateConfig(sync_scorer="syncnet", **folder), paths, project_root=tmp_path)
    missing = tmp_path / "models" / "syncnet_v2.model"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        curate.run(CurateConfig(sync_scorer="syncnet", syncnet_weights=missing, **folder), paths, project_root=tmp_path)
    monkeypatch.setattr(landmarks, "available", lambda: False)
    with pytest.raises(landmarks.FaceModelsMissing, match="humo\\[faces\\]"):
        curate.run(CurateConfig(sync_scorer="lips", **folder), paths, project_root=tmp_path)
    assert not (tmp_path / "artifacts" / "curate" / "manifest.parquet").exists()


# =====================================================================================================
# The stage on SynthTalk
# =====================================================================================================


def test_stage_on_synthtalk_accounts_for_every_source(synthtalk_small: Path, tmp_path: Path) -> None:
    summary, manifest, rejects = _run(tmp_path, source_dir=synthtalk_small, workers=2)
    assert summary.sources == 12 == summary.sources_with_clips + summary.rejected_sources
    assert set(manifest["source"]) | {r["source"] for r in rejects if r["clip"] is None} == {
        (synthtalk_small / "video" / f"st_{i:06d}.mp4").as_posix() for i in range(12)
    }
    assert summary.clips == len(manifest) >= 10
    assert tuple(manifest.columns) == MANIFEST_COLUMNS and manifest["clip_id"].is_unique
    row = manifest.iloc[0]
    # already 33 frames at 25 fps with H.264 + AAC: referenced, not re-encoded
    assert row["linked"] and row["video"] == row["source"] and row["start_frame"] == 0
    assert row["reference_source"] == "dataset" and row["has_caption"] and row["face_detector"] == "annotation"
    assert all(len(boxes) == 33 for boxes in manifest["face_boxes"])
    assert manifest["sync_offset"].abs().max() <= 1 and manifest["sync_confidence"].min() >= 0.2
    assert set(manifest["split"]) == {"train", "heldout"} and manifest["identity_id"].notna().all()
    report = json.loads((tmp_path / "reports" / "curate" / "summary.json").read_text())
    assert report["sources"] == 12 and report["vads"] == {"energy": summary.sources_with_clips}
    assert (tmp_path / "reports" / "curate" / "histograms.png").stat().st_size > 1000


def _humoset_copy(src: Path, dst: Path, clip_ids: list[str]) -> pd.DataFrame:
    """A HuMoSet folder holding the given SynthTalk clips (files copied, the parquet filtered)."""
    table = pd.read_parquet(src / "video_caption.parquet")
    table = table[table["video_id"].isin(clip_ids)].reset_index(drop=True)
    for column in ("video", "reference_image", "annotation"):
        for rel in table[column]:
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src / rel, dst / rel)
    (dst / "synthtalk.json").write_text("{}")
    return table


def test_audio_shifted_by_8_frames_is_rejected_and_the_original_kept(synthtalk_small: Path, tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    table = _humoset_copy(synthtalk_small, raw, ["st_000000", "st_000001"])
    clip = read_clip(raw / table.loc[0, "video"])
    shifted = np.r_[np.zeros(8 * SAMPLES_PER_VIDEO_FRAME, np.float32), clip.audio][: len(clip.audio)]
    write_video(raw / "video" / "shifted.mp4", clip.frames, 25.0, shifted)
    extra = table.iloc[[0]].assign(video_id="shifted", video="video/shifted.mp4")
    pd.concat([table, extra]).to_parquet(raw / "video_caption.parquet")

    summary, manifest, rejects = _run(tmp_path, source_dir=raw)
    assert sorted(manifest["clip_id"]) == ["st_000000", "st_000001"]
    assert manifest["sync_offset"].abs().max() <= 1
    by_clip = {r["clip"]: r for r in rejects}
    assert by_clip["shifted"]["reason"] == "sync_offset" and "+8" in by_clip["shifted"]["detail"]
    assert by_clip[None]["reason"] == "no_usable_clip" and by_clip[None]["source"].endswith("shifted.mp4")
    assert summary.rejected_sources == 1 and summary.sources_with_clips == 2


def test_a_crash_in_one_source_is_a_reject_not_a_dead_stage(synthtalk_small: Path, tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    table = _humoset_copy(synthtalk_small, raw, ["st_000002", "st_000003"])
    (raw / table.loc[1, "annotation"]).write_text("{ not json")
    table.to_parquet(raw / "video_caption.parquet")
    summary, manifest, rejects = _run(tmp_path, source_dir=raw, workers=2)
    assert list(manifest["clip_id"]) == ["st_000002"]
    assert len(rejects) == 1 and rejects[0]["reason"] == "crash" and rejects[0]["clip"] is None
    assert rejects[0]["detail"].startswith("JSONDecodeError:")
    assert summary.sources == 2


# =====================================================================================================
# Bad input
# =====================================================================================================


def test_bad_inputs_become_rejects_with_clear_reasons(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    raw = tmp_path / "raw"
    raw.mkdir()
    good = write_video(raw / "truncated.mp4", _noise_video(rng, 40), 25.0, _speechy_audio(rng, 40))
    data = good.read_bytes()
    good.write_bytes(data[: len(data) // 2])
    (raw / "empty.mp4").write_bytes(b"")
    (raw / "text.mp4").write_text("this is not a video\n" * 20)
    write_video(raw / "no_audio.mp4", _noise_video(rng, 40), 25.0)
    write_video(raw / "silent.mp4", _noise_video(rng, 40), 25.0, np.zeros(40 * 640, np.float32))
    write_video(raw / "tiny.mp4", _noise_video(rng, 40, size=8), 25.0, _speechy_audio(rng, 40))
    write_video(raw / "one_frame.mp4", _noise_video(rng, 1), 25.0, _speechy_audio(rng, 1))
    write_video(raw / "short.mp4", _noise_video(rng, 20), 25.0, _speechy_audio(rng, 20))
    write_video(raw / "bad_caption.mp4", _noise_video(rng, 40), 25.0, _speechy_audio(rng, 40))
    (raw / "bad_caption.txt").write_bytes(b"caf\xe9 au lait")
    write_video(raw / "no_face.mp4", _noise_video(rng, 40), 25.0, _speechy_audio(rng, 40))
    # entries a scan meets that cannot be sources: each must end in the rejects, not vanish
    (raw / "gone.mp4").symlink_to(raw / "nowhere.mp4")
    (raw / "loop.mp4").symlink_to(raw / "loop.mp4")
    (raw / "folder.mp4").mkdir()
    with open(os.path.join(os.fsencode(raw), b"bad\xffname.mp4"), "wb") as handle:
        handle.write(b"x")
    write_video(raw / "nan_audio.mp4", _noise_video(rng, 40), 25.0, _speechy_audio(rng, 40))
    audio = _speechy_audio(rng, 40).astype(np.float32)
    audio[100] = np.nan
    soundfile.write(str(raw / "nan_audio.wav"), audio, 16_000, subtype="FLOAT")

    summary, manifest, rejects = _run(tmp_path, source_format="folder", source_dir=raw)
    reasons = {Path(r["source"]).stem: r["reason"] for r in rejects if r["clip"] is None}
    assert reasons == {
        "truncated": "unreadable",
        "empty": "unreadable",
        "text": "unreadable",
        "no_audio": "no_audio",
        "silent": "silent_audio",
        "tiny": "resolution_too_low",
        "one_frame": "too_short",
        "short": "too_short",
        "bad_caption": "caption_invalid_utf8",
        "no_face": "no_usable_clip",
        "gone": "dangling_link",
        "loop": "link_loop",
        "folder": "not_a_file",
        "bad\udcffname": "unreadable_name",
        "nan_audio": "audio_not_finite",
    }
    details = {Path(r["source"]).stem: r["detail"] for r in rejects if r["clip"] is None}
    assert "0 bytes" in details["empty"] and "8x8" in details["tiny"] and "20 frame(s)" in details["short"]
    assert "no_face=1" in details["no_face"]
    assert summary.sources == 15 and summary.clips == 0 and len(manifest) == 0


def test_hardlinked_clips_and_the_accounting_check(synthtalk_small: Path, tmp_path: Path) -> None:
    summary, manifest, _ = _run(tmp_path, source_dir=synthtalk_small, limit=2, link_mode="hardlink")
    for row in manifest.itertuples():
        clip = tmp_path / row.video
        assert clip.parent == tmp_path / "artifacts" / "curate" / "clips" and clip.stat().st_nlink >= 2
        assert clip.read_bytes() == Path(row.source).read_bytes()
    items = read_humoset(synthtalk_small)[:3]
    results = [curate.SourceResult(source=str(item.video), rows=[{"source": str(item.video)}]) for item in items[:2]]
    with pytest.raises(RuntimeError, match="3 in, 2 with clips, 0 rejected"):
        curate.check_accounting(items, results, Path("/"))
