"""The ablation's statistics (two-level bootstrap, paired differences, verdicts) and a shrunk run end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from shard_factory import make_shards

from humo.evaluation import ablation

RESAMPLES, CONFIDENCE = 2000, 0.95


def _rows(rng: np.random.Generator, shift: float, seeds: int = 3, cases: int = 16, samples: int = 2):
    """Two rows sharing a large per-case component (some cases are hard for every variant) and noise."""
    case_effect = rng.normal(0.0, 0.3, size=(1, cases, 1))
    worse = 0.4 + case_effect + rng.normal(0.0, 0.02, size=(seeds, cases, samples))
    better = worse + shift + rng.normal(0.0, 0.02, size=(seeds, cases, samples))
    return better, worse


def test_paired_differences_see_what_separate_intervals_cannot() -> None:
    better, worse = _rows(np.random.default_rng(0), shift=0.05)
    a, b = (ablation.interval(v, RESAMPLES, CONFIDENCE) for v in (better, worse))
    assert a["low"] < b["high"]  # the rows' own intervals overlap: the case spread dominates them
    difference = ablation.interval(better - worse, RESAMPLES, CONFIDENCE)
    assert ablation.verdict(difference) == "holds" and difference["low"] > 0.03
    assert ablation.verdict(ablation.interval(worse - better, RESAMPLES, CONFIDENCE)) == "reversed"
    same, _ = _rows(np.random.default_rng(1), shift=0.0)
    noise = ablation.interval(same - _rows(np.random.default_rng(1), shift=0.0)[1], RESAMPLES, CONFIDENCE)
    assert ablation.verdict(noise) == "within noise"


def test_a_training_seed_effect_widens_the_interval_and_it_covers_the_mean() -> None:
    rng = np.random.default_rng(2)
    base = rng.normal(0.5, 0.05, size=(3, 16, 2))
    seed_effect = base + np.array([-0.1, 0.0, 0.1])[:, None, None]
    calm, spread = (ablation.interval(v, RESAMPLES, CONFIDENCE) for v in (base, seed_effect))
    assert spread["high"] - spread["low"] > 3 * (calm["high"] - calm["low"])
    for figure in (calm, spread):
        assert figure["low"] < figure["mean"] < figure["high"]
    constant = ablation.interval(np.full((3, 4, 2), 0.25), RESAMPLES, CONFIDENCE)
    assert constant == {"mean": 0.25, "low": 0.25, "high": 0.25}


def test_every_expectation_names_rows_of_the_table() -> None:
    keys = {row.key for row in ablation.ROWS}
    assert all(e.better in keys and e.worse in keys and e.figure in ablation.COLUMNS for e in ablation.EXPECTATIONS)
    assert set(ablation.PAPER_TABLE3) <= keys
    variants = {row.variant for row in ablation.ROWS}
    assert variants == {"full", "no_progressive", "no_mask", "full_fine_tune"}


@pytest.mark.slow
def test_shrunk_ablation_trains_every_variant_per_seed_and_judges_each_expectation(project, tmp_path: Path) -> None:
    from humo.models.encoders import build_tiny_vae
    from humo.training import pretrain

    artifacts = project.paths.artifacts
    make_shards(artifacts, keep_manifest=True)  # the shards record the project's curated manifest
    build_tiny_vae(8).save_pretrained(artifacts / "train_vae" / "vae")
    p = project.model_copy(update={
        "model": project.model.model_copy(update={"overrides": {"num_layers": 2, "dim": 64, "ffn_dim": 128,
                                                                "num_heads": 2}}),
        "train": project.train.model_copy(update={"batch_size": 4, "val_every_n_steps": 2, "val_batches": 1,
                                                  "warmup_steps": 0, "checkpoint_every_n_steps": 2}),
    })
    backbone = pretrain.run(p.pretrain.model_copy(update={"steps": 2, "out": tmp_path / "t2v"}), p.train, p.model,
                            p.tracking, p.paths)
    assert backbone["steps"] == 2
    p = p.model_copy(update={"model": p.model.model_copy(update={"checkpoint": tmp_path / "t2v" / "ema.safetensors"})})
    study = p.evaluate.ablation.model_copy(update={
        "training_seeds": (0, 1), "stage1_steps": 2, "stage2_steps": 2, "num_cases": 2, "sampling_seeds": 1,
        "bootstrap_resamples": 200,
    })
    evaluate = p.evaluate.model_copy(update={"ablation": study, "steps": 2})
    args = (evaluate, p.generate, p.limits, p.encoders, p.train, p.train_stage1, p.train_stage2, p.model, p.tracking,
            p.paths)

    document = ablation.run(*args)

    rows = document["rows"]
    assert list(rows) == [row.key for row in ablation.ROWS]
    for row in rows.values():
        for column in ablation.COLUMNS:
            assert row[column]["low"] <= row[column]["mean"] <= row[column]["high"]
    # a barely trained model draws near-noise, whose colours are all alike: the continuous sharpness tells the
    # rows apart (no reference; the guidance switch at step 2 of 2 for A -> B, never or always for A and B alone)
    sharpness = {key: row["sharpness"]["mean"] for key, row in rows.items()}
    assert len({sharpness[key] for key in ("full", "ta", "guidance_a", "guidance_b")}) == 4
    assert {e["statement"] for e in document["expectations"]} == {e.statement for e in ablation.EXPECTATIONS}
    assert {e["verdict"] for e in document["expectations"]} <= {"holds", "reversed", "within noise"}
    for seed in (0, 1):
        for variant in ("full", "no_progressive", "no_mask", "full_fine_tune"):
            assert (artifacts / "ablation" / f"seed{seed}" / variant / "train_stage2" / "ema.safetensors").is_file()
        # w/o progressive starts stage 2 from the backbone; w/o focus-by-predicting from the full row's stage 1
        backbone = (artifacts / "ablation" / f"seed{seed}" / "no_progressive" / "train_stage1").resolve()
        assert (backbone / "ema.safetensors").resolve() == tmp_path / "t2v" / "ema.safetensors"
        linked = (artifacts / "ablation" / f"seed{seed}" / "no_mask" / "train_stage1").resolve()
        assert linked == (artifacts / "ablation" / f"seed{seed}" / "full" / "train_stage1").resolve()
    fine = json.loads((artifacts / "ablation" / "seed0" / "full_fine_tune" / "train_stage2" / "run.json").read_text())
    full = json.loads((artifacts / "ablation" / "seed0" / "full" / "train_stage2" / "run.json").read_text())
    assert fine["trainable"]["trainable_parameters"] > full["trainable"]["trainable_parameters"]
    table = (p.paths.reports / "ablation" / "table.md").read_text()
    assert "w/o progressive training" in table and "ID-Cur" in table and "±" in table

    # a second run reuses every trained model and every scored row: the same table, no training
    stamp = (artifacts / "ablation" / "seed1" / "full" / "train_stage2" / "run.json").stat().st_mtime_ns
    again = ablation.run(*args)
    assert again["rows"] == document["rows"]
    assert (artifacts / "ablation" / "seed1" / "full" / "train_stage2" / "run.json").stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match="model.checkpoint"):
        ablation.run(*args[:7], p.model.model_copy(update={"checkpoint": None}), *args[8:])
