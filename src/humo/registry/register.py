"""The ``register`` stage: the evaluated stage-2 model -> an MLflow model version, aliased by the gate.

    humo register                       # dvc repro register

Reads the training checkpoint (``artifacts/train_stage2``: EMA weights, config.json, run.json), the tiny VAE
(``artifacts/train_vae/vae``), the evaluation metrics and the gate decision (``reports/evaluate``), then:
builds the pyfunc model folder, registers it under ``registry.model_name`` (once per training run), tags it with
the dataset hash (data.dvc / dvc.lock), the git commit, the metrics and the gate, sets ``candidate`` and, when the
gate passed and the candidate beats the champion on ``registry.compare``, moves ``champion``. The decision and the
figures behind it go to ``reports/register/decision.json`` and to the registration run.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import yaml

from humo.config import EncodersConfig, GenerateConfig, PathsConfig, RegistryConfig, RequestLimitsConfig, TrackingConfig
from humo.hashing import git_commit
from humo.registry.mlflow_registry import (
    TAG_ADAPTER,
    TAG_BASE_VERSION,
    TAG_BASE_WEIGHTS,
    TAG_DATASET,
    TAG_FEATURES,
    TAG_GATE,
    TAG_GIT,
    TAG_METRIC_PREFIX,
    TAG_TRAINING_RUN,
    TAG_WEIGHTS,
    flatten_metrics,
    promote,
    register_version,
    version_with_weights,
)
from humo.registry.pyfunc import (
    ARTIFACT_KEY,
    RECORDED_PACKAGES,
    build_model_folder,
    input_example,
    model_signature,
    package_versions,
)

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
GATE_FILE = "gate.json"
DECISION_FILE = "decision.json"
FEATURES_STAGE = "precompute"
"""dvc.lock stage whose output hash is recorded as the features the model was trained on."""


# =====================================================================================================================
# Provenance
# =====================================================================================================================


def dataset_hashes(root: Path) -> dict[str, str]:
    """DVC hashes of the data the model comes from: ``data.dvc``'s md5 and dvc.lock's precompute output md5."""
    hashes: dict[str, str] = {}
    data_dvc = root / "data.dvc"
    if data_dvc.is_file():
        outs = (yaml.safe_load(data_dvc.read_text()) or {}).get("outs") or []
        if outs and outs[0].get("md5"):
            hashes[TAG_DATASET] = str(outs[0]["md5"])
    lock = root / "dvc.lock"
    if lock.is_file():
        stage = ((yaml.safe_load(lock.read_text()) or {}).get("stages") or {}).get(FEATURES_STAGE) or {}
        md5s = [str(out["md5"]) for out in stage.get("outs") or [] if out.get("md5")]
        if md5s:
            hashes[TAG_FEATURES] = ",".join(md5s)
    if TAG_DATASET not in hashes:
        logger.warning("no md5 in %s: the dataset hash is not recorded (run `dvc add data/raw` / `make data`)", data_dvc)
    return hashes


def read_evaluation(evaluate_dir: Path) -> tuple[dict[str, float], bool, str]:
    """Flattened metrics and the gate decision written by the evaluate stage.

    The gate is read from ``gate.json`` (``{"passed": bool, "reason": str, ...}``) or from a ``gate`` entry of
    ``metrics.json``.

    Raises:
        FileNotFoundError: ``metrics.json`` or the gate decision is missing (run the evaluate stage).
    """
    metrics_path = evaluate_dir / METRICS_FILE
    if not metrics_path.is_file():
        raise FileNotFoundError(f"{metrics_path} not found; run `humo evaluate` (dvc repro evaluate) first")
    metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
    gate_path = evaluate_dir / GATE_FILE
    if gate_path.is_file():
        gate = json.loads(gate_path.read_text(encoding="utf-8"))
    elif isinstance(metrics.get("gate"), dict):
        gate = metrics["gate"]
    else:
        raise FileNotFoundError(
            f"no gate decision: neither {gate_path} nor a 'gate' entry in {metrics_path}; run `humo evaluate`"
        )
    if not isinstance(gate.get("passed"), bool):
        raise ValueError(f"gate decision {gate!r} has no boolean 'passed'; re-run `humo evaluate`")
    reason = str(gate.get("reason") or ("all thresholds met" if gate["passed"] else "a threshold was not met"))
    figures = {key: value for key, value in metrics.items() if key != "gate"}
    return flatten_metrics(figures), gate["passed"], reason


def read_training_run(checkpoint_dir: Path) -> tuple[str, dict[str, Any]]:
    """The training run id from ``run.json`` (the registration key) and the whole record.

    Raises:
        FileNotFoundError: ``run.json`` is missing.
        ValueError: it has no ``run_id``.
    """
    path = checkpoint_dir / "run.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; run `humo train-stage2` (dvc repro train_stage2) first")
    run = json.loads(path.read_text(encoding="utf-8"))
    run_id = run.get("run_id")
    if not run_id:
        raise ValueError(f"{path} has no run_id; it identifies the training run a model version comes from")
    return str(run_id), run


def adapter_tags(client: Any, name: str, info: dict[str, Any]) -> dict[str, str]:
    """Tags of an adapter version: what it is, and which base it needs (a registered version when one holds it)."""
    adapter, base_sha = info["adapter"], info["base_weights_sha256"]
    base = version_with_weights(client, name, base_sha)
    if base is None:
        logger.warning("the adapter's base (sha256 %s...) is no registered version of %s", base_sha[:12], name)
    return {
        TAG_ADAPTER: f"{adapter['kind']} r{adapter['rank']} alpha {adapter['alpha']:g}",
        TAG_BASE_WEIGHTS: base_sha,
        TAG_BASE_VERSION: f"{name}/{base.version}" if base is not None else "unregistered",
    }


# =====================================================================================================================
# The stage
# =====================================================================================================================


def run(
    registry: RegistryConfig,
    limits: RequestLimitsConfig,
    tracking: TrackingConfig,
    encoders: EncodersConfig,
    generate: GenerateConfig,
    paths: PathsConfig,
    root: Path = Path("."),
) -> dict[str, Any]:
    """Register the stage-2 model and decide its aliases.

    Args:
        registry: model name, aliases, comparison rules, weights mode.
        limits: what one served request may ask for (recorded with the model).
        tracking: MLflow tracking URI (the registry lives in the same store) and experiment.
        encoders, generate: recorded in the model (how it encodes inputs and samples by default).
        paths: ``artifacts`` (checkpoint, tiny VAE) and ``reports`` (evaluation in, decision out).
        root: project root (for data.dvc, dvc.lock and git).

    Returns:
        The decision written to ``reports/register/decision.json``.
    """
    import mlflow
    from mlflow import MlflowClient

    from humo.tracking import mlflow_run

    checkpoint_dir = paths.candidate_dir
    training_run_id, training_run = read_training_run(checkpoint_dir)
    metrics, gate_passed, gate_reason = read_evaluation(paths.report_dir("evaluate"))
    tags = {
        TAG_GIT: git_commit(root),
        TAG_GATE: "passed" if gate_passed else "failed",
        **dataset_hashes(root),
        **{f"{TAG_METRIC_PREFIX}{key}": repr(value) for key, value in metrics.items()},
    }
    versions = package_versions()
    requirements = [f"{name}=={versions[name]}" for name in RECORDED_PACKAGES if versions[name] and name != "humo"]
    with tempfile.TemporaryDirectory(prefix="humo-register-") as tmp:
        folder = Path(tmp) / ARTIFACT_KEY
        info = build_model_folder(
            folder,
            checkpoint_dir=checkpoint_dir,
            vae_dir=paths.vae_dir,
            encoders=encoders,
            generate=generate,
            registry=registry,
            limits=limits,
            training_run_id=training_run_id,
        )
        tags[TAG_WEIGHTS] = info["weights_sha256"]
        run_params = {"registry": registry.model_dump(mode="json")}
        with mlflow_run(tracking, "register", params=run_params, tags={TAG_TRAINING_RUN: training_run_id}) as active:
            client = MlflowClient(tracking_uri=tracking.uri)
            if "adapter" in info:
                tags.update(adapter_tags(client, registry.model_name, info))
            version, created = register_version(
                client,
                registry.model_name,
                folder,
                training_run_id,
                tags,
                signature=model_signature(),
                input_example=input_example(generate),
                pip_requirements=requirements,
            )
            decision = promote(client, version, registry, gate_passed, gate_reason)
            decision.update(
                created=created,
                registration_run_id=active.info.run_id,
                training=training_run,
                tags=tags,
                tracking_uri=tracking.uri,
            )
            out = paths.report_dir("register") / DECISION_FILE
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(decision, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")
            mlflow.log_artifact(str(out))
    logger.info(
        "%s version %s (%s); champion: %s",
        registry.model_name,
        decision["version"],
        "new" if created else "existing",
        decision["aliases"][registry.champion_alias],
    )
    return decision
