"""The curation flow on a local 2-worker Dask cluster writes the same manifest as the ``curate`` stage."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from flows.curation import with_cluster
from humo.config import OrchestrationConfig, SynthConfig, load_params
from humo.data import curate, synthtalk


@pytest.mark.slow
def test_fanned_out_curation_matches_the_stage(prefect_server, tmp_path: Path, params_path: Path) -> None:
    raw = tmp_path / "raw"
    synthtalk.run(SynthConfig(num_clips=6, num_train_identities=2, num_heldout_identities=1, heldout_fraction=0.34,
                              workers=1), raw)
    (raw / "video" / "st_000005.mp4").write_bytes(b"not a video")  # one bad source: a reject, not a dead flow

    def overrides(name: str) -> list[str]:
        return [f"paths.raw={raw}", f"paths.artifacts={tmp_path / name / 'artifacts'}",
                f"paths.reports={tmp_path / name / 'reports'}", "curate.workers=1"]

    summary = with_cluster(OrchestrationConfig(dask_workers=2))(params_path=params_path, overrides=overrides("flow"))
    assert (summary["sources"], summary["clips"], summary["rejected_sources"]) == (6, 5, 1)

    params = load_params(params_path, overrides("stage"))
    curate.run(params.curate, params.paths, project_root=params_path.parent)
    flow_rows = pd.read_parquet(tmp_path / "flow" / "artifacts" / "curate" / "manifest.parquet")
    stage_rows = pd.read_parquet(tmp_path / "stage" / "artifacts" / "curate" / "manifest.parquet")
    columns = ["clip_id", "source", "num_frames", "sync_offset", "speech_ratio", "split"]
    pd.testing.assert_frame_equal(flow_rows[columns], stage_rows[columns])
    rejects = [json.loads(line) for line in (tmp_path / "flow" / "artifacts" / "curate" / "rejects.jsonl").read_text().splitlines()]
    assert [(Path(r["source"]).name, r["clip"]) for r in rejects] == [("st_000005.mp4", None)]
