"""MLflow tracking: one place that opens runs, so every stage logs the same way.

Stages call :func:`mlflow_run` with the ``tracking`` section; it points MLflow at the configured store
(a local sqlite database by default), picks the experiment, nests the run under an active parent run (a
Prefect pipeline run, for instance) and logs the resolved config as flattened params.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping
from typing import Any

from humo.config import TrackingConfig

logger = logging.getLogger(__name__)

PARENT_RUN_ENV = "HUMO_PARENT_RUN_ID"
"""When set (by a flow), stage runs are nested under this MLflow run id."""
MAX_PARAM_LENGTH = 500
"""MLflow rejects longer param values; longer ones are cut with a marker."""


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": "1"}``, values as strings cut to :data:`MAX_PARAM_LENGTH`."""
    flat: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, prefix=f"{name}."))
        else:
            text = str(value)
            flat[name] = text if len(text) <= MAX_PARAM_LENGTH else text[: MAX_PARAM_LENGTH - 3] + "..."
    return flat


@contextlib.contextmanager
def mlflow_run(
    tracking: TrackingConfig,
    run_name: str,
    params: Mapping[str, Any] | None = None,
    tags: Mapping[str, str] | None = None,
    log_system_metrics: bool = False,
) -> Iterator[Any]:
    """Open an MLflow run for a stage; yields the active ``mlflow.ActiveRun``.

    Args:
        tracking: where to log (``uri``, ``experiment``).
        run_name: a readable name, e.g. ``"train_vae"``.
        params: nested config to log as flattened params (e.g. ``{"train_vae": cfg.model_dump()}``).
        tags: extra tags.
        log_system_metrics: also record CPU/memory (and GPU) use every few seconds (MLflow system metrics).
    """
    import mlflow

    mlflow.set_tracking_uri(tracking.uri)
    mlflow.set_experiment(tracking.experiment)
    parent = os.environ.get(PARENT_RUN_ENV)
    all_tags = {"humo.stage": run_name, **(tags or {})}
    if parent:
        all_tags["mlflow.parentRunId"] = parent
    with mlflow.start_run(run_name=run_name, tags=all_tags, log_system_metrics=log_system_metrics) as run:
        if params:
            mlflow.log_params(flatten(params))
        logger.info("MLflow run %s (%s) in %s", run.info.run_id, run_name, tracking.uri)
        yield run
