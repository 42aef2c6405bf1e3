"""The batch-inference flow: request files -> videos + JSON sidecars, fanned out over Dask workers.

    python -m flows.batch_inference                         # every request file in orchestration.inbox
    python -m flows.batch_inference path/to/test_case.json  # one file

The unit of fan-out is a request file: each worker loads the model once and generates the requests of one
file into ``<outbox>/<file stem>/`` (one mp4 + sidecar per request, and ``summary.json``). Requests whose
outputs exist and match are skipped by :func:`humo.inference.batch.generate_batch`, so re-running the flow on
the same inbox generates nothing twice. Split a large job into several files to spread it over more workers.
"""

from __future__ import annotations

import sys
from pathlib import Path

from prefect import flow, task
from prefect_dask import DaskTaskRunner

from humo.config import DEFAULT_PARAMS_PATH, OrchestrationConfig, TrackingConfig, load_params

REQUEST_SUFFIXES = (".json", ".jsonl")


def dask_runner(cfg: OrchestrationConfig) -> DaskTaskRunner:
    """A Dask task runner: the configured scheduler, or a local cluster of ``dask_workers`` processes."""
    if cfg.dask_address:
        return DaskTaskRunner(address=cfg.dask_address)
    return DaskTaskRunner(cluster_kwargs={"n_workers": cfg.dask_workers, "threads_per_worker": 1, "processes": True})


@task(name="list-request-files", retries=2, retry_delay_seconds=2)
def list_request_files(source: Path) -> list[Path]:
    """The request file itself, or every ``*.json``/``*.jsonl`` directly inside an inbox folder (sorted)."""
    if source.is_file():
        return [source]
    if not source.is_dir():
        raise FileNotFoundError(f"requests {source} not found: give a request file or an inbox folder")
    return sorted(path for path in source.iterdir() if path.suffix.lower() in REQUEST_SUFFIXES and path.is_file())


@task(name="generate-requests", task_run_name="generate {requests.name}", retries=0, tags=["inference"])
def generate_requests(requests: Path, out_dir: Path, model: str, params_path: Path, overrides: list[str]) -> dict:
    """Generate one request file with :func:`humo.inference.batch.run`; returns its summary as a dict."""
    from humo.inference import batch
    from humo.registry import MODEL_RESOLVERS

    # Each task loads its own model (no pipeline is shared between Dask workers or threads).
    params = load_params(params_path, overrides)
    summary = batch.run(
        params.generate, params.limits, params.encoders, params.paths, requests=requests, out_dir=out_dir,
        model=model, resolvers=MODEL_RESOLVERS,
    )
    return {"requests": str(requests), "out_dir": str(out_dir), **summary.to_dict()}


@task(name="log-batch-to-mlflow", retries=2, retry_delay_seconds=2)
def log_batch(tracking: TrackingConfig, model: str, summaries: list[dict]) -> str:
    """One MLflow run for the batch: counts as metrics, the per-file summaries as a JSON artifact."""
    import mlflow

    from humo.tracking import mlflow_run

    totals = {key: sum(s[key] for s in summaries) for key in ("generated", "skipped", "failed")}
    with mlflow_run(tracking, "batch_inference", params={"model": model, "files": len(summaries)}) as run:
        mlflow.log_metrics({f"batch/{key}": float(value) for key, value in totals.items()})
        mlflow.log_dict({"files": summaries, **totals}, "batch_summary.json")
        return run.info.run_id


@flow(name="humo-batch-inference", flow_run_name="batch inference {requests}", log_prints=True)
def batch_inference(
    requests: Path | None = None,
    out_dir: Path | None = None,
    model: str | None = None,
    params_path: Path = DEFAULT_PARAMS_PATH,
    overrides: list[str] | None = None,
) -> dict:
    """Requests file or inbox (default ``orchestration.inbox``) -> videos and sidecars; returns the summary."""
    overrides = list(overrides or [])
    params = load_params(params_path, overrides)
    cfg = params.orchestration
    source = Path(requests) if requests is not None else cfg.inbox
    outbox = Path(out_dir) if out_dir is not None else cfg.outbox
    model = model or cfg.model
    files = list_request_files(source)
    futures = [generate_requests.submit(path, outbox / path.stem, model, params_path, overrides) for path in files]
    summaries = [future.result() for future in futures]
    run_id = log_batch(params.tracking, model, summaries)
    totals = {key: sum(s[key] for s in summaries) for key in ("generated", "skipped", "failed")}
    failed = [r for s in summaries for r in s["results"] if r["status"] == "failed"]
    return {**totals, "files": len(files), "mlflow_run_id": run_id, "failures": failed}


def with_cluster(cfg: OrchestrationConfig):
    """The flow bound to the Dask cluster that ``cfg`` names (a local cluster by default)."""
    return batch_inference.with_options(task_runner=dask_runner(cfg))


if __name__ == "__main__":
    settings = load_params(DEFAULT_PARAMS_PATH).orchestration
    print(with_cluster(settings)(requests=Path(sys.argv[1]) if len(sys.argv) > 1 else None))  # noqa: T201
