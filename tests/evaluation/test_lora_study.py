"""The LoRA study's bookkeeping: cost figures from run.json (or, for an older full run, from the stage's rule),
the table, and the reuse of a variant only when it was trained with the same settings."""

from __future__ import annotations

from pathlib import Path

from humo.evaluation import lora_study
from humo.models.checkpoints import save_trained
from humo.models.presets import get_preset
from humo.models.transformer import HumoTransformer3D
from humo.training.system import trainable_parameter_names


def _full_folder(tmp_path: Path, run: dict) -> Path:
    cfg = get_preset("tiny", num_layers=2)
    state = HumoTransformer3D.from_preset(cfg).state_dict()
    return save_trained(tmp_path / "full", state, state, {"stage": 2, "preset": "tiny", "transformer": cfg.model_dump(mode="json"), "params": {}}, run)


def test_a_full_run_without_the_record_gets_its_figures_from_the_stage_rule(tmp_path) -> None:
    folder = _full_folder(tmp_path, {"stage": 2, "steps": 10, "seconds": 5.0, "val_history": [[0, 0.5], [10, 0.25]]})
    row = lora_study.training_row(folder)
    model = HumoTransformer3D.from_preset(get_preset("tiny", num_layers=2))
    names = trainable_parameter_names(model, 2)
    count = sum(dict(model.named_parameters())[n].numel() for n in names)
    assert row["trainable_parameters"] == count and row["optimizer_state_bytes"] == 8 * count + 4 * len(names)
    assert row["seconds_per_step"] == 0.5 and row["val_loss_last"] == 0.25
    recorded = {"trainable_parameters": 7, "trainable_share": 0.1, "optimizer_state_bytes": 60}
    folder = _full_folder(tmp_path, {"stage": 2, "steps": 4, "seconds": 2.0, "trainable": recorded})
    assert lora_study.training_row(folder)["optimizer_state_bytes"] == 60  # the measured figure wins


def test_the_table_puts_both_rows_and_the_noise_side_by_side() -> None:
    training = {"trainable_parameters": 1000, "trainable_share": 0.5, "optimizer_state_bytes": 8004,
                "seconds_per_step": 0.3, "seconds": 30.0, "val_loss_last": 0.2}
    figures = {name: 0.5 for name in lora_study.FIGURES}
    document = {
        "rows": {"full": {"training": training, "figures": figures, "seed_sd": {n: 0.01 for n in figures}},
                 "LoRA r4": {"training": {**training, "trainable_parameters": 10}, "figures": {**figures, "text_alignment": 0.25},
                             "seed_sd": {}}},
        "cases": 6, "seeds": 3, "mode": "TIA", "steps": 10, "adapter": "rank 4",
    }
    table = lora_study.table_markdown(document)
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    assert rows[1].startswith("| full | 1,000 | 50.0% | 0.01 MB") and rows[2].startswith("| LoRA r4 | 10 |")
    assert "0.250" in rows[2] and rows[3].startswith("| seed sd (full)") and "0.010" in rows[3]
