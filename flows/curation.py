"""The curation flow: the ``curate`` stage with its sources fanned out over a Dask cluster.

    python -m flows.curation                     # paths.raw (or curate.source_dir) of params.yaml

For raw datasets too large for one machine's process pool: each source is one task on the cluster (a local
cluster by default, ``orchestration.dask_address`` for a real one); the listing and the final manifest,
rejects and report are written exactly as ``humo curate`` writes them (:mod:`humo.data.curate`). The output
folders must be shared by the workers (they are on a local cluster). Inside the DVC pipeline, curation runs
as the ``curate`` stage instead (see :mod:`flows.pipeline`).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from prefect import flow, task, unmapped

from flows.batch_inference import dask_runner
from humo.config import DEFAULT_PARAMS_PATH, CurateConfig, OrchestrationConfig, load_params
from humo.data import curate
from humo.data.sources import SourceItem


@task(name="curate-source", task_run_name="curate {item.source_id}", retries=0, tags=["curation"])
def curate_source(item: SourceItem, cfg: CurateConfig, out_dir: Path, project_root: Path) -> curate.SourceResult:
    """One source -> its clips and rejects (a crash inside becomes a ``crash`` reject, never a failed task)."""
    curate.init_worker()
    return curate.process_source(item, cfg, out_dir, project_root)


@flow(name="humo-curation", flow_run_name="curation {params_path}", log_prints=True)
def curation(params_path: Path = DEFAULT_PARAMS_PATH, overrides: list[str] | None = None) -> dict:
    """List sources -> curate each on the cluster -> manifest, rejects and report; returns the summary."""
    started = time.perf_counter()
    params = load_params(params_path, list(overrides or []))
    root = Path(params_path).resolve().parent
    items, out_dir = curate.prepare(params.curate, params.paths)
    futures = curate_source.map(items, cfg=unmapped(params.curate), out_dir=unmapped(out_dir), project_root=unmapped(root))
    summary = curate.finish(items, [future.result() for future in futures], params.paths, root, started)
    return summary.__dict__


def with_cluster(cfg: OrchestrationConfig):
    """The flow bound to the Dask cluster that ``cfg`` names (a local cluster by default)."""
    return curation.with_options(task_runner=dask_runner(cfg))


if __name__ == "__main__":
    settings = load_params(DEFAULT_PARAMS_PATH).orchestration
    print(with_cluster(settings)(overrides=sys.argv[1:]))  # noqa: T201
