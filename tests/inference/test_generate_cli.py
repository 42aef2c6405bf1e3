"""`humo generate` end to end: a trained-checkpoint folder (contract 3) + a tiny VAE folder -> mp4s + summary."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from humo.cli import app
from humo.models.encoders import build_tiny_vae
from humo.models.checkpoints import save_trained

TINY_VAE_BASE_DIM = 8


def test_generate_command_writes_videos_and_reports_failures(real_data, tmp_path, params_path, model_factory) -> None:
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
