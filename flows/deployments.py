"""Scheduled deployments: a nightly curate-and-retrain and an hourly batch inference over the inbox.

    python -m flows.deployments serve      # register both and run them on schedule (Ctrl-C stops)
    python -m flows.deployments register   # only create/update the deployments on the Prefect server

Both talk to the Prefect server of ``PREFECT_API_URL`` (start one locally with
``prefect server start --host 127.0.0.1``); schedules come from the ``orchestration`` section of params.yaml.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from prefect import serve
from prefect.deployments.runner import RunnerDeployment

from flows.batch_inference import with_cluster
from flows.pipeline import pipeline
from humo.config import DEFAULT_PARAMS_PATH, OrchestrationConfig, load_params

RETRAIN_NAME = "nightly-curate-and-retrain"
INFERENCE_NAME = "hourly-batch-inference"


def build_deployments(cfg: OrchestrationConfig, params_path: Path) -> list[RunnerDeployment]:
    """The two deployments, with their schedules and default parameters."""
    params_path = Path(params_path).resolve()
    retrain = pipeline.to_deployment(
        name=RETRAIN_NAME,
        cron=cfg.retrain_cron,
        parameters={"params_path": str(params_path)},
        tags=["humo", "training"],
        description="curate -> validate -> precompute -> train (2 stages) -> speed study -> evaluate -> register, via DVC",
    )
    inference = with_cluster(cfg).to_deployment(
        name=INFERENCE_NAME,
        cron=cfg.inference_cron,
        parameters={"params_path": str(params_path)},
        tags=["humo", "inference"],
        description="every request file in the inbox -> videos + sidecars (done requests are skipped)",
    )
    return [retrain, inference]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m flows.deployments", description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["serve", "register"])
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS_PATH, help="params.yaml to read")
    args = parser.parse_args(argv)
    deployments = build_deployments(load_params(args.params).orchestration, args.params)
    if args.action == "register":
        for deployment in deployments:
            deployment.apply()
        return
    serve(*deployments)


if __name__ == "__main__":
    main()
