"""Sample videos during training: mp4 + png artifacts in the MLflow run, and no effect on the trained weights."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file
from shard_factory import make_shards

from humo.config import Params, SynthConfig
from humo.data.media import read_clip
from humo.features.shards import ShardIndex, file_sha256
from humo.evaluation.samples import pick_sample_requests, preserved_rng, sample_callback
from humo.training import train

FRAMES, SIZE = 9, 32


@pytest.fixture(scope="module")
def synth_raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny SynthTalk (4 clips of 9 frames at 32x32, one held-out identity)."""
    from humo.data import synthtalk

    raw = tmp_path_factory.mktemp("synth") / "raw"
    cfg = SynthConfig(
        num_clips=4, num_train_identities=2, num_heldout_identities=1, num_frames=FRAMES, height=SIZE, width=SIZE,
        workers=1,
    )
    synthtalk.run(cfg, raw)
    return raw


def _project(artifacts: Path, raw: Path) -> Path:
    """Random tiny shards, a manifest of real SynthTalk clips (their hash in the shard index) and a tiny VAE."""
    from humo.models.encoders import build_tiny_vae

    make_shards(artifacts)
    rows = []
    for record in pd.read_parquet(raw / "video_caption.parquet").itertuples():
        truth = json.loads((raw / record.annotation).read_text())
        rows.append({
            "clip_id": record.video_id, "video": str(raw / record.video), "num_frames": FRAMES, "fps": 25.0,
            "width": SIZE, "height": SIZE, "caption": record.caption, "split": record.split,
            "reference_image": str(raw / record.reference_image), "face_boxes": truth["face_box"],
        })
    manifest = artifacts / "curate" / "manifest.parquet"
    pd.DataFrame(rows).to_parquet(manifest)
    index = ShardIndex.load(artifacts / "precompute")
    index.provenance["manifest_sha256"] = file_sha256(manifest)
    index.save(artifacts / "precompute")
    torch.manual_seed(0)
    build_tiny_vae(8).save_pretrained(artifacts / "train_vae" / "vae")
    return artifacts


def _params(p: Params, artifacts: Path, sample_every: int, **steps: int) -> Params:
    return p.model_copy(update={
        "paths": p.paths.model_copy(update={"artifacts": artifacts}),
        "train": p.train.model_copy(update={"sample_every_n_steps": sample_every, "num_samples": 2, "sample_steps": 2}),
        "train_stage1": p.train_stage1.model_copy(update={"steps": steps.get("stage1", 4)}),
        "train_stage2": p.train_stage2.model_copy(update={"steps": steps.get("stage2", 4)}),
    })


def _run(stage: int, p: Params) -> train.TrainResult:
    # as the CLI does: the training stage receives the sample callback, it never builds one
    stage_cfg = p.train_stage1 if stage == 1 else p.train_stage2
    samples = sample_callback(stage, p.train, p.tracking, p.paths) if train.samples_allowed(p.train) else None
    return train.run(stage, p.train, stage_cfg, p.model, p.tracking, p.paths, callbacks=[samples] if samples else ())


def _sample_artifacts(p: Params, run_id: str) -> list[str]:
    client = mlflow.MlflowClient(p.tracking.uri)
    return sorted(Path(a.path).name for a in client.list_artifacts(run_id, "samples"))


def test_requests_are_the_first_heldout_clips(synth_raw: Path, tmp_path: Path) -> None:
    artifacts = _project(tmp_path / "artifacts", synth_raw)
    manifest = pd.read_parquet(artifacts / "curate" / "manifest.parquet")
    requests = pick_sample_requests(artifacts / "curate" / "manifest.parquet", tmp_path, 2)
    heldout = sorted(manifest.loc[manifest["split"] == "heldout", "clip_id"])
    assert heldout and [r.clip_id for r in requests] == heldout[:2]
    request = requests[0]
    assert (request.height, request.width, request.num_frames) == (SIZE, SIZE, FRAMES)
    assert request.image.shape[-1] == 3 and request.audio.dtype == np.float32 and len(request.audio) == 5760
    x0, y0, x1, y1 = request.mouth_region
    assert 0 <= x0 < x1 <= SIZE + 2 and 0 <= y0 < y1 <= SIZE + 2
    assert request.truth_mouth.shape == (FRAMES,) and request.truth_mouth.max() > 0  # the real mouth is seen


def test_stage1_logs_sample_videos_with_audio_and_mouth_plots(train_params, synth_raw, tmp_path) -> None:
    p = _params(train_params, _project(tmp_path / "artifacts", synth_raw), sample_every=2)
    result = _run(1, p)
    names = _sample_artifacts(p, result.run_id)
    clips = [r.clip_id for r in pick_sample_requests(p.paths.artifacts / "curate" / "manifest.parquet", tmp_path, 2)]
    assert names == sorted(
        [f"step_{s:06d}_{c}.mp4" for s in (2, 4) for c in clips] + [f"step_{s:06d}_mouth.png" for s in (2, 4)]
    )
    local = mlflow.MlflowClient(p.tracking.uri).download_artifacts(
        result.run_id, f"samples/step_000004_{clips[0]}.mp4", str(tmp_path / "download")
    )
    clip = read_clip(local)
    assert clip.frames.shape == (FRAMES, SIZE, SIZE, 3) and clip.fps == pytest.approx(25.0)
    assert clip.audio is not None and np.abs(clip.audio).max() > 0.01  # the clip's speech is muxed in


def test_sampling_leaves_the_weights_bitwise_unchanged(train_params, synth_raw, tmp_path) -> None:
    # stage 1 once (no sampling), then stage 2 (mode TIA) with and without sampling from the same start
    with_dir = _project(tmp_path / "with", synth_raw)
    without_dir = _project(tmp_path / "without", synth_raw)
    _run(1, _params(train_params, with_dir, sample_every=0, stage1=2))
    shutil.copytree(with_dir / "train_stage1", without_dir / "train_stage1")
    sampled = _run(2, _params(train_params, with_dir, sample_every=2))
    plain = _run(2, _params(train_params, without_dir, sample_every=0))
    assert any(name.endswith(".mp4") for name in _sample_artifacts(train_params, sampled.run_id))
    assert not _sample_artifacts(train_params, plain.run_id)
    for name in ("model.safetensors", "ema.safetensors"):
        got, want = load_file(str(sampled.out_dir / name)), load_file(str(plain.out_dir / name))
        assert got.keys() == want.keys()
        assert all(torch.equal(got[k], want[k]) for k in want), f"{name} differs with sampling on"


def test_preserved_rng_restores_every_random_state() -> None:
    import random

    torch.manual_seed(3), np.random.seed(3), random.seed(3)
    want = (torch.rand(2), np.random.rand(2), random.random())
    torch.manual_seed(3), np.random.seed(3), random.seed(3)
    with preserved_rng():
        torch.rand(5), np.random.rand(5), random.random()  # what sampling may draw
    got = (torch.rand(2), np.random.rand(2), random.random())
    assert torch.equal(got[0], want[0]) and np.array_equal(got[1], want[1]) and got[2] == want[2]
