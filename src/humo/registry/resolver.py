"""``models:/<name>@<alias>`` (or ``models:/<name>/<version>``) for batch generation.

:func:`humo.inference.generate.load_model` resolves ``<scheme>:/...`` references through the resolvers it is
given; :data:`MODEL_RESOLVERS` maps the ``models`` scheme to this one. It downloads the version's ``model_dir``
artifact, verifies any weights manifest, and loads the EMA transformer. The tracking URI is MLflow's current one (``mlflow.set_tracking_uri`` or ``MLFLOW_TRACKING_URI``).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import torch

from humo.inference.generate import ModelInfo, ModelResolver

logger = logging.getLogger(__name__)


def _version_of(uri: str) -> tuple[str, str]:
    """``(name, version)`` of a ``models:/name@alias`` or ``models:/name/version`` URI."""
    from mlflow import MlflowClient

    body = uri.removeprefix("models:/")
    if "@" in body:
        name, alias = body.split("@", 1)
        return name, str(MlflowClient().get_model_version_by_alias(name, alias).version)
    name, _, version = body.partition("/")
    if not version:
        raise ValueError(f"model URI {uri!r} names no version or alias; use models:/<name>@<alias> or models:/<name>/<n>")
    return name, version


def resolve_registered_model(uri: str) -> tuple[torch.nn.Module, ModelInfo]:
    """The EMA transformer of a registered humo model and what the sidecar says about it.

    Raises:
        mlflow.exceptions.MlflowException: unknown model, alias or version.
        humo.registry.manifest.ManifestError: referenced weights changed since registration.
    """
    import mlflow

    from humo.registry.manifest import verify_manifest
    from humo.registry.mlflow_registry import artifact_folder
    from humo.registry.pyfunc import ARTIFACT_KEY, MANIFEST_JSON, load_folder_transformer

    name, version = _version_of(uri)
    with tempfile.TemporaryDirectory(prefix="humo-resolve-") as tmp:
        local = Path(mlflow.artifacts.download_artifacts(f"models:/{name}/{version}", dst_path=tmp))
        folder = artifact_folder(local, ARTIFACT_KEY)
        roots = verify_manifest(folder / MANIFEST_JSON) if (folder / MANIFEST_JSON).is_file() else {}
        transformer = load_folder_transformer(folder, roots)
    logger.info("resolved %s to %s version %s", uri, name, version)
    return transformer, ModelInfo(name=name, version=version, source=uri)


MODEL_RESOLVERS: dict[str, ModelResolver] = {"models": resolve_registered_model}
"""Scheme -> resolver, to pass to :func:`humo.inference.generate.load_model`."""
