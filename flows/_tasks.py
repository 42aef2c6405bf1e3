"""Tasks shared by the flows: each wraps exactly one call (a DVC stage, a stage function, a registry call).

DAG stages run through ``dvc repro --single-item <stage>`` (never by calling their ``run()`` here), so dvc.lock
stays authoritative: a flow run and ``make run`` / ``dvc repro`` see the same state, unchanged stages are skipped
in both, and a flow run leaves the same provenance (params, deps and outs hashes) as a run from the shell.
"""

from __future__ import annotations

import json
import logging
import shlex
import subprocess
from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.exceptions import MissingContextError

OUTPUT_TAIL_CHARS = 4000
"""How much of a failed command's output goes into the task's error (the full output is in the task log)."""


def _logger() -> logging.Logger | logging.LoggerAdapter:
    """The run logger inside a flow or task run; the module logger when a task body is called directly."""
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger(__name__)


class StageFailed(RuntimeError):
    """A DVC stage exited non-zero; the message holds the command and the end of its output."""


def dvc_command(stage: str, overrides: list[str]) -> list[str]:
    """The DVC call for one stage: ``dvc repro`` normally, ``dvc exp run -S ...`` when params are overridden.

    With overrides the run is a DVC experiment: DVC writes the values into params.yaml of the workspace (as
    ``dvc exp run -S`` always does) and records an experiment ref, so the overridden run is versioned too.
    """
    if not overrides:
        return ["dvc", "repro", "--single-item", stage]
    command = ["dvc", "exp", "run", "--single-item"]
    for override in overrides:
        command += ["--set-param", override]
    return [*command, stage]


@task(name="dvc-stage", task_run_name="dvc {stage}", retries=0, tags=["dvc"])
def run_dvc_stage(stage: str, project_root: Path, overrides: list[str]) -> str:
    """Run one DVC stage in ``project_root``; no retries: a failed stage is a bug or bad data, not a blip."""
    logger = _logger()
    command = dvc_command(stage, overrides)
    logger.info("running %s", shlex.join(command))
    completed = subprocess.run(command, cwd=project_root, capture_output=True, text=True, check=False)
    output = completed.stdout + completed.stderr
    logger.info("%s", output.strip()[-OUTPUT_TAIL_CHARS:] or "(no output)")
    if completed.returncode != 0:
        raise StageFailed(
            f"stage {stage!r} failed ({shlex.join(command)} exited {completed.returncode}):\n"
            f"{output[-OUTPUT_TAIL_CHARS:]}"
        )
    return output


@task(name="link-mlflow-run", task_run_name="link mlflow run of {stage}", retries=2, retry_delay_seconds=2)
def link_mlflow_run(stage: str, run_json: Path, tracking_uri: str) -> str | None:
    """Publish the stage's MLflow run (from its ``run.json``) as a Prefect artifact on this flow run."""
    if not run_json.is_file():
        _logger().warning("no %s: stage %s recorded no MLflow run", run_json, stage)
        return None
    record = json.loads(run_json.read_text(encoding="utf-8"))
    run_id = record.get("run_id")
    markdown = (
        f"### MLflow run of `{stage}`\n\n| field | value |\n|---|---|\n"
        f"| run id | `{run_id}` |\n| tracking URI | `{tracking_uri}` |\n"
        + "".join(f"| {key} | `{value}` |\n" for key, value in record.items() if key != "run_id")
    )
    create_markdown_artifact(markdown=markdown, key=f"mlflow-{stage.replace('_', '-')}", description=f"{stage}")
    return run_id
