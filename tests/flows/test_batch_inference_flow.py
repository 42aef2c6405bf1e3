"""The batch-inference flow on a local 2-worker Dask cluster: an inbox of two request files -> videos, then a
second run over the same inbox generates nothing again; failures come back with their reasons."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from flows.batch_inference import dask_runner, with_cluster
from humo.config import OrchestrationConfig
from humo.models.encoders import build_tiny_vae
from humo.models.transformer import HumoTransformer3D
from humo.models.checkpoints import save_trained

TINY_VAE_BASE_DIM = 8


def _checkpoint(folder: Path) -> Path:
    model = HumoTransformer3D.from_preset("tiny", num_layers=1)
    state = model.state_dict()
    return save_trained(
        folder, state, state,
        config={"stage": 2, "preset": "tiny", "transformer": model.humo_config.model_dump(mode="json"), "params": {}},
        run={"run_id": "flowtest", "checkpoint": "ema.safetensors"},
    )


def test_dask_runner_uses_the_configured_scheduler_or_a_local_cluster() -> None:
    assert dask_runner(OrchestrationConfig(dask_address="tcp://10.1.2.3:8786")).address == "tcp://10.1.2.3:8786"
    local = dask_runner(OrchestrationConfig(dask_workers=3))
    assert local.address is None and local.cluster_kwargs["n_workers"] == 3


@pytest.mark.slow
def test_inbox_fans_out_and_a_rerun_generates_nothing_twice(
    prefect_server, real_data: Path, tmp_path: Path, params_path: Path
) -> None:
    checkpoint = _checkpoint(tmp_path / "train_stage2")
    build_tiny_vae(TINY_VAE_BASE_DIM).save_pretrained(tmp_path / "artifacts" / "train_vae" / "vae")
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    good = {"prompt": "a man talks", "audio_path": str(real_data / "humo_audio1.wav"), "mode": "TA"}
    (inbox / "first.jsonl").write_text(json.dumps({"id": "a", **good}) + "\n")
    (inbox / "second.jsonl").write_text(
        json.dumps({"id": "b", **good}) + "\n" + json.dumps({"id": "c", **good, "audio_path": "nope.wav"}) + "\n"
    )
    (inbox / "notes.txt").write_text("not a request file")
    overrides = [
        f"paths.artifacts={tmp_path / 'artifacts'}", f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
        "generate.steps=2", "generate.height=32", "generate.width=32", "generate.max_frames=9",
        "generate.progress_bar=false", "orchestration.dask_workers=2",
    ]
    flow = with_cluster(OrchestrationConfig(dask_workers=2))
    kwargs = dict(requests=inbox, out_dir=tmp_path / "out", model=str(checkpoint), params_path=params_path,
                  overrides=overrides)

    first = flow(**kwargs)
    assert (first["files"], first["generated"], first["skipped"], first["failed"]) == (2, 2, 0, 1)
    assert "not found" in first["failures"][0]["reason"]
    assert (tmp_path / "out" / "first" / "a_seed666666.mp4").stat().st_size > 0
    assert (tmp_path / "out" / "second" / "b_seed666666.mp4").stat().st_size > 0

    second = flow(**kwargs)
    assert (second["generated"], second["skipped"], second["failed"]) == (0, 2, 1)
