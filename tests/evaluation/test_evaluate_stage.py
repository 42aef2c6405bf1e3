"""The eval_set and evaluate stages end to end on a tiny project: SynthTalk clips, a curated manifest in the
contract's layout, a randomly initialised tiny DiT saved by the training stage's own writer, an untrained tiny
VAE, and a real MLflow sqlite store holding the "training" run the evaluation logs to."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from humo.data import synthtalk
from humo.evaluation import evalset, evaluate

TINY_VAE_BASE_DIM = 8


def test_eval_set_holds_heldout_identities_and_is_deterministic(project, synth_dir: Path) -> None:
    first = evalset.run(project.evaluate, project.paths)
    text = (project.paths.artifacts / "eval_set" / evalset.CASES_FILE).read_text()
    second = evalset.run(project.evaluate, project.paths)
    assert (project.paths.artifacts / "eval_set" / evalset.CASES_FILE).read_text() == text
    assert [case.case_id for case in first] == [case.case_id for case in second]
    table = pd.read_parquet(synth_dir / synthtalk.CAPTIONS_NAME).set_index("video_id")
    assert len(first) == 2 and len({case.identity_id for case in first}) == 2
    for case in first:
        assert table.loc[case.clip_id, "split"] == "heldout"
        folder = project.paths.artifacts / "eval_set"
        assert all((folder / name).stat().st_size > 0 for name in (case.reference, case.audio, case.truth_video))
        assert len(case.face_boxes) == case.num_frames == len(case.mouth_boxes)


@pytest.mark.slow
def test_evaluate_stage_writes_metrics_gate_report_and_logs_to_the_training_run(project, tmp_path: Path) -> None:
    import mlflow

    from humo.models.encoders import build_tiny_vae
    from humo.models.transformer import HumoTransformer3D
    from humo.models.checkpoints import save_trained

    evalset.run(project.evaluate, project.paths)
    torch.manual_seed(0)
    model = HumoTransformer3D.from_preset("tiny", num_layers=2).eval()
    mlflow.set_tracking_uri(project.tracking.uri)
    mlflow.set_experiment(project.tracking.experiment)
    with mlflow.start_run() as training_run:
        pass
    state = model.state_dict()
    save_trained(
        project.paths.artifacts / "train_stage2", state, state,
        config={"stage": 2, "preset": "tiny", "transformer": model.humo_config.model_dump(mode="json"), "params": {}},
        run={"run_id": training_run.info.run_id, "checkpoint": "ema.safetensors"},
    )
    build_tiny_vae(TINY_VAE_BASE_DIM).save_pretrained(project.paths.artifacts / "train_vae" / "vae")

    decision = evaluate.run(
        project.evaluate, project.generate, project.limits, project.encoders, project.paths, project.tracking
    )

    out = project.paths.reports / "evaluate"
    document = json.loads((out / "metrics.json").read_text())
    assert set(document) >= {"ground_truth", "vae_round_trip", "TA", "TIA"}
    # the untrained test VAE cannot reproduce the clips: its round trip caps identity far below the truth
    assert document["vae_round_trip"]["identity_similarity"] < document["ground_truth"]["identity_similarity"] - 0.3
    truth = document["ground_truth"]
    assert truth["identity_similarity"] > 0.9 and truth["text_alignment"] == 1.0 and truth["sync_offset"] == 0
    # an untrained model draws noise: far below the ground truth on identity
    assert document["TIA"]["identity_similarity"] < truth["identity_similarity"] - 0.3
    assert document["identity_similarity"] == document["TIA"]["identity_similarity"]  # gate mode at the top
    gate = json.loads((out / "gate.json").read_text())
    assert gate["passed"] is decision.passed is False
    assert {check["metric"] for check in gate["checks"]} == set(project.evaluate.gate.minimum) | set(
        project.evaluate.gate.maximum
    )
    for name in ("report.md", "figures.png", "sync_curve.png", "strips.png", "plots/summary.csv", "plots/sync_curve.csv"):
        assert (out / name).stat().st_size > 0, name
    report = (out / "report.md").read_text()
    assert "FAILED" in report and "exact" in report and "TIA beats TA on identity" in report
    curve = pd.read_csv(out / "plots" / "sync_curve.csv")
    assert int(curve.loc[curve["ground_truth"].idxmin(), "offset"]) == 0
    assert np.isfinite(curve[["TA", "TIA"]].to_numpy()).all()

    logged = mlflow.tracking.MlflowClient().get_run(training_run.info.run_id)
    assert math.isclose(logged.data.metrics["eval.TIA.identity_similarity"], document["TIA"]["identity_similarity"])
    assert logged.data.tags["humo.gate"] == "failed"
