"""`torchrun --nproc-per-node 2 -m humo generate ...` as the README gives it: the same video as one process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from humo.cli import app
from humo.models.checkpoints import save_trained
from humo.models.encoders import build_tiny_vae

TINY_VAE_BASE_DIM = 8


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _setup(tmp_path: Path, real_data: Path, model_factory) -> tuple[Path, Path, list[str]]:
    model = model_factory()
    state = model.state_dict()
    checkpoint = save_trained(
        tmp_path / "train_stage2", state, state,
        config={"stage": 2, "preset": "tiny", "transformer": model.humo_config.model_dump(mode="json"), "params": {}},
        run={"run_id": "run123", "checkpoint": "ema.safetensors"},
    )
    build_tiny_vae(TINY_VAE_BASE_DIM).save_pretrained(tmp_path / "artifacts" / "train_vae" / "vae")
    requests = tmp_path / "requests.jsonl"
    requests.write_text(
        json.dumps({"id": "ok", "prompt": "a man talks", "img_paths": [str(real_data / "humo_man_Jaime.png")],
                    "audio_path": str(real_data / "humo_audio1.wav")}) + "\n"
        + json.dumps({"id": "bad", "prompt": "a man talks", "audio_path": "missing.wav", "mode": "TA"}) + "\n"
    )
    overrides = [f"paths.artifacts={tmp_path / 'artifacts'}", "generate.steps=2", "generate.height=32",
                 "generate.width=32", "generate.max_frames=9", "generate.progress_bar=false"]
    return checkpoint, requests, overrides


def test_torchrun_two_processes_write_the_one_process_video(real_data, tmp_path, params_path, model_factory) -> None:
    checkpoint, requests, overrides = _setup(tmp_path, real_data, model_factory)
    common = ["--requests", str(requests), "--model", str(checkpoint), "--params", str(params_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # both runs in fresh processes with the same threads
    single = subprocess.run([sys.executable, "-m", "humo", "generate", *common, "--out", str(tmp_path / "one"),
                             *overrides], capture_output=True, text=True, env=env, timeout=600)
    assert single.returncode == 1, single.stderr[-3000:]  # the bad request fails, the batch finishes

    torchrun = Path(sys.executable).with_name("torchrun")
    launched = subprocess.run(
        [str(torchrun), "--nproc-per-node", "2", "--master-port", str(_free_port()), "-m", "humo", "generate",
         *common, "--out", str(tmp_path / "two"), *overrides, "generate.parallel.sequence_parallel=2",
         "generate.parallel.shard_dit=true", "generate.parallel.shard_text=true"],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert launched.returncode != 0  # rank 0 reports the failed request
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert (summary["generated"], summary["failed"]) == (1, 1), launched.stderr[-3000:]
    assert "not found" in summary["results"][1]["reason"]
    one = json.loads((tmp_path / "one" / "ok_seed666666.json").read_text())
    two = json.loads((tmp_path / "two" / "ok_seed666666.json").read_text())
    assert two["output"]["sha256"] == one["output"]["sha256"]  # the same video, byte for byte
    assert sorted(path.name for path in (tmp_path / "two").iterdir()) == [
        "ok_seed666666.json", "ok_seed666666.mp4", "summary.json"
    ]  # rank 1 wrote nothing

    # the batch-inference flow's launcher: the same command again finds the video done
    from humo.config import ParallelConfig
    from humo.inference.parallel import launch_generate

    finished = launch_generate(
        ParallelConfig(sequence_parallel=2), requests, tmp_path / "two", str(checkpoint), params_path,
        [*overrides, "generate.parallel.sequence_parallel=2", "generate.parallel.shard_dit=true"],
        master_port=_free_port(),
    )
    assert finished.returncode == 1, finished.stderr[-3000:]
    again = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert (again["generated"], again["skipped"], again["failed"]) == (0, 1, 1)


def test_a_world_size_that_differs_from_the_config_is_refused(real_data, tmp_path, params_path, model_factory) -> None:
    checkpoint, requests, overrides = _setup(tmp_path, real_data, model_factory)
    result = CliRunner().invoke(
        app, ["generate", "--requests", str(requests), "--model", str(checkpoint), "--params", str(params_path),
              "--out", str(tmp_path / "out"), *overrides, "generate.parallel.sequence_parallel=2"],
    )
    assert result.exit_code != 0
    assert "torchrun --nproc-per-node 2 -m humo generate" in result.output
