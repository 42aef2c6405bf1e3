"""Fixtures of the registry tests: a small trained-looking model built from real parts, and MLflow stores.

The "trained" checkpoint is a randomly initialised tiny :class:`HumoTransformer3D` (2 layers) written by the
training stage's own writer (``save_trained``), the VAE a randomly initialised tiny ``AutoencoderKLWan`` saved with
``save_pretrained``; evaluation outputs are small JSON files in the evaluate stage's layout. Nothing is stubbed: the
registry code runs against these exactly as against the pipeline's outputs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from humo.config import Params, load_params

TINY_LAYERS = 2
VAE_BASE_DIM = 4


def make_checkpoint(folder: Path, seed: int, run_id: str) -> Path:
    """A checkpoint folder in contract (3)'s layout with random tiny weights (seeded)."""
    from humo.models.presets import get_preset
    from humo.models.transformer import HumoTransformer3D
    from humo.models.checkpoints import save_trained

    torch.manual_seed(seed)
    cfg = get_preset("tiny", num_layers=TINY_LAYERS)
    model = HumoTransformer3D.from_preset(cfg)
    # the output head starts at zero (adaLN-Zero); give it weights so the "trained" model predicts something
    torch.nn.init.normal_(model.head.head.weight, std=0.02)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return save_trained(
        folder,
        raw=state,
        ema=state,
        config={"stage": 2, "preset": "tiny", "transformer": cfg.model_dump(mode="json"), "params": {}},
        run={"run_id": run_id, "checkpoint": str(folder), "stage": 2, "steps": 0},
    )


def make_vae(folder: Path) -> Path:
    from humo.models.encoders import build_tiny_vae

    torch.manual_seed(0)
    build_tiny_vae(base_dim=VAE_BASE_DIM).save_pretrained(folder)
    return folder


def write_evaluation(reports: Path, metrics: dict, passed: bool) -> None:
    folder = reports / "evaluate"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.json").write_text(json.dumps(metrics))
    (folder / "gate.json").write_text(json.dumps({"passed": passed, "reason": "test gate"}))


@pytest.fixture(scope="session")
def tiny_parts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``checkpoint`` (run id ``run-a``), ``checkpoint_b`` (run id ``run-b``) and ``vae`` folders."""
    root = tmp_path_factory.mktemp("tiny-parts")
    return {
        "checkpoint": make_checkpoint(root / "train_stage2", seed=1, run_id="run-a"),
        "checkpoint_b": make_checkpoint(root / "train_stage2_b", seed=2, run_id="run-b"),
        "vae": make_vae(root / "vae"),
    }


@pytest.fixture(scope="session")
def registry_params(params_path: Path) -> Params:
    """The project's params shrunk for tests: small requests (few steps and frames) on 64x64."""
    return load_params(
        params_path,
        [
            "generate.steps=2",
            "generate.progress_bar=false",
            "limits.max_steps=4",
            "limits.max_frames=17",
            "limits.max_audio_bytes=200000",
            "limits.max_image_bytes=100000",
            "registry.compare=[{name: sync_confidence, direction: maximize}]",
        ],
    )


def open_store(uri: str, artifacts: Path, experiments: tuple[str, ...] = ("registry-test", "humo")) -> str:
    """Point MLflow at ``uri`` and create ``experiments`` with their artifacts under ``artifacts`` (not ./mlruns).

    Returns the previous tracking URI (to restore).
    """
    import mlflow
    from mlflow import MlflowClient

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(tracking_uri=uri)
    for name in experiments:
        if client.get_experiment_by_name(name) is None:
            client.create_experiment(name, artifact_location=(artifacts / name).as_uri())
    mlflow.set_experiment(experiments[0])
    return previous
