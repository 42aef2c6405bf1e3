"""The validate stage: the Great Expectations suite passes on a curated manifest and names planted violations."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from humo.cli import app
from humo.config import CurateConfig, PathsConfig, ValidateConfig
from humo.data import curate, validate
from humo.data.manifest import write_manifest


@pytest.fixture(scope="module")
def curated(synthtalk_small: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project folder whose artifacts/curate holds the manifest of the small SynthTalk."""
    root = tmp_path_factory.mktemp("validate_project")
    paths = PathsConfig(raw=synthtalk_small, artifacts=root / "artifacts", reports=root / "reports")
    summary = curate.run(CurateConfig(source_dir=synthtalk_small, workers=1), paths, project_root=root)
    assert summary.clips >= 10
    return root


def _project(curated: Path, tmp_path: Path, edit=None) -> PathsConfig:
    """A copy of the curated project with ``edit(manifest DataFrame) -> DataFrame`` applied to its manifest."""
    shutil.copytree(curated / "artifacts", tmp_path / "artifacts")
    manifest_path = tmp_path / "artifacts" / "curate" / "manifest.parquet"
    if edit is not None:
        frame = edit(pd.read_parquet(manifest_path))
        write_manifest(frame.to_dict("records"), manifest_path)
    return PathsConfig(artifacts=tmp_path / "artifacts", reports=tmp_path / "reports")


def test_curated_manifest_passes_and_reports_are_written(curated: Path, tmp_path: Path) -> None:
    paths = _project(curated, tmp_path)
    summary = validate.run(ValidateConfig(), CurateConfig(), paths, project_root=tmp_path)
    assert summary.success and summary.rows >= 10 and summary.evaluated >= 30
    report = json.loads((tmp_path / "reports" / "validate" / "validation.json").read_text())
    assert report["success"] and report["failed"] == [] and len(report["result"]["results"]) == summary.evaluated
    assert "passed" in (tmp_path / "reports" / "validate" / "validation.html").read_text()


def test_planted_violations_fail_naming_the_expectations(curated: Path, tmp_path: Path) -> None:
    def plant(frame: pd.DataFrame) -> pd.DataFrame:
        frame = pd.concat([frame, frame.iloc[[0]]], ignore_index=True)  # a duplicated clip id
        frame.loc[1, "sync_confidence"] = 7.5  # out of range
        frame.loc[2, "video"] = "artifacts/curate/clips/missing.mp4"  # no such file
        return frame

    paths = _project(curated, tmp_path, plant)
    with pytest.raises(validate.ValidationFailed) as failure:
        validate.run(ValidateConfig(), CurateConfig(), paths, project_root=tmp_path)
    message = str(failure.value)
    assert "expect_column_values_to_be_unique {'column': 'clip_id'}" in message
    assert "expect_column_values_to_be_between {'column': 'sync_confidence'" in message and "7.5" in message
    assert "'column': 'check_video_exists'" in message
    assert "expect_compound_columns_to_be_unique" in message  # the duplicated row repeats (source, start_frame)
    report = json.loads((tmp_path / "reports" / "validate" / "validation.json").read_text())
    assert not report["success"] and "expect_column_values_to_be_unique" in report["failed"]
    assert "FAIL" in (tmp_path / "reports" / "validate" / "validation.html").read_text()


def test_cli_exits_non_zero_on_a_failed_expectation(
    curated: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def plant(frame: pd.DataFrame) -> pd.DataFrame:
        frame.loc[0, "num_frames"] = 32
        return frame

    _project(curated, tmp_path, plant)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"paths": {"artifacts": "artifacts", "reports": "reports"}}))
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["validate", "--params", str(params), "validation.check_files=false"])
    assert result.exit_code == 2
    assert "expect_column_values_to_be_in_set {'column': 'num_frames'" in result.output
