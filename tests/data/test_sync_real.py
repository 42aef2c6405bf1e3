"""Sync on real talking people: LatentSync's two speakers (../shared/data/real) and copies of them whose
audio is moved by a known amount (written here, the shift measured back from the files).

Fast tests score one whole source and its copies; the slow one runs curation over every copy at both clip
lengths and holds the acceptance of issue 14: in-sync sources accepted with |offset| <= 2, every shift of
200 ms or more estimated within 2 frames or rejected, no shifted clip accepted as in sync.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from humo.config import CurateConfig, PathsConfig
from humo.data import curate, faces, landmarks
from humo.data.manifest import read_manifest
from humo.data.media import fit_audio_to_frames, read_audio, write_shifted_copy
from humo.data.probe import FrameReader, analysis_size, probe_source, resample_indices
from humo.data.sync import make_scorer, real_video_scorer

SHIFTS_MS = (0, 200, -200, 400, -400, 600, -600)
FRAME_MS = 40


def measured_shift_ms(original: Path, copy: Path) -> float:
    """The delay of ``copy``'s audio against ``original``'s, from their cross-correlation (16 kHz)."""
    a, b = read_audio(original, 16_000), read_audio(copy, 16_000)
    size = 1 << int(np.ceil(np.log2(len(a) + len(b))))
    corr = np.fft.irfft(np.fft.rfft(b, size) * np.conj(np.fft.rfft(a, size)), size)
    lag = int(np.argmax(corr))
    return (lag if lag < size // 2 else lag - size) / 16.0


@pytest.fixture(scope="module")
def demo1_copies(real_data: Path, tmp_path_factory) -> dict[int, Path]:
    folder = tmp_path_factory.mktemp("shifted")
    source = real_data / "latentsync_demo1.mp4"
    return {ms: write_shifted_copy(source, folder / f"demo1_{ms:+d}ms.mp4", ms / 1000) for ms in (0, 400, -400)}


def test_shifted_copies_carry_the_shift_they_were_written_with(real_data: Path, demo1_copies) -> None:
    source = real_data / "latentsync_demo1.mp4"
    for ms, copy in demo1_copies.items():
        assert abs(measured_shift_ms(source, copy) - ms) <= 1.0
        probe, original = probe_source(copy), probe_source(source)
        assert (probe.num_frames, probe.width, probe.height) == (original.num_frames, 1080, 1920)  # video untouched


def test_whole_source_sync_finds_each_shift(real_data: Path, demo1_copies) -> None:
    """One face track of the source, the audio of each copy: the default real-video scorer's offset."""
    source = real_data / "latentsync_demo1.mp4"
    probe = probe_source(source)
    indices = resample_indices(probe.timestamps, probe.duration, 25.0)
    size = analysis_size(probe.width, probe.height, 256)
    small = FrameReader(source, size).get(indices)
    boxes = faces.fill_missing_boxes(faces.detect_faces_opencv(small, every=3)) * (probe.width / size[0])
    full = FrameReader(source)
    track = faces.face_track(lambda rows: full.get(indices[rows]), np.arange(len(indices)), boxes, faces.TRACK_SIZE)
    assert track.crops.shape == (250, faces.TRACK_SIZE, faces.TRACK_SIZE, 3)
    scorer = make_scorer(real_video_scorer(), 15)
    features = scorer.visual(track.crops, track.boxes)
    for ms, copy in demo1_copies.items():
        audio = fit_audio_to_frames(read_audio(copy, 16_000), len(indices), 25.0, 16_000)
        estimate = scorer.compare(features, audio, 25.0, 16_000)
        assert abs(estimate.offset - ms / FRAME_MS) <= 2, (ms, estimate.offset)


@pytest.mark.skipif(not landmarks.available(), reason="needs humo[faces] (dlib) for the lips scorer")
def test_curation_judges_a_clip_by_its_whole_shot(demo1_copies, tmp_path: Path) -> None:
    source_dir = tmp_path / "sources"
    source_dir.mkdir()
    for ms in (0, 400):
        (source_dir / demo1_copies[ms].name).symlink_to(demo1_copies[ms])
    cfg = CurateConfig(source_format="folder", source_dir=source_dir, workers=1, max_clips_per_source=1, sync_search=15)
    curate.run(cfg, PathsConfig(artifacts=tmp_path / "artifacts", reports=tmp_path / "reports"), project_root=tmp_path)
    manifest = read_manifest(tmp_path / "artifacts" / "curate" / "manifest.parquet")
    assert list(manifest["source_id"]) == ["demo1_+0ms"]
    row = manifest.iloc[0]
    assert row["sync_scorer"] == "lips" and row["sync_frames"] == 250 and abs(row["sync_offset"]) <= 1
    assert row["sync_confidence"] >= 0.05 and -15 <= row["clip_sync_offset"] <= 15  # the clip's own figure, kept
    assert row["reference_similarity"] >= 0.9  # the crop from elsewhere in the video is the same woman
    rejects = [json.loads(line) for line in (tmp_path / "artifacts" / "curate" / "rejects.jsonl").read_text().splitlines()]
    late = [r for r in rejects if r["clip"] is not None and "+400ms" in r["clip"]]
    assert [r["reason"] for r in late] == ["sync_offset"] and "250-frame shot" in late[0]["detail"]
    assert abs(int(late[0]["detail"].split()[1]) - 10) <= 2


def _curate_copies(real_data: Path, root: Path, name: str, num_frames: int) -> tuple[dict, list[dict]]:
    source_dir = root / "sources"
    for ms in SHIFTS_MS:
        copy = write_shifted_copy(real_data / f"{name}.mp4", source_dir / f"{name}_{ms:+d}ms.mp4", ms / 1000)
        assert abs(measured_shift_ms(real_data / f"{name}.mp4", copy) - ms) <= 1.0
    cfg = CurateConfig(
        source_format="folder", source_dir=source_dir, workers=1, num_frames=num_frames, sync_search=15,
        max_clips_per_source=1,
    )
    curate.run(cfg, PathsConfig(artifacts=root / "artifacts", reports=root / "reports"), project_root=root)
    manifest = read_manifest(root / "artifacts" / "curate" / "manifest.parquet")
    rejects = [json.loads(line) for line in (root / "artifacts" / "curate" / "rejects.jsonl").read_text().splitlines()]
    return manifest, rejects


@pytest.mark.slow
@pytest.mark.skipif(not landmarks.available(), reason="needs humo[faces] (dlib) for the lips scorer")
@pytest.mark.parametrize(("name", "num_frames"), [("latentsync_demo1", 33), ("latentsync_demo2", 97)])
def test_curation_accepts_in_sync_and_never_a_shifted_copy(real_data: Path, tmp_path: Path, name, num_frames) -> None:
    manifest, rejects = _curate_copies(real_data, tmp_path, name, num_frames)
    assert (manifest["sync_scorer"] == "lips").all()
    for ms in SHIFTS_MS:
        stem = f"{name}_{ms:+d}ms"
        rows = manifest[manifest["source_id"] == stem]
        sync_rejects = [r for r in rejects if stem in r["source"] and r["reason"].startswith("sync")]
        if ms == 0:
            assert len(rows) == 1 and rows["sync_offset"].abs().max() <= 2
        else:
            assert rows.empty, f"{stem} accepted as in sync"
            for reject in sync_rejects:  # estimated within 2 frames of the truth, or rejected for confidence
                if reject["reason"] == "sync_offset":
                    offset = int(reject["detail"].split()[1])
                    assert abs(offset - ms / FRAME_MS) <= 2, (stem, reject["detail"])
