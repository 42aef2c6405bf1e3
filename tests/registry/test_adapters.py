"""Adapter versions: a LoRA stage's output registers with the base it needs, and loads as base + adapter."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow import MlflowClient

from humo.config import Params, PathsConfig, TrackingConfig
from humo.hashing import file_sha256
from humo.models import lora
from humo.models.checkpoints import EMA_FILE, load_trained_transformer, save_adapter
from humo.registry import mlflow_registry as reg
from humo.registry import register
from humo.registry.pyfunc import BASE_DIR, MANIFEST_JSON, build_model_folder, load_pipeline_from_folder
from humo.registry.resolver import resolve_registered_model

from .conftest import open_store, write_evaluation


def make_adapter(folder: Path, base: Path, seed: int, run_id: str) -> Path:
    """An adapter folder on ``base`` (random LoRA of rank 4 on every block linear) in the LoRA stage's layout."""
    model = load_trained_transformer(base)
    targets = lora.resolve_targets(model, lora.default_targets(2))
    generator = torch.Generator().manual_seed(seed)
    weights = lora.LoraWeights({
        name: lora.LoraFactors(
            down=torch.randn(4, model.get_submodule(name).in_features, generator=generator) * 0.05,
            up=torch.randn(model.get_submodule(name).out_features, 4, generator=generator) * 0.05,
            alpha=4.0,
        )
        for name in targets
    })
    config = json.loads((base / "config.json").read_text())
    config["adapter"] = {
        "kind": "lora", "rank": 4, "alpha": 4.0, "targets": targets,
        "base": {"kind": "trained", "path": str(base), "sha256": file_sha256(base / EMA_FILE)},
    }
    return save_adapter(folder, weights, weights, config, {"run_id": run_id, "checkpoint": str(folder), "stage": 2})


@pytest.fixture()
def adapter_dir(tmp_path: Path, tiny_parts: dict[str, Path]) -> Path:
    return make_adapter(tmp_path / "lora_stage2", tiny_parts["checkpoint"], seed=5, run_id="run-lora")


@pytest.mark.parametrize("weights", ["embed", "reference"])
def test_an_adapter_folder_carries_its_base_and_loads_merged(
    tmp_path: Path, registry_params: Params, tiny_parts, adapter_dir: Path, weights: str
) -> None:
    params = registry_params.model_copy(update={"registry": registry_params.registry.model_copy(update={"weights": weights})})
    folder = tmp_path / "model"
    info = build_model_folder(
        folder, adapter_dir, tiny_parts["vae"], params.encoders, params.generate, params.registry, params.limits, "run-lora"
    )
    assert info["adapter"] == {"kind": "lora", "rank": 4, "alpha": 4.0}
    assert info["base_weights_sha256"] == file_sha256(tiny_parts["checkpoint"] / EMA_FILE)
    if weights == "embed":
        assert (folder / BASE_DIR / EMA_FILE).read_bytes() == (tiny_parts["checkpoint"] / EMA_FILE).read_bytes()
        assert (folder / "transformer" / "adapter.safetensors").is_file()
    else:
        components = json.loads((folder / MANIFEST_JSON).read_text())["components"]
        assert {"transformer", BASE_DIR} <= set(components)
    pipeline, _ = load_pipeline_from_folder(folder)
    expected = load_trained_transformer(adapter_dir).state_dict()  # base + adapter, merged
    loaded = pipeline.transformer.state_dict()
    assert loaded.keys() == expected.keys() and all(torch.equal(loaded[k], v) for k, v in expected.items())
    base = load_trained_transformer(tiny_parts["checkpoint"]).state_dict()
    assert not torch.equal(loaded["blocks.0.self_attn.q.weight"], base["blocks.0.self_attn.q.weight"])


def test_an_adapter_version_records_its_base_version_and_serves_base_plus_adapter(
    tmp_path: Path, registry_params: Params, tiny_parts, adapter_dir: Path
) -> None:
    store = tmp_path / "store"
    uri = f"sqlite:///{store / 'mlflow.db'}"
    store.mkdir()
    previous = open_store(uri, store / "artifacts")
    artifacts, reports = tmp_path / "artifacts", tmp_path / "reports"
    shutil.copytree(tiny_parts["vae"], artifacts / "train_vae" / "vae")
    paths = PathsConfig(raw=tmp_path / "raw", artifacts=artifacts, reports=reports)
    tracking = TrackingConfig(uri=uri, experiment="humo")
    name = registry_params.registry.model_name

    def register_folder(folder: Path, metrics: dict) -> dict:
        shutil.rmtree(artifacts / "train_stage2", ignore_errors=True)
        shutil.copytree(folder, artifacts / "train_stage2")
        write_evaluation(reports, metrics, passed=True)
        return register.run(
            registry=registry_params.registry, limits=registry_params.limits, tracking=tracking,
            encoders=registry_params.encoders, generate=registry_params.generate, paths=paths, root=tmp_path,
        )

    try:
        full = register_folder(tiny_parts["checkpoint"], {"sync_confidence": 0.3})
        adapted = register_folder(adapter_dir, {"sync_confidence": 0.4})
        client = MlflowClient(tracking_uri=uri)
        version = client.get_model_version(name, adapted["version"])
        assert version.tags[reg.TAG_BASE_VERSION] == f"{name}/{full['version']}"
        assert version.tags[reg.TAG_BASE_WEIGHTS] == client.get_model_version(name, full["version"]).tags[reg.TAG_WEIGHTS]
        assert version.tags[reg.TAG_ADAPTER] == "lora r4 alpha 4"
        # the gate and the aliases work as for a full model: better on sync, so the adapter becomes champion
        assert adapted["aliases"] == {"candidate": adapted["version"], "champion": adapted["version"]}
        transformer, info = resolve_registered_model(f"models:/{name}@champion")
        expected = load_trained_transformer(adapter_dir).state_dict()
        got = transformer.state_dict()
        assert info.version == adapted["version"] and all(torch.equal(got[k], v) for k, v in expected.items())
    finally:
        mlflow.set_tracking_uri(previous)
