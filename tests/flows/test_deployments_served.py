"""The scheduled deployments served against a real local Prefect server, one triggered run of each.

A throw-away Prefect server (``prefect_test_harness``, loopback) gets both deployments from
``python -m flows.deployments serve`` (the documented command) started in a subprocess. The test triggers one
run of each deployment and waits for its final state:

* ``hourly-batch-inference`` over an inbox with one request, generated with a tiny checkpoint;
* ``nightly-curate-and-retrain`` on a toy project: a git + DVC repository holding the real ``dvc.yaml`` and a
  shrunk ``params.yaml`` (a few SynthTalk clips, a few training steps), so every stage runs for real.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from flows.deployments import INFERENCE_NAME, RETRAIN_NAME
from humo.config import load_params, resolved_dict
from humo.data import synthtalk
from humo.models.encoders import build_tiny_vae
from humo.models.transformer import HumoTransformer3D
from humo.models.checkpoints import save_trained

pytestmark = pytest.mark.slow

SERVE_READY_TIMEOUT_S = 120
RUN_TIMEOUT_S = 900
TINY_PIPELINE = [
    "synth.num_clips=12", "synth.num_train_identities=6", "synth.num_heldout_identities=2", "synth.workers=1",
    "train_vae.steps=2", "train_vae.batch_size=1", "train_vae.clip_frames=5", "train_vae.num_train_clips=4",
    "train_vae.num_val_clips=2", "train_vae.base_dim=8",
    "curate.workers=1",
    "precompute.shard_size=8", "precompute.batch_size=4",
    "model.overrides={num_layers: 2, dim: 64, ffn_dim: 128, num_heads: 2}", "model.checkpoint=null",
    "train_stage1.trainable=backbone",
    "train.batch_size=4", "train.val_every_n_steps=2", "train.val_batches=1", "train.checkpoint_every_n_steps=2",
    "train.log_every_n_steps=1", "train.warmup_steps=0",
    "train_stage1.steps=2", "train_stage2.steps=2", "train_stage2.audio_ramp_steps=1",
    "evaluate.num_cases=1", "evaluate.steps=2", "evaluate.modes=[TIA]",
    "generate.progress_bar=false",
]


def _write_params(folder: Path, overrides: list[str]) -> Path:
    params = load_params(Path(__file__).resolve().parents[2] / "params.yaml", overrides)
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(resolved_dict(params), sort_keys=False))
    return path


def _toy_project(root: Path, project_root: Path, mlflow_uri: str) -> Path:
    """A git + DVC repository with the real dvc.yaml, the code and the versioned backbone as links (stage 1 of the
    shrunk model starts from a seeded init; the backbone is only a dependency), a shrunk params.yaml and SynthTalk."""
    root.mkdir()
    shutil.copy(project_root / "dvc.yaml", root / "dvc.yaml")
    (root / "src").symlink_to(project_root / "src")
    (root / "models").symlink_to(project_root / "models")
    params_path = _write_params(root, [*TINY_PIPELINE, f"tracking.uri={mlflow_uri}"])
    params = load_params(params_path)
    synthtalk.run(params.synth, root / params.paths.raw)
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    subprocess.run([str(Path(sys.executable).parent / "dvc"), "init", "-q"], cwd=root, check=True)
    return params_path


def _inference_project(root: Path, real_data: Path, mlflow_uri: str) -> Path:
    """An inbox with one request, a tiny stage-2 checkpoint and tiny VAE, and params.yaml pointing at them."""
    artifacts = root / "artifacts"
    model = HumoTransformer3D.from_preset("tiny", num_layers=1)
    state = model.state_dict()
    checkpoint = save_trained(
        artifacts / "train_stage2", state, state,
        config={"stage": 2, "preset": "tiny", "transformer": model.humo_config.model_dump(mode="json"), "params": {}},
        run={"run_id": "deploytest", "checkpoint": "ema.safetensors"},
    )
    build_tiny_vae(8).save_pretrained(artifacts / "train_vae" / "vae")
    inbox = root / "inbox"
    inbox.mkdir(parents=True)
    request = {"id": "hello", "prompt": "a man talks", "audio_path": str(real_data / "humo_audio1.wav"), "mode": "TA"}
    (inbox / "requests.jsonl").write_text(json.dumps(request) + "\n")
    return _write_params(root, [
        f"paths.artifacts={artifacts}", f"tracking.uri={mlflow_uri}", f"orchestration.inbox={inbox}",
        f"orchestration.outbox={root / 'outputs'}", f"orchestration.model={checkpoint}",
        "orchestration.dask_workers=1", "generate.steps=2", "generate.height=32", "generate.width=32",
        "generate.max_frames=9", "generate.progress_bar=false",
    ])


def _wait_for_deployments(names: list[str], serve: subprocess.Popen) -> None:
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    deadline = time.monotonic() + SERVE_READY_TIMEOUT_S
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            assert serve.poll() is None, f"`flows.deployments serve` exited with {serve.returncode}"
            try:
                for name in names:
                    client.read_deployment_by_name(name)
                return
            except ObjectNotFound:
                time.sleep(1)
    raise TimeoutError(f"deployments {names} not registered within {SERVE_READY_TIMEOUT_S} s")


def test_served_deployments_run_once_each(
    prefect_server, project_root: Path, real_data: Path, tmp_path: Path
) -> None:
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL

    mlflow_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    pipeline_params = _toy_project(tmp_path / "toy", project_root, mlflow_uri)
    inference_params = _inference_project(tmp_path / "inference", real_data, mlflow_uri)
    env = {
        **os.environ,
        "PREFECT_API_URL": PREFECT_API_URL.value(),
        "PYTHONPATH": str(project_root),
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    # one `serve` per params file: each process serves both deployments with that file as their parameter;
    # the deployment names are shared, so the inference one is served from its own project under a suffix
    retrain_log = (tmp_path / "serve-retrain.log").open("w")
    serve = subprocess.Popen(
        [sys.executable, "-m", "flows.deployments", "serve", "--params", str(pipeline_params)],
        cwd=project_root, env=env, stdout=retrain_log, stderr=subprocess.STDOUT,
    )
    try:
        _wait_for_deployments([f"humo-pipeline/{RETRAIN_NAME}", f"humo-batch-inference/{INFERENCE_NAME}"], serve)
        inference = run_deployment(
            f"humo-batch-inference/{INFERENCE_NAME}",
            parameters={"params_path": str(inference_params)},
            timeout=RUN_TIMEOUT_S,
        )
        retrain = run_deployment(f"humo-pipeline/{RETRAIN_NAME}", timeout=RUN_TIMEOUT_S)
    finally:
        serve.terminate()
        serve.wait(timeout=60)
        retrain_log.close()
    log = (tmp_path / "serve-retrain.log").read_text()
    assert inference.state.is_completed(), f"{inference.state}\n{log[-3000:]}"
    assert (tmp_path / "inference" / "outputs" / "requests" / "hello_seed666666.mp4").stat().st_size > 0
    assert retrain.state.is_completed(), f"{retrain.state}\n{log[-3000:]}"
    toy = tmp_path / "toy"
    assert (toy / "dvc.lock").is_file()
    locked = yaml.safe_load((toy / "dvc.lock").read_text())["stages"]
    assert {"curate", "validate", "precompute", "train_stage1", "train_stage2", "evaluate", "register"} <= set(locked)
    assert json.loads((toy / "reports" / "register" / "decision.json").read_text())
