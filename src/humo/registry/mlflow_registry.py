"""Registration and promotion in the MLflow model registry, with aliases (not the deprecated stages).

Order of one registration (:func:`register_version`), chosen so that a failure at any point leaves no alias on an
incomplete version:

1. look for a version tagged with the same training run id; a verified one is reused (no duplicate), an
   unverified one (a crash part-way) is deleted;
2. log the pyfunc (:mod:`humo.registry.pyfunc`) in a registration run and create the version, tagged with the
   training run id only;
3. wait until MLflow reports the version ``READY``, download its artifacts and compare every file's sha256 with
   the model folder that was logged;
4. write the remaining tags (dataset hash, git commit, evaluation metrics, gate decision) and, last,
   ``humo.verified=true``.

Aliases are set afterwards by :func:`promote`: ``candidate`` always, ``champion`` only when the gate passed and the
candidate beats the current champion (:func:`compare_with_champion`).
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import yaml
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from humo.config import MetricRule, RegistryConfig
from humo.registry.manifest import sha256_file

logger = logging.getLogger(__name__)

TAG_TRAINING_RUN = "humo.training_run_id"
"""The registration key: one version per training run."""
TAG_VERIFIED = "humo.verified"
"""Written last, once the version is READY and its artifacts match; only verified versions get aliases."""
TAG_GATE = "humo.gate"
"""``passed`` or ``failed``: the evaluation gate decision."""
TAG_METRIC_PREFIX = "humo.metric."
TAG_DATASET = "humo.dataset_md5"
TAG_FEATURES = "humo.features_md5"
TAG_GIT = "humo.git_commit"
TAG_WEIGHTS = "humo.weights_sha256"
TAG_ADAPTER = "humo.adapter"
"""On an adapter version (a LoRA stage's output): ``lora r<rank> alpha <alpha>``."""
TAG_BASE_WEIGHTS = "humo.base_weights_sha256"
"""On an adapter version: the sha256 of the base weights it needs."""
TAG_BASE_VERSION = "humo.base_model_version"
"""On an adapter version: ``<name>/<version>`` of the registered version holding that base, or ``unregistered``."""
READY_TIMEOUT_S = 300.0
"""Longest wait for MLflow to report a new version READY."""
READY_POLL_S = 0.5
MODEL_CODE = Path(__file__).with_name("model_code.py")
"""The models-from-code file logged as the pyfunc (:mod:`humo.registry.model_code`)."""


class RegistrationError(RuntimeError):
    """A new model version did not become READY, or its artifacts differ from what was logged."""


# =====================================================================================================================
# Metrics and comparison (pure)
# =====================================================================================================================


def flatten_metrics(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Numeric leaves of a nested metrics dict as ``{"a.b": 0.5}`` (booleans and text are left out)."""
    flat: dict[str, float] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_metrics(value, prefix=f"{name}."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(float(value)):
            flat[name] = float(value)
    return flat


@dataclass
class Comparison:
    """Outcome of comparing a candidate with the champion, metric by metric (written to decision.json)."""

    beats: bool
    reason: str
    metrics: list[dict[str, Any]] = field(default_factory=list)


def compare_with_champion(
    candidate: Mapping[str, float], champion: Mapping[str, float] | None, rules: Sequence[MetricRule]
) -> Comparison:
    """Does the candidate beat the champion on the configured metrics?

    The candidate wins when, for every rule, it is no worse than the champion by more than the rule's tolerance,
    and it is strictly better on at least one. Without a champion the candidate wins.

    Args:
        candidate: flattened evaluation metrics of the candidate.
        champion: flattened metrics of the current champion (from its tags), or None when there is none.
        rules: ``registry.compare``.

    Raises:
        ValueError: a rule names a metric the candidate does not have (the message lists the available ones).
    """
    for rule in rules:
        if rule.name not in candidate:
            raise ValueError(
                f"registry.compare names metric {rule.name!r} but the evaluation metrics have none; available: "
                f"{', '.join(sorted(candidate)) or '(none)'}"
            )
    if champion is None:
        return Comparison(True, "no current champion", [{"name": r.name, "candidate": candidate[r.name]} for r in rules])
    rows, worse, better = [], [], []
    for rule in rules:
        mine, theirs = candidate[rule.name], champion.get(rule.name)
        row = {"name": rule.name, "direction": rule.direction, "candidate": mine, "champion": theirs}
        if theirs is None:
            row["outcome"] = "champion has no value"
            better.append(rule.name)
        else:
            gain = (mine - theirs) if rule.direction == "maximize" else (theirs - mine)
            row["gain"] = gain
            if gain < -rule.tolerance:
                row["outcome"] = "worse"
                worse.append(rule.name)
            elif gain > 0:
                row["outcome"] = "better"
                better.append(rule.name)
            else:
                row["outcome"] = "equal within tolerance"
        rows.append(row)
    if worse:
        return Comparison(False, f"worse than the champion on {', '.join(worse)}", rows)
    if not better:
        return Comparison(False, "not better than the champion on any compared metric", rows)
    return Comparison(True, f"better than the champion on {', '.join(better)}", rows)


# =====================================================================================================================
# Versions
# =====================================================================================================================


def _versions_for_run(client: MlflowClient, name: str, training_run_id: str) -> list[ModelVersion]:
    try:
        client.get_registered_model(name)
    except MlflowException as err:
        if err.error_code == "RESOURCE_DOES_NOT_EXIST":
            return []
        raise
    query = f"name = '{name}' and tags.`{TAG_TRAINING_RUN}` = '{training_run_id}'"
    return list(client.search_model_versions(query))


def version_with_weights(client: MlflowClient, name: str, weights_sha256: str) -> ModelVersion | None:
    """The newest verified version of ``name`` whose weights have ``weights_sha256`` (an adapter's base), or None."""
    try:
        client.get_registered_model(name)
    except MlflowException as err:
        if err.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    query = f"name = '{name}' and tags.`{TAG_WEIGHTS}` = '{weights_sha256}'"
    found = [v for v in client.search_model_versions(query) if v.tags.get(TAG_VERIFIED) == "true"]
    return max(found, key=lambda v: int(v.version), default=None)


def find_version(client: MlflowClient, name: str, training_run_id: str) -> ModelVersion | None:
    """The verified version registered from ``training_run_id``, or None."""
    for version in _versions_for_run(client, name, training_run_id):
        if version.tags.get(TAG_VERIFIED) == "true" and version.status == "READY":
            return version
    return None


def _wait_ready(client: MlflowClient, name: str, version: str, timeout_s: float = READY_TIMEOUT_S) -> ModelVersion:
    deadline = time.monotonic() + timeout_s
    while True:
        current = client.get_model_version(name, version)
        if current.status == "READY":
            return current
        if current.status == "FAILED_REGISTRATION" or time.monotonic() > deadline:
            raise RegistrationError(
                f"model {name} version {version} is {current.status} ({current.status_message}); it gets no alias"
            )
        time.sleep(READY_POLL_S)


def artifact_folder(model_dir: Path, artifact_key: str) -> Path:
    """Where a downloaded pyfunc keeps its artifact ``artifact_key`` (as recorded in its ``MLmodel`` file)."""
    flavor = yaml.safe_load((model_dir / "MLmodel").read_text()).get("flavors", {}).get("python_function", {})
    entry = (flavor.get("artifacts") or {}).get(artifact_key) or {}
    return model_dir / entry.get("path", f"artifacts/{artifact_key}")


def verify_version_artifacts(name: str, version: str, model_folder: Path, artifact_key: str) -> int:
    """Download a registered version and compare every file of its ``artifact_key`` folder with ``model_folder``.

    Returns:
        The number of files checked.

    Raises:
        RegistrationError: a file is missing, extra or differs (by sha256).
    """
    expected = {p.relative_to(model_folder).as_posix(): sha256_file(p) for p in model_folder.rglob("*") if p.is_file()}
    with tempfile.TemporaryDirectory(prefix="humo-verify-") as tmp:
        local = Path(mlflow.artifacts.download_artifacts(f"models:/{name}/{version}", dst_path=tmp))
        folder = artifact_folder(local, artifact_key)
        if not folder.is_dir():
            raise RegistrationError(f"model {name} version {version} has no {artifact_key!r} artifact folder")
        found = {p.relative_to(folder).as_posix(): sha256_file(p) for p in folder.rglob("*") if p.is_file()}
    if found != expected:
        missing = sorted(set(expected) - set(found))
        extra = sorted(set(found) - set(expected))
        changed = sorted(k for k in set(found) & set(expected) if found[k] != expected[k])
        raise RegistrationError(
            f"model {name} version {version}: artifacts differ from the logged folder (missing {missing}, "
            f"extra {extra}, changed {changed}); it gets no alias"
        )
    return len(found)


def register_version(
    client: MlflowClient,
    name: str,
    model_folder: Path,
    training_run_id: str,
    tags: Mapping[str, str],
    signature: Any,
    input_example: Any,
    artifact_key: str = "model_dir",
    pip_requirements: Sequence[str] | None = None,
) -> tuple[ModelVersion, bool]:
    """Register the model folder as a new version of ``name``, or reuse the one already made for the run.

    Must be called inside an active MLflow run (the registration run, which holds the logged model).

    Args:
        client: client on the tracking/registry store.
        name: registered model name.
        model_folder: the folder from :func:`humo.registry.pyfunc.build_model_folder`.
        training_run_id: the registration key (one version per training run).
        tags: tags written once the version is READY and verified (dataset, git commit, metrics, gate).
        signature, input_example: of the pyfunc.
        artifact_key: the pyfunc artifact name of the folder.
        pip_requirements: requirements recorded with the model (None: MLflow infers them).

    Returns:
        ``(version, created)``: the verified version and whether it was created now.

    Raises:
        RegistrationError: the new version did not become READY or its artifacts differ (it keeps no alias).
    """
    existing = find_version(client, name, training_run_id)
    if existing is not None:
        registered, now = existing.tags.get(TAG_WEIGHTS), tags.get(TAG_WEIGHTS)
        if registered and now and registered != now:
            raise RegistrationError(
                f"training run {training_run_id} is already {name} version {existing.version} with weights sha256 "
                f"{registered}, but the checkpoint now has {now}; a changed checkpoint needs a new training run id"
            )
        logger.info("training run %s is already %s version %s; reusing it", training_run_id, name, existing.version)
        for key, value in tags.items():
            client.set_model_version_tag(name, existing.version, key, value)
        return existing, False
    for stale in _versions_for_run(client, name, training_run_id):
        logger.warning("deleting unverified %s version %s left by an interrupted registration", name, stale.version)
        client.delete_model_version(name, stale.version)

    info = mlflow.pyfunc.log_model(
        name="model",
        python_model=str(MODEL_CODE),
        artifacts={artifact_key: str(model_folder)},
        signature=signature,
        input_example=input_example,
        pip_requirements=list(pip_requirements) if pip_requirements is not None else None,
    )
    version = mlflow.register_model(info.model_uri, name, tags={TAG_TRAINING_RUN: training_run_id})
    version = _wait_ready(client, name, version.version)
    checked = verify_version_artifacts(name, version.version, model_folder, artifact_key)
    logger.info("%s version %s is READY; %d artifact file(s) match the logged folder", name, version.version, checked)
    for key, value in tags.items():
        client.set_model_version_tag(name, version.version, key, value)
    client.set_model_version_tag(name, version.version, TAG_VERIFIED, "true")
    return client.get_model_version(name, version.version), True


# =====================================================================================================================
# Aliases
# =====================================================================================================================


def version_metrics(version: ModelVersion) -> dict[str, float]:
    """Evaluation metrics stored in a version's ``humo.metric.*`` tags."""
    metrics = {}
    for key, value in version.tags.items():
        if key.startswith(TAG_METRIC_PREFIX):
            try:
                metrics[key[len(TAG_METRIC_PREFIX) :]] = float(value)
            except ValueError:
                logger.warning("tag %s=%r of version %s is not a number; ignored", key, value, version.version)
    return metrics


def alias_version(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    """The version an alias points at, or None when the alias (or the model) does not exist."""
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as err:
        if err.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def promote(
    client: MlflowClient, version: ModelVersion, registry: RegistryConfig, gate_passed: bool, gate_reason: str
) -> dict[str, Any]:
    """Set ``candidate`` on a verified version; move ``champion`` to it when the gate passed and it beats the champion.

    Args:
        client: registry client.
        version: a version returned by :func:`register_version` (tagged ``humo.verified=true``).
        registry: names of the model and aliases, and the comparison rules.
        gate_passed, gate_reason: the evaluation gate's decision and why.

    Returns:
        The decision (JSON-ready): version, gate, comparison with the champion, aliases after the call.

    Raises:
        RegistrationError: the version is not verified (an interrupted registration never gets an alias).
    """
    name = registry.model_name
    if version.tags.get(TAG_VERIFIED) != "true":
        raise RegistrationError(f"{name} version {version.version} is not verified; refusing to alias it")
    candidate_metrics = version_metrics(version)
    champion = alias_version(client, name, registry.champion_alias)
    client.set_registered_model_alias(name, registry.candidate_alias, version.version)
    if champion is not None and champion.version == version.version:
        comparison = Comparison(False, f"this version is already the {registry.champion_alias}")
    else:
        comparison = compare_with_champion(
            candidate_metrics, version_metrics(champion) if champion is not None else None, registry.compare
        )
    promoted = gate_passed and comparison.beats
    already = champion is not None and champion.version == version.version
    if promoted:
        client.set_registered_model_alias(name, registry.champion_alias, version.version)
        logger.info("%s version %s is the new %s (%s)", name, version.version, registry.champion_alias, comparison.reason)
    elif already:
        logger.info("%s version %s is already the %s", name, version.version, registry.champion_alias)
    else:
        logger.info(
            "%s version %s stays %s only (gate %s: %s; %s)",
            name,
            version.version,
            registry.candidate_alias,
            "passed" if gate_passed else "failed",
            gate_reason,
            comparison.reason,
        )
    now = alias_version(client, name, registry.champion_alias)
    return {
        "model_name": name,
        "version": str(version.version),
        "training_run_id": version.tags.get(TAG_TRAINING_RUN),
        "gate": {"passed": gate_passed, "reason": gate_reason},
        "comparison": asdict(comparison),
        "previous_champion": str(champion.version) if champion is not None else None,
        "promoted": promoted,
        "aliases": {
            registry.candidate_alias: str(version.version),
            registry.champion_alias: str(now.version) if now is not None else None,
        },
    }
