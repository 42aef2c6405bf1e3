"""`humo generate` end to end: a trained-checkpoint folder (contract 3) + a tiny VAE folder -> mp4s + summary."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from humo.cli import app


def test_generate_command_writes_videos_and_reports_failures(tmp_path, params_path, generate_case) -> None:
    checkpoint, requests, overrides = generate_case
    result = CliRunner().invoke(
        app,
        ["generate", "--requests", str(requests), "--out", str(tmp_path / "out"), "--model", str(checkpoint),
         "--params", str(params_path), *overrides],
    )
    assert result.exit_code == 1, result.output  # one request failed: non-zero, but the batch finished
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["generated"] == 1 and summary["failed"] == 1
    sidecar = json.loads(Path(summary["results"][0]["sidecar"]).read_text())
    assert sidecar["model"] == {"name": "train_stage2", "version": "run123", "source": str(checkpoint)}
    assert (tmp_path / "out" / "ok_seed666666.mp4").stat().st_size > 0
    assert "not found" in summary["results"][1]["reason"]
