"""The precompute stage on a tiny SynthTalk: shard contents, face masks, resume after a crash, bad manifests."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from humo.config import SynthConfig, load_params
from humo.features import precompute
from humo.features.shards import FEATURE_NAMES, ShardIndex, read_clip_features, read_null_text

NUM_CLIPS, FRAMES, SIZE = 4, 9, 32


@pytest.fixture(scope="module")
def synth_manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny SynthTalk and a manifest with the curation columns (contract (2)) built from its ground truth."""
    from humo.data import synthtalk
    from humo.models.encoders import build_tiny_vae

    root = tmp_path_factory.mktemp("synth")
    raw = root / "raw"
    cfg = SynthConfig(
        num_clips=NUM_CLIPS, num_train_identities=2, num_heldout_identities=1, num_frames=FRAMES, height=SIZE,
        width=SIZE, workers=1,
    )
    synthtalk.run(cfg, raw)
    rows = []
    for record in pd.read_parquet(raw / "video_caption.parquet").itertuples():
        truth = json.loads((raw / record.annotation).read_text())
        rows.append(
            {
                "clip_id": record.video_id, "source": str(raw / record.video), "video": str(raw / record.video),
                "start_frame": 0, "num_frames": FRAMES, "fps": 25.0, "width": SIZE, "height": SIZE,
                "caption": record.caption, "has_caption": True, "reference_image": str(raw / record.reference_image),
                "reference_source": "dataset", "face_boxes": truth["face_box"], "speech_ratio": 0.5,
                "sync_offset": 0, "sync_confidence": 1.0, "split": record.split, "identity_id": record.identity_id,
                "annotation": str(raw / record.annotation),
            }
        )
    artifacts = root / "artifacts"
    (artifacts / "curate").mkdir(parents=True)
    pd.DataFrame(rows).to_parquet(artifacts / "curate" / "manifest.parquet")
    torch.manual_seed(0)
    build_tiny_vae(8).save_pretrained(artifacts / "train_vae" / "vae")
    return artifacts


def _params(params_path: Path, artifacts: Path, *extra: str):
    return load_params(params_path, [f"paths.artifacts={artifacts}", "precompute.shard_size=2", "precompute.batch_size=2", *extra])


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.safetensors"))}


def test_latent_face_mask_covers_the_box() -> None:
    boxes = np.array([[8.0, 8.0, 24.0, 24.0]] * 5)  # exactly cells 1..2 on a 32-pixel frame
    mask = precompute.latent_face_mask(boxes, 32, 32)
    assert mask.shape == (2, 4, 4)
    expected = torch.zeros(4, 4)
    expected[1:3, 1:3] = 1
    assert torch.equal(mask[0], expected) and torch.equal(mask[1], expected)
    moving = np.array([[0.0, 0.0, 8.0, 8.0]] + [[24.0, 24.0, 32.0, 32.0]] * 4)  # latent 1 covers frames 1-4 only
    mask = precompute.latent_face_mask(moving, 32, 32)
    assert mask[0, 0, 0] == 1 and mask[0, 3, 3] == 0 and mask[1, 3, 3] == 1 and mask[1, 0, 0] == 0


def test_precompute_writes_shards_and_resumes_identically(synth_manifest: Path, params_path: Path, tmp_path: Path, monkeypatch) -> None:
    import shutil

    p = _params(params_path, synth_manifest)
    summary = precompute.run(p.precompute, p.encoders, p.paths)
    out = synth_manifest / "precompute"
    assert (summary.num_clips, summary.num_shards, summary.encoded) == (NUM_CLIPS, 2, NUM_CLIPS)
    index = ShardIndex.load(out)
    assert index.complete and len(index.clips) == NUM_CLIPS and set(index.splits.values()) <= {"train", "heldout"}
    assert index.provenance["manifest_sha256"] and index.provenance["encoders"]["text"]["kind"] == "minilm"
    clip = next(iter(sorted(index.clips)))
    feats = read_clip_features(out, index.clips[clip], clip)
    latent_frames, grid = (FRAMES - 1) // 4 + 1, SIZE // 8
    assert feats["video_latents"].shape == (16, latent_frames, grid, grid)
    assert feats["ref_latents"].shape == (16, 1, grid, grid)
    assert feats["text_embeds"].shape == (64, 384)
    assert feats["audio_features"].shape == (latent_frames, 8, 1, 80)
    assert feats["face_mask"].shape == (latent_frames, grid, grid) and 0 < feats["face_mask"].mean() < 1
    assert set(FEATURE_NAMES) == set(feats)
    null = read_null_text(out)
    assert null.shape == (64, 384) and not torch.equal(null, feats["text_embeds"])
    want = _digests(out)

    # up to date: a second call encodes nothing
    assert precompute.run(p.precompute, p.encoders, p.paths).encoded == 0

    # a crash after the first shard, then a resume: the same bytes, and only the missing clips encoded
    other = tmp_path / "artifacts"
    shutil.copytree(synth_manifest / "curate", other / "curate")
    shutil.copytree(synth_manifest / "train_vae", other / "train_vae")
    q = _params(params_path, other)
    calls = {"n": 0}
    original = precompute.write_shard

    def crash_on_second(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("killed")
        return original(*args, **kwargs)

    monkeypatch.setattr(precompute, "write_shard", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        precompute.run(q.precompute, q.encoders, q.paths)
    assert not ShardIndex.load(other / "precompute").complete
    monkeypatch.setattr(precompute, "write_shard", original)
    resumed = precompute.run(q.precompute, q.encoders, q.paths)
    assert resumed.encoded == NUM_CLIPS - 2
    assert _digests(other / "precompute") == want


def test_manifest_errors(tmp_path: Path, params_path: Path) -> None:
    p = _params(params_path, tmp_path)
    with pytest.raises(FileNotFoundError, match="curate"):
        precompute.run(p.precompute, p.encoders, p.paths)
    (tmp_path / "curate").mkdir()
    pd.DataFrame({"clip_id": ["a"]}).to_parquet(tmp_path / "curate" / "manifest.parquet")
    with pytest.raises(ValueError, match="lacks columns"):
        precompute.run(p.precompute, p.encoders, p.paths)
    empty = pd.DataFrame({c: pd.Series(dtype=object) for c in precompute.REQUIRED_COLUMNS})
    empty.to_parquet(tmp_path / "curate" / "manifest.parquet")
    with pytest.raises(ValueError, match="empty dataset"):
        precompute.run(p.precompute, p.encoders, p.paths)
