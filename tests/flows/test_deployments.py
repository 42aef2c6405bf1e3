"""The scheduled deployments: names, flows, schedules and parameters come from params.yaml."""

from __future__ import annotations

from pathlib import Path

from flows.deployments import INFERENCE_NAME, RETRAIN_NAME, build_deployments
from humo.config import OrchestrationConfig


def test_two_deployments_with_the_configured_schedules(params_path: Path) -> None:
    cfg = OrchestrationConfig(retrain_cron="30 3 * * *", inference_cron="*/15 * * * *")
    retrain, inference = build_deployments(cfg, params_path)
    assert (retrain.name, retrain.flow_name) == (RETRAIN_NAME, "humo-pipeline")
    assert (inference.name, inference.flow_name) == (INFERENCE_NAME, "humo-batch-inference")
    crons = [[schedule.schedule.cron for schedule in d.schedules] for d in (retrain, inference)]
    assert crons == [["30 3 * * *"], ["*/15 * * * *"]]
    for deployment in (retrain, inference):
        assert deployment.parameters["params_path"] == str(params_path.resolve())
        assert "humo" in deployment.tags
