"""The training stages end to end on small shards: outputs, tracking, resume, and every bad input."""

from __future__ import annotations

import json

import mlflow
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file
from shard_factory import make_shards

from humo.features.shards import ShardIndex
from humo.training import train
from humo.models.checkpoints import load_trained_transformer
from humo.training.system import HumoSystem, NonFiniteLossError


def _run(stage, p, **kwargs):
    stage_cfg = p.train_stage1 if stage == 1 else p.train_stage2
    return train.run(stage, p.train, stage_cfg, p.model, p.tracking, p.paths, **kwargs)


def test_two_stages_write_checkpoints_and_track_in_mlflow(train_params, shards) -> None:
    first = _run(1, train_params)
    second = _run(2, train_params)
    for result in (first, second):
        folder = result.out_dir
        assert {"model.safetensors", "ema.safetensors", "config.json", "run.json"} <= {f.name for f in folder.iterdir()}
        run = json.loads((folder / "run.json").read_text())
        assert run["run_id"] == result.run_id and run["checkpoint"] == str(folder)
        config = json.loads((folder / "config.json").read_text())
        assert config["preset"] == "tiny" and config["transformer"]["num_layers"] == 2 and config["transformer"]["dim"] == 64
        assert [step for step, _ in result.val_history] == [0, 3, 6]
        raw, ema = load_file(str(folder / "model.safetensors")), load_file(str(folder / "ema.safetensors"))
        assert any(not torch.equal(raw[k], ema[k]) for k in raw)  # the EMA is saved beside the raw weights
    # stage 2 starts from stage 1's EMA weights: its frozen text cross-attention is exactly stage 1's EMA
    key = "blocks.0.cross_attn.q.weight"
    assert torch.equal(load_file(str(second.out_dir / "model.safetensors"))[key], load_file(str(first.out_dir / "ema.safetensors"))[key])
    model = load_trained_transformer(second.out_dir)
    assert torch.equal(model.state_dict()[key], load_file(str(second.out_dir / "ema.safetensors"))[key])
    client = mlflow.MlflowClient(train_params.tracking.uri)
    run1, run2 = client.get_run(first.run_id), client.get_run(second.run_id)
    assert run1.data.params["train_stage1.steps"] == "6" and run1.data.params["transformer.num_layers"] == "2"
    assert {"train/loss", "val/loss", "lr-AdamW"} <= set(run1.data.metrics)
    assert {"train/flow_loss_sync", "train/flow_loss_subject", "train/mask_accuracy", "train/audio_share"} <= set(run2.data.metrics)
    assert run2.data.tags["humo.stage"] == "train_stage2"


def test_parent_run_from_the_environment(train_params, shards, monkeypatch) -> None:
    mlflow.set_tracking_uri(train_params.tracking.uri)
    mlflow.set_experiment(train_params.tracking.experiment)
    with mlflow.start_run(run_name="pipeline") as parent:
        parent_id = parent.info.run_id
    monkeypatch.setenv("HUMO_PARENT_RUN_ID", parent_id)
    result = _run(1, train_params.model_copy(update={"train_stage1": train_params.train_stage1.model_copy(update={"steps": 1})}))
    assert mlflow.MlflowClient(train_params.tracking.uri).get_run(result.run_id).data.tags["mlflow.parentRunId"] == parent_id


class Crash(RuntimeError):
    pass


def test_crashed_run_resumes_to_the_same_weights(train_params, tmp_path, monkeypatch) -> None:
    make_shards(train_params.paths.artifacts)
    reference = _run(1, train_params)
    want_raw = load_file(str(reference.out_dir / "model.safetensors"))
    want_ema = load_file(str(reference.out_dir / "ema.safetensors"))

    other = train_params.model_copy(update={"paths": train_params.paths.model_copy(update={"artifacts": tmp_path / "b"})})
    make_shards(other.paths.artifacts)
    original = HumoSystem.training_step

    def crash_at_step_4(self, batch, batch_idx):
        if self.global_step == 4:
            raise Crash("simulated crash after the step-3 checkpoint")
        return original(self, batch, batch_idx)

    monkeypatch.setattr(HumoSystem, "training_step", crash_at_step_4)
    with pytest.raises(Crash):
        _run(1, other)
    assert (other.paths.artifacts / "train_stage1" / "checkpoints" / "last.ckpt").is_file()
    assert not (other.paths.artifacts / "train_stage1" / "model.safetensors").exists()
    monkeypatch.setattr(HumoSystem, "training_step", original)
    resumed = _run(1, other)
    assert [step for step, _ in resumed.val_history] == [6]  # started at step 3, not 0
    got_raw = load_file(str(resumed.out_dir / "model.safetensors"))
    got_ema = load_file(str(resumed.out_dir / "ema.safetensors"))
    assert all(torch.equal(got_raw[k], want_raw[k]) for k in want_raw)
    assert all(torch.equal(got_ema[k], want_ema[k]) for k in want_ema)


def test_non_finite_loss_stops_with_the_step_and_a_checkpoint(train_params) -> None:
    folder = make_shards(train_params.paths.artifacts)
    index = ShardIndex.load(folder)
    # poison every clip's latents: the loss is NaN at the first step
    from safetensors.torch import save_file

    for shard in set(index.clips.values()):
        tensors = load_file(str(folder / shard))
        save_file({k: (v * float("nan") if k.endswith("video_latents") else v) for k, v in tensors.items()}, str(folder / shard))
    with pytest.raises(NonFiniteLossError, match="global step 0") as err:
        _run(1, train_params)
    ckpt = train_params.paths.artifacts / "train_stage1" / "checkpoints" / "nonfinite-step0.ckpt"
    assert ckpt.is_file() and str(ckpt) in str(err.value)


# ---------------------------------------------------------------------------------------------------
# Bad input: a clear error before any step
# ---------------------------------------------------------------------------------------------------


def test_missing_shards(train_params) -> None:
    (train_params.paths.artifacts / "curate").mkdir(parents=True)
    pd.DataFrame({"clip_id": ["a"]}).to_parquet(train_params.paths.artifacts / "curate" / "manifest.parquet")
    with pytest.raises(FileNotFoundError, match="humo precompute"):
        _run(1, train_params)


def test_stale_shards(train_params, shards) -> None:
    pd.DataFrame({"clip_id": ["other"]}).to_parquet(train_params.paths.artifacts / "curate" / "manifest.parquet")
    with pytest.raises(ValueError, match="stale shards .*manifest_sha256"):
        _run(1, train_params)


def test_incomplete_shards(train_params, shards) -> None:
    index = ShardIndex.load(shards)
    index.complete = False
    index.save(shards)
    with pytest.raises(ValueError, match="incomplete"):
        _run(1, train_params)


def test_empty_dataset_after_filtering(train_params) -> None:
    make_shards(train_params.paths.artifacts, num_train=0, num_heldout=4)
    with pytest.raises(ValueError, match="empty after filtering"):
        _run(1, train_params)


def test_stage2_without_stage1(train_params, shards) -> None:
    with pytest.raises(FileNotFoundError, match="train-stage1"):
        _run(2, train_params)


def test_stage2_from_another_preset(train_params, shards) -> None:
    _run(1, train_params.model_copy(update={"train_stage1": train_params.train_stage1.model_copy(update={"steps": 1})}))
    three_layers = train_params.model_copy(update={"model": train_params.model.model_copy(update={"overrides": {"num_layers": 3, "dim": 64, "ffn_dim": 128, "num_heads": 2}})})
    with pytest.raises(ValueError, match="num_layers"):
        _run(2, three_layers)


def test_shards_of_other_encoders(train_params, shards) -> None:
    wider = train_params.model_copy(update={"model": train_params.model.model_copy(update={"overrides": {"num_layers": 2, "dim": 64, "ffn_dim": 128, "num_heads": 2, "audio_channels": 128}})})
    with pytest.raises(ValueError, match="do not fit the model preset"):
        _run(1, wider)
