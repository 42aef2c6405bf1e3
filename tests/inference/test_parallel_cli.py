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


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_torchrun_two_processes_write_the_one_process_video(tmp_path, params_path, generate_case) -> None:
    checkpoint, requests, overrides = generate_case
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
    assert (tmp_path / "two" / "summary.json").is_file(), launched.stderr[-4000:]
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


def test_a_world_size_that_differs_from_the_config_is_refused(tmp_path, params_path, generate_case) -> None:
    checkpoint, requests, overrides = generate_case
    result = CliRunner().invoke(
        app, ["generate", "--requests", str(requests), "--model", str(checkpoint), "--params", str(params_path),
              "--out", str(tmp_path / "out"), *overrides, "generate.parallel.sequence_parallel=2"],
    )
    assert result.exit_code != 0
    assert "torchrun --nproc-per-node 2 -m humo generate" in result.output
