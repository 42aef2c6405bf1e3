"""FSDP (ModelParallelStrategy + fully_shard per block) on 2 CPU processes with gloo, against one process.

Lightning launches the worker process by re-running the command line, so the runs go through the ``humo`` CLI.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from shard_factory import make_shards

pytestmark = pytest.mark.slow

HUMO = Path(sys.executable).with_name("humo")


def _train(project_root: Path, artifacts: Path, uri: str, *extra: str) -> dict:
    make_shards(artifacts)
    cmd = [
        sys.executable, str(HUMO), "train-stage1", "--params", str(project_root / "params.yaml"),
        f"paths.artifacts={artifacts}", f"tracking.uri={uri}",
        "model.overrides={num_layers: 2, dim: 64, ffn_dim: 128, num_heads: 2}", "model.checkpoint=null",
        "train_stage1.trainable=backbone",
        "train.batch_size=4", "train.val_every_n_steps=4", "train.val_batches=1", "train.checkpoint_every_n_steps=4",
        "train.warmup_steps=0", "train_stage1.steps=4", "train_stage1.learning_rate=0.001", *extra,
    ]
    env = {**os.environ, "HUMO_TRAIN_RUN_ID": ""}
    done = subprocess.run(cmd, cwd=project_root, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((artifacts / "train_stage1" / "run.json").read_text())


def test_fsdp_two_processes_match_one_process(project_root: Path, tmp_path: Path, mlflow_uri: str) -> None:
    single = _train(project_root, tmp_path / "single", mlflow_uri)
    fsdp = _train(project_root, tmp_path / "fsdp", mlflow_uri, "train.strategy=fsdp", "train.devices=2")
    # parameters were sharded DTensors, each process holding about half of them
    sharding = fsdp["parameters"]
    assert sharding["num_dtensor_parameters"] == sharding["num_parameters"]
    assert sharding["local_elements"] <= 0.6 * sharding["total_elements"]
    assert single["parameters"]["num_dtensor_parameters"] == 0
    # same global batches and randomness: the losses and the trained weights agree within float tolerance
    for name in ("val/loss", "train/loss"):
        assert fsdp["metrics"][name] == pytest.approx(single["metrics"][name], rel=1e-4, abs=1e-5), name
    a = load_file(str(tmp_path / "single" / "train_stage1" / "model.safetensors"))
    b = load_file(str(tmp_path / "fsdp" / "train_stage1" / "model.safetensors"))
    moved = [k for k in a if "self_attn.q.weight" in k]
    # Adam normalises updates, so a gradient that differs in the last bits (a different reduction order) can move
    # a near-zero-gradient element by up to ~lr per step: tolerance ~ 0.05 * lr * steps.
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-3, atol=2e-4)
    assert moved and any(not torch.equal(a[k], load_file(str(tmp_path / "single" / "train_stage1" / "ema.safetensors"))[k]) for k in moved)


def test_sigkilled_run_resumes_to_the_same_weights(project_root: Path, tmp_path: Path, mlflow_uri: str) -> None:
    """A run killed with SIGKILL mid-epoch resumes from its last checkpoint and ends bitwise equal."""
    import signal
    import time

    steps = ["train_stage1.steps=24", "train.checkpoint_every_n_steps=4", "train.val_every_n_steps=8"]
    reference = _train(project_root, tmp_path / "reference", mlflow_uri, *steps)

    artifacts = tmp_path / "killed"
    make_shards(artifacts)
    cmd = [
        sys.executable, str(HUMO), "train-stage1", "--params", str(project_root / "params.yaml"),
        f"paths.artifacts={artifacts}", f"tracking.uri={mlflow_uri}",
        "model.overrides={num_layers: 2, dim: 64, ffn_dim: 128, num_heads: 2}", "model.checkpoint=null",
        "train_stage1.trainable=backbone",
        "train.batch_size=4", "train.val_batches=1", "train.warmup_steps=0", "train_stage1.learning_rate=0.001", *steps,
    ]
    last = artifacts / "train_stage1" / "checkpoints" / "last.ckpt"
    process = subprocess.Popen(cmd, cwd=project_root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not last.is_file() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL, "the run finished before it could be killed; make it longer"
    assert not (artifacts / "train_stage1" / "model.safetensors").exists()
    done = subprocess.run(cmd, cwd=project_root, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    resumed = json.loads((artifacts / "train_stage1" / "run.json").read_text())
    assert resumed["val_history"][0][0] > 0  # it did not start over
    for name in ("model.safetensors", "ema.safetensors"):
        want = load_file(str(tmp_path / "reference" / "train_stage1" / name))
        got = load_file(str(artifacts / "train_stage1" / name))
        assert all(torch.equal(got[k], want[k]) for k in want), name
    assert reference["metrics"]["val/loss"] == resumed["metrics"]["val/loss"]


def test_fsdp_with_a_lora_adapter_matches_one_process(project_root: Path, tmp_path: Path, mlflow_uri: str) -> None:
    """peft's LoRA layers are injected before fully_shard: 2 processes train the adapter one process trains."""
    from humo.models import lora
    from humo.models.checkpoints import load_trained_transformer
    from humo.models.presets import get_preset
    from humo.models.testing import randomize_
    from humo.models.transformer import HumoTransformer3D
    from safetensors.torch import save_file

    base = randomize_(HumoTransformer3D.from_preset(get_preset("tiny", num_layers=2, dim=64, ffn_dim=128, num_heads=2)), 9)
    released = tmp_path / "released.safetensors"
    save_file({k: v.contiguous() for k, v in base.state_dict().items()}, str(released))
    extra = ("train.adapter.kind=lora", "train.adapter.rank=4", f"model.checkpoint={released}")
    single = _train(project_root, tmp_path / "single", mlflow_uri, *extra)
    fsdp = _train(project_root, tmp_path / "fsdp", mlflow_uri, *extra, "train.strategy=fsdp", "train.devices=2")
    assert fsdp["parameters"]["num_dtensor_parameters"] == fsdp["parameters"]["num_parameters"]
    assert fsdp["trainable"]["optimizer_state_bytes"] <= 0.6 * single["trainable"]["optimizer_state_bytes"]
    for name in ("val/loss", "train/loss"):
        assert fsdp["metrics"][name] == pytest.approx(single["metrics"][name], rel=1e-4, abs=1e-5), name
    for name in ("adapter.safetensors", "adapter_raw.safetensors"):
        a = load_file(str(tmp_path / "single" / "train_stage1" / name))
        b = load_file(str(tmp_path / "fsdp" / "train_stage1" / name))
        assert a.keys() == b.keys() and any(v.abs().max() > 0 for k, v in a.items() if "lora_B" in k)
        for key in a:
            torch.testing.assert_close(b[key], a[key], rtol=1e-3, atol=2e-4)
    # the base under the sharded run's adapter is still the released file, bit for bit
    model = load_trained_transformer(tmp_path / "fsdp" / "train_stage1", merge_adapter=False)
    got = lora.base_state(model.state_dict())
    assert all(torch.equal(got[k], v) for k, v in base.state_dict().items())
