"""LoRA stages: only the adapter trains, the base stays bit-identical, and the adapter folder loads, resumes, logs."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest
import torch
from safetensors.torch import load_file, save_file
from shard_factory import make_shards

from humo.models import lora
from humo.models.checkpoints import ADAPTER_FILE, ADAPTER_RAW_FILE, EMA_FILE, load_trained_transformer
from humo.models.presets import get_preset
from humo.models.transformer import HumoTransformer3D
from humo.training import train
from humo.training.system import HumoSystem


def _run(stage, p, **kwargs):
    stage_cfg = p.train_stage1 if stage == 1 else p.train_stage2
    return train.run(stage, p.train, stage_cfg, p.model, p.tracking, p.paths, **kwargs)


def _with_lora(p, **adapter):
    settings = {"kind": "lora", "rank": 4, **adapter}
    return p.model_copy(update={"train": p.train.model_copy(update={"adapter": p.train.adapter.model_copy(update=settings)})})


def test_stage2_lora_trains_only_the_adapter_on_a_bit_identical_base(train_params, shards) -> None:
    first = _run(1, train_params)
    lora_params = _with_lora(train_params, rank=4, alpha=8.0)
    second = _run(2, lora_params)
    folder = second.out_dir
    names = {f.name for f in folder.iterdir()}
    assert {ADAPTER_FILE, ADAPTER_RAW_FILE, "config.json", "run.json"} <= names
    assert "model.safetensors" not in names and EMA_FILE not in names  # no copy of the model
    config = json.loads((folder / "config.json").read_text())
    adapter = config["adapter"]
    assert adapter["rank"] == 4 and adapter["alpha"] == 8.0 and adapter["base"]["kind"] == "trained"
    # the stage-2 default targets: every block linear plus the audio path
    assert any("audio_cross_attn_wrapper.audio_cross_attn.q" in t for t in adapter["targets"])
    assert any(t.endswith("ffn.2") for t in adapter["targets"]) and "head.head" not in adapter["targets"]

    # the base under the adapter is stage 1's EMA model, bit for bit
    base = load_file(str(first.out_dir / EMA_FILE))
    unmerged = load_trained_transformer(folder, merge_adapter=False)
    assert lora.base_state(unmerged.state_dict()).keys() == base.keys()
    assert all(torch.equal(value, base[key]) for key, value in lora.base_state(unmerged.state_dict()).items())
    # the adapter moved (lora_B starts at zero) and its EMA differs from the raw one
    raw, ema = load_file(str(folder / ADAPTER_RAW_FILE)), load_file(str(folder / ADAPTER_FILE))
    ups = [key for key in raw if key.endswith("lora_B.weight")]
    assert ups and all(key.startswith(lora.FILE_PREFIX) for key in raw)
    assert any(raw[key].abs().max() > 0 for key in ups)
    assert any(not torch.equal(raw[key], ema[key]) for key in ups)

    # merged and beside-the-layers loading compute the same
    merged = load_trained_transformer(folder)
    torch.manual_seed(0)
    inputs = dict(
        hidden_states=torch.randn(1, 16, 3, 8, 8), timestep=torch.tensor([700.0]),
        encoder_hidden_states=torch.randn(1, 12, 384), audio_features=torch.randn(1, 3, 8, 1, 80), num_ref_frames=1,
    )
    with torch.no_grad():
        a, b = merged(**inputs).sample, unmerged(**inputs).sample
        plain = load_trained_transformer(first.out_dir)(**inputs).sample
        trained = load_trained_transformer(folder, use_ema=False)(**inputs).sample
    gap = (a - b).abs().max()
    assert gap < 1e-5
    assert (trained - plain).abs().max() > 10 * gap  # the (raw) adapter changes the output

    run = json.loads((folder / "run.json").read_text())
    share = run["trainable"]["trainable_share"]
    assert 0 < share < 1
    moments = 2 * 4 * run["trainable"]["trainable_parameters"]  # AdamW: two float32 moments, plus a step per tensor
    assert moments <= run["trainable"]["optimizer_state_bytes"] <= moments + 4 * 4 * len(adapter["targets"])
    client = mlflow.MlflowClient(train_params.tracking.uri)
    tracked = client.get_run(second.run_id)
    assert tracked.data.params["train.adapter.kind"] == "lora" and "val/loss" in tracked.data.metrics
    # a full run records no adapter section (its params are what they were before adapters existed)
    assert "train.adapter.kind" not in client.get_run(first.run_id).data.params


def test_lora_run_resumes_to_the_same_adapter(train_params, tmp_path, monkeypatch) -> None:
    make_shards(train_params.paths.artifacts)
    _run(1, train_params)
    lora_params = _with_lora(train_params)
    reference = load_file(str(_run(2, lora_params).out_dir / ADAPTER_FILE))

    other_paths = lora_params.paths.model_copy(update={"artifacts": tmp_path / "b"})
    other = lora_params.model_copy(update={"paths": other_paths})
    make_shards(other.paths.artifacts)
    _run(1, train_params.model_copy(update={"paths": other_paths}))
    original = HumoSystem.training_step

    def crash_at_step_4(self, batch, batch_idx):
        if self.global_step == 4:
            raise RuntimeError("simulated crash after the step-3 checkpoint")
        return original(self, batch, batch_idx)

    monkeypatch.setattr(HumoSystem, "training_step", crash_at_step_4)
    with pytest.raises(RuntimeError, match="simulated"):
        _run(2, other)
    monkeypatch.setattr(HumoSystem, "training_step", original)
    resumed = _run(2, other)
    assert [step for step, _ in resumed.val_history] == [6]
    got = load_file(str(resumed.out_dir / ADAPTER_FILE))
    assert got.keys() == reference.keys() and all(torch.equal(got[k], reference[k]) for k in reference)


def test_stage1_lora_needs_released_weights_and_trains_on_them(train_params, shards, tmp_path) -> None:
    with pytest.raises(ValueError, match="model.checkpoint"):
        _run(1, _with_lora(train_params))
    cfg = get_preset("tiny", **train_params.model.overrides)
    torch.manual_seed(3)
    released = HumoTransformer3D.from_preset(cfg)
    for param in released.parameters():  # a "pretrained" model: no zero head
        param.data.normal_(0, 0.05)
    path = tmp_path / "released.safetensors"
    save_file({k: v.contiguous() for k, v in released.state_dict().items()}, str(path))
    p = _with_lora(train_params, target_modules=("self_attn.q", "self_attn.v"))
    p = p.model_copy(update={"model": p.model.model_copy(update={"checkpoint": path})})
    result = _run(1, p)
    config = json.loads((result.out_dir / "config.json").read_text())
    assert config["adapter"]["base"]["kind"] == "released"
    assert sorted(config["adapter"]["targets"]) == sorted(f"blocks.{i}.self_attn.{m}" for i in range(2) for m in "qv")
    model = load_trained_transformer(result.out_dir, merge_adapter=False)
    base = lora.base_state(model.state_dict())
    assert all(torch.equal(base[k], v) for k, v in released.state_dict().items())
    # stage 2 (full fine-tuning) starts from the stage-1 adapter folded into the released weights
    second = _run(2, p.model_copy(update={"train": train_params.train}))
    assert (second.out_dir / EMA_FILE).is_file()


def test_an_adapter_whose_base_changed_is_refused(train_params, shards) -> None:
    _run(1, train_params)
    folder = _run(2, _with_lora(train_params)).out_dir
    stage1 = train_params.paths.stage1_dir
    state = load_file(str(stage1 / EMA_FILE))
    state["blocks.0.self_attn.q.weight"] += 1.0
    save_file(state, str(stage1 / EMA_FILE))
    with pytest.raises(ValueError, match="other weights"):
        load_trained_transformer(folder)


def test_the_system_exports_plain_state_dicts_with_an_adapter() -> None:
    cfg = get_preset("tiny", num_layers=2, dim=64, ffn_dim=128, num_heads=2)
    plain_keys = set(HumoTransformer3D.from_preset(cfg).state_dict())
    system = HumoSystem(
        HumoTransformer3D.from_preset(cfg), stage=2, null_text_embeds=torch.zeros(4, 384),
        lora={"rank": 2, "alpha": 2.0, "dropout": 0.0, "target_modules": None},
    )
    raw, ema = system.full_state_dicts()
    assert set(raw) == plain_keys == set(ema)  # what the sample-video callback loads into a plain model
    trainable = {n for n, p in system.transformer.named_parameters() if p.requires_grad}
    assert trainable == set(system.trainable_names) and all(".lora_" in n for n in trainable)
    with pytest.raises(lora.LoraFormatError, match="matches no linear"):
        HumoSystem(
            HumoTransformer3D.from_preset(cfg), stage=1, null_text_embeds=torch.zeros(4, 384),
            lora={"rank": 2, "alpha": 2.0, "dropout": 0.0, "target_modules": ["self_attn.qq"]},
        )


def test_a_variant_is_reused_only_with_the_same_settings(train_params, shards) -> None:
    from humo.evaluation.ablation import train_variant
    from humo.training import train

    train.run(1, train_params.train, train_params.train_stage1, train_params.model, train_params.tracking, train_params.paths)
    (train_params.paths.artifacts / "train_vae").mkdir(exist_ok=True)  # linked for sample videos (off here)
    args = (train_params.train, train_params.model, train_params.tracking, train_params.paths)
    first = train_variant(Path("v"), args[0], train_params.train_stage2, *args[1:])
    stamp = (first / "run.json").stat().st_mtime_ns
    assert train_variant(Path("v"), args[0], train_params.train_stage2, *args[1:]) == first
    assert (first / "run.json").stat().st_mtime_ns == stamp  # reused
    fewer = train_params.train_stage2.model_copy(update={"steps": 3})
    train_variant(Path("v"), args[0], fewer, *args[1:])
    assert json.loads((first / "run.json").read_text())["steps"] == 3  # other settings: trained again
