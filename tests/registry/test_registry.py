"""Registration and aliases against a real MLflow store (sqlite in a temp folder).

What must hold: one version per training run (registering twice reuses it), aliases only on verified versions (an
interruption part-way leaves none), ``champion`` moves only when the gate passed and the candidate beats it, and
the decision with its figures is written out. The register stage runs end to end on a fake project folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from humo.config import MetricRule, Params
from humo.registry import mlflow_registry as reg
from humo.registry.pyfunc import ARTIFACT_KEY, build_model_folder, model_signature

from .conftest import open_store, write_evaluation


TEST_REQUIREMENTS = ["mlflow"]
"""Given explicitly: left out, MLflow infers requirements by loading the model in a subprocess (slow)."""


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory):
    """One sqlite tracking + registry store per module (creating its tables takes seconds); each test registers
    under its own model name. Restores the global tracking URI after."""
    folder = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    previous = open_store(uri, folder / "artifacts")
    yield uri
    mlflow.set_tracking_uri(previous)


@pytest.fixture()
def params(registry_params: Params, request: pytest.FixtureRequest) -> Params:
    """``registry_params`` with a model name of its own for each test."""
    name = request.node.name.split("[")[0].removeprefix("test_")[:60]
    return registry_params.model_copy(update={"registry": registry_params.registry.model_copy(update={"model_name": name})})


def _register(tmp_path: Path, params: Params, checkpoint: Path, vae: Path, run_id: str, metrics: dict, uri: str):
    folder = tmp_path / f"model-{run_id}"
    if not folder.exists():
        build_model_folder(folder, checkpoint, vae, params.encoders, params.generate, params.registry, params.limits, run_id)
    tags = {f"{reg.TAG_METRIC_PREFIX}{k}": repr(v) for k, v in metrics.items()}
    client = MlflowClient(tracking_uri=uri)
    with mlflow.start_run(run_name="register"):
        # no input example here: MLflow would load and run the model to validate it (the stage test does that)
        return reg.register_version(
            client,
            params.registry.model_name,
            folder,
            run_id,
            tags,
            model_signature(),
            input_example=None,
            pip_requirements=TEST_REQUIREMENTS,
        )


# =====================================================================================================================
# Comparison (pure)
# =====================================================================================================================


def test_compare_rules() -> None:
    rules = [MetricRule(name="sync", direction="maximize"), MetricRule(name="flicker", direction="minimize", tolerance=0.5)]
    assert reg.compare_with_champion({"sync": 0.5, "flicker": 3.0}, None, rules).beats
    better = reg.compare_with_champion({"sync": 0.6, "flicker": 3.4}, {"sync": 0.5, "flicker": 3.0}, rules)
    assert better.beats and "sync" in better.reason  # flicker worse by 0.4, within its tolerance
    worse = reg.compare_with_champion({"sync": 0.6, "flicker": 3.6}, {"sync": 0.5, "flicker": 3.0}, rules)
    assert not worse.beats and worse.reason == "worse than the champion on flicker"
    tie = reg.compare_with_champion({"sync": 0.5, "flicker": 3.0}, {"sync": 0.5, "flicker": 3.0}, rules)
    assert not tie.beats and "not better" in tie.reason
    with pytest.raises(ValueError, match="names metric 'sync' .* available: flicker"):
        reg.compare_with_champion({"flicker": 1.0}, None, rules)


def test_flatten_metrics_keeps_numbers() -> None:
    flat = reg.flatten_metrics({"TIA": {"sync": 0.5, "ok": True, "name": "x"}, "n": 3, "bad": float("nan")})
    assert flat == {"TIA.sync": 0.5, "n": 3.0}


# =====================================================================================================================
# Registration, idempotency, interruption, promotion
# =====================================================================================================================


def test_register_is_idempotent_and_promotion_follows_gate_and_metrics(
    tmp_path: Path, store: str, params: Params, tiny_parts: dict[str, Path]
) -> None:
    client = MlflowClient(tracking_uri=store)
    cfg = params.registry
    name = cfg.model_name
    version, created = _register(
        tmp_path, params, tiny_parts["checkpoint"], tiny_parts["vae"], "run-a", {"sync_confidence": 0.4}, store
    )
    assert created and version.status == "READY" and version.tags[reg.TAG_VERIFIED] == "true"
    assert version.tags[reg.TAG_TRAINING_RUN] == "run-a"

    # the gate failed: candidate only
    decision = reg.promote(client, version, cfg, gate_passed=False, gate_reason="sync too low")
    assert not decision["promoted"] and decision["aliases"] == {"candidate": str(version.version), "champion": None}
    assert reg.alias_version(client, name, "champion") is None

    # registering the same training run again reuses the version
    again, created_again = _register(
        tmp_path, params, tiny_parts["checkpoint"], tiny_parts["vae"], "run-a", {"sync_confidence": 0.4}, store
    )
    assert not created_again and again.version == version.version
    assert len(client.search_model_versions(f"name = '{name}'")) == 1

    # the gate passes and there is no champion: promoted
    decision = reg.promote(client, again, cfg, gate_passed=True, gate_reason="ok")
    assert decision["promoted"] and client.get_model_version_by_alias(name, "champion").version == version.version

    # a second training run that is worse on the compared metric: candidate moves, champion stays
    worse, _ = _register(
        tmp_path, params, tiny_parts["checkpoint_b"], tiny_parts["vae"], "run-b", {"sync_confidence": 0.3}, store
    )
    decision = reg.promote(client, worse, cfg, gate_passed=True, gate_reason="ok")
    assert not decision["promoted"] and decision["comparison"]["reason"] == "worse than the champion on sync_confidence"
    assert client.get_model_version_by_alias(name, "candidate").version == worse.version
    assert client.get_model_version_by_alias(name, "champion").version == version.version

    # batch generation resolves models:/name@champion to the champion's EMA transformer
    import torch
    from safetensors.torch import load_file

    import humo.registry  # noqa: F401 - registers the models:/ resolver
    from humo.inference.generate import load_model
    from humo.registry import MODEL_RESOLVERS

    transformer, info = load_model(f"models:/{name}@champion", MODEL_RESOLVERS)
    assert (info.name, info.version) == (name, str(version.version))
    expected = load_file(str(tiny_parts["checkpoint"] / "ema.safetensors"))
    assert all(torch.equal(transformer.state_dict()[key], value) for key, value in expected.items())


def test_interrupted_registration_leaves_no_alias_and_is_redone(
    tmp_path: Path, store: str, params: Params, tiny_parts: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    client = MlflowClient(tracking_uri=store)
    name = params.registry.model_name

    def fail(*args, **kwargs):
        raise reg.RegistrationError("simulated crash while verifying artifacts")

    monkeypatch.setattr(reg, "verify_version_artifacts", fail)
    with pytest.raises(reg.RegistrationError, match="simulated crash"):
        _register(tmp_path, params, tiny_parts["checkpoint"], tiny_parts["vae"], "run-a", {}, store)
    (stale,) = client.search_model_versions(f"name = '{name}'")
    assert reg.TAG_VERIFIED not in stale.tags
    assert client.get_registered_model(name).aliases == {}
    with pytest.raises(reg.RegistrationError, match="not verified"):
        reg.promote(client, stale, params.registry, gate_passed=True, gate_reason="ok")

    monkeypatch.undo()
    version, created = _register(
        tmp_path, params, tiny_parts["checkpoint"], tiny_parts["vae"], "run-a", {"sync_confidence": 0.4}, store
    )
    assert created and version.version != stale.version
    versions = client.search_model_versions(f"name = '{name}'")
    assert [v.version for v in versions] == [version.version]  # the unverified one was deleted


def test_verification_catches_changed_artifacts(
    tmp_path: Path, store: str, params: Params, tiny_parts: dict[str, Path]
) -> None:
    version, _ = _register(
        tmp_path, params, tiny_parts["checkpoint"], tiny_parts["vae"], "run-a", {}, store
    )
    folder = tmp_path / "model-run-a"
    assert reg.verify_version_artifacts(params.registry.model_name, version.version, folder, ARTIFACT_KEY) > 5
    (folder / "humo_model.json").write_text("{}")
    with pytest.raises(reg.RegistrationError, match=r"changed \['humo_model.json'\]"):
        reg.verify_version_artifacts(params.registry.model_name, version.version, folder, ARTIFACT_KEY)


# =====================================================================================================================
# The stage, end to end
# =====================================================================================================================


def test_register_stage_writes_decision_and_tags(
    tmp_path: Path, store: str, params: Params, tiny_parts: dict[str, Path]
) -> None:
    import shutil

    from humo.config import PathsConfig, TrackingConfig
    from humo.registry import register

    artifacts, reports = tmp_path / "artifacts", tmp_path / "reports"
    shutil.copytree(tiny_parts["checkpoint"], artifacts / "train_stage2")
    shutil.copytree(tiny_parts["vae"], artifacts / "train_vae" / "vae")
    write_evaluation(reports, {"sync_confidence": 0.42, "TIA": {"flicker": 1.5}}, passed=True)
    (tmp_path / "data.dvc").write_text("outs:\n- md5: 0123456789abcdef.dir\n  path: raw\n")
    tracking = TrackingConfig(uri=store, experiment="humo")
    paths = PathsConfig(raw=tmp_path / "raw", artifacts=artifacts, reports=reports)
    previous = mlflow.get_tracking_uri()
    try:
        decision = register.run(
            registry=params.registry,
            limits=params.limits,
            tracking=tracking,
            encoders=params.encoders,
            generate=params.generate,
            paths=paths,
            root=tmp_path,
        )
    finally:
        mlflow.set_tracking_uri(previous)
    written = json.loads((reports / "register" / "decision.json").read_text())
    assert written["version"] == decision["version"] == "1" and written["promoted"] is True
    assert written["gate"] == {"passed": True, "reason": "test gate"}
    assert written["aliases"] == {"candidate": "1", "champion": "1"}
    client = MlflowClient(tracking_uri=tracking.uri)
    version = client.get_model_version_by_alias(params.registry.model_name, "champion")
    assert version.tags[reg.TAG_DATASET] == "0123456789abcdef.dir"
    assert version.tags[reg.TAG_GIT] == "unknown"  # tmp_path is not a git repository
    assert version.tags["humo.metric.TIA.flicker"] == "1.5" and version.tags[reg.TAG_GATE] == "passed"
    assert len(version.tags[reg.TAG_WEIGHTS]) == 64
    # the logged model has the signature and the input example
    model_info = mlflow.models.get_model_info(f"models:/{params.registry.model_name}@champion")
    assert [spec.name for spec in model_info.signature.inputs.inputs][:2] == ["prompt", "mode"]
    assert model_info.saved_input_example_info is not None


def test_same_run_with_changed_weights_is_refused(
    tmp_path: Path, store: str, params: Params, tiny_parts: dict[str, Path]
) -> None:
    folder = tmp_path / "model-run-a"
    build_model_folder(folder, tiny_parts["checkpoint"], tiny_parts["vae"], params.encoders, params.generate, params.registry, params.limits, "run-a")
    client = MlflowClient(tracking_uri=store)
    name = params.registry.model_name

    def register(weights: str):
        with mlflow.start_run(run_name="register"):
            return reg.register_version(
                client, name, folder, "run-a", {reg.TAG_WEIGHTS: weights}, model_signature(), None,
                pip_requirements=TEST_REQUIREMENTS,
            )

    version, _ = register("a" * 64)
    assert register("a" * 64)[0].version == version.version
    with pytest.raises(reg.RegistrationError, match="needs a new training run id"):
        register("b" * 64)
