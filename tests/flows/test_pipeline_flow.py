"""The pipeline flow: its stage table matches dvc.yaml, and a failing stage fails its task with the output."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from flows._tasks import StageFailed, dvc_command, run_dvc_stage
from flows.pipeline import PIPELINE_STAGES

DVC = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "dvc"


def test_pipeline_runs_every_dvc_stage_after_its_dependencies(project_root: Path) -> None:
    stages = yaml.safe_load((project_root / "dvc.yaml").read_text())["stages"]
    assert set(PIPELINE_STAGES) == set(stages)
    position = {stage: index for index, stage in enumerate(PIPELINE_STAGES)}
    outs = {out if isinstance(out, str) else next(iter(out)): name for name, s in stages.items() for out in s.get("outs", [])}
    for name, stage in stages.items():
        for dep in stage.get("deps", []):
            producer = next((owner for out, owner in outs.items() if dep == out or dep.startswith(out + "/")), None)
            if producer is not None:
                assert position[producer] < position[name], f"{name} runs before {producer}, which makes {dep}"


def test_dvc_command_plain_and_with_overrides() -> None:
    assert dvc_command("curate", []) == ["dvc", "repro", "--single-item", "curate"]
    assert dvc_command("curate", ["curate.workers=1", "synth.seed=2"]) == [
        "dvc", "exp", "run", "--single-item", "--set-param", "curate.workers=1", "--set-param", "synth.seed=2", "curate",
    ]


@pytest.fixture()
def toy_repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A git + DVC repo with one stage that fails and one that works."""
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([str(DVC), "init", "-q"], cwd=tmp_path, check=True)
    (tmp_path / "dvc.yaml").write_text(
        "stages:\n"
        "  good:\n    cmd: echo fine > good.txt\n    outs: [good.txt]\n"
        "  bad:\n    cmd: echo 'manifest violates expect_column_values_to_be_unique' >&2; exit 3\n"
    )
    monkeypatch.setenv("PATH", f"{DVC.parent}:{__import__('os').environ['PATH']}")
    return tmp_path


def test_stage_task_runs_dvc_and_a_failure_names_the_stage_and_the_cause(toy_repo: Path) -> None:
    output = run_dvc_stage.fn("good", toy_repo, [])
    assert (toy_repo / "good.txt").read_text().strip() == "fine"
    assert "good" in output
    with pytest.raises(StageFailed, match=r"(?s)stage 'bad' failed.*expect_column_values_to_be_unique"):
        run_dvc_stage.fn("bad", toy_repo, [])
