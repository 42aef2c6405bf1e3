"""The pipeline flow: every DVC stage in order, one task each (see :mod:`flows._tasks` for why DVC runs them).

    python -m flows.pipeline                        # the pipeline of params.yaml
    python -m flows.pipeline synth.seed=1           # as a DVC experiment with an override

A failed stage (for example ``validate`` finding a bad manifest) fails its task and the flow, and the later
stages do not run: the flow run's state says which stage stopped it.
"""

from __future__ import annotations

import sys
from pathlib import Path

from prefect import flow

from flows._tasks import link_mlflow_run, run_dvc_stage
from humo.config import DEFAULT_PARAMS_PATH, load_params

PIPELINE_STAGES = (
    "train_vae",
    "curate",
    "validate",
    "precompute",
    "train_stage1",
    "train_stage2",
    "eval_set",
    "calibrate_cache",
    "speed_study",
    "evaluate",
    "register",
)
"""The DAG of dvc.yaml in execution order (a test keeps the two in step)."""
TRAINING_STAGES = ("train_stage1", "train_stage2")
"""Stages that record an MLflow run in ``artifacts/<stage>/run.json``."""


@flow(name="humo-pipeline", flow_run_name="pipeline {params_path}", log_prints=True)
def pipeline(params_path: Path = DEFAULT_PARAMS_PATH, overrides: list[str] | None = None) -> list[str]:
    """train_vae -> curate -> validate -> precompute -> train stage 1 -> train stage 2 -> eval set -> step-cache
    calibration -> speed study -> evaluate -> register."""
    overrides = list(overrides or [])
    params = load_params(params_path, overrides)  # typos and bad values fail here, before any stage runs
    root = Path(params_path).resolve().parent
    for stage in PIPELINE_STAGES:
        run_dvc_stage(stage, root, overrides)
        if stage in TRAINING_STAGES:
            link_mlflow_run(stage, root / params.paths.artifacts / stage / "run.json", params.tracking.uri)
    return list(PIPELINE_STAGES)


if __name__ == "__main__":
    pipeline(overrides=sys.argv[1:])
