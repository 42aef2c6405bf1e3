"""Fixtures for the training tests: the real params.yaml shrunk, and small shard folders."""

from __future__ import annotations

from pathlib import Path

import pytest
from shard_factory import make_shards

from humo.config import Params, load_params


@pytest.fixture(scope="session")
def mlflow_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One sqlite MLflow store for the session (creating its tables takes seconds)."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture()
def train_params(params_path: Path, tmp_path: Path, mlflow_uri: str) -> Params:
    """The real params.yaml shrunk for fast CPU tests: 2 layers, a few steps, MLflow in tmp_path; stage 1 from a
    seeded init training the backbone (the versioned tiny-t2v backbone has the full preset's width)."""
    return load_params(
        params_path,
        [
            f"paths.artifacts={tmp_path / 'artifacts'}",
            f"tracking.uri={mlflow_uri}",
            "model.overrides={num_layers: 2, dim: 64, ffn_dim: 128, num_heads: 2}",
            "model.checkpoint=null",
            "train_stage1.trainable=backbone",
            "train.batch_size=4",
            "train.val_every_n_steps=3",
            "train.val_batches=1",
            "train.checkpoint_every_n_steps=3",
            "train.log_every_n_steps=1",
            "train.warmup_steps=0",
            "train_stage1.steps=6",
            "train_stage2.steps=6",
            "train_stage2.audio_ramp_steps=4",
        ],
    )


@pytest.fixture()
def shards(train_params: Params) -> Path:
    return make_shards(train_params.paths.artifacts)
