"""``humo pretrain``: a text-to-video backbone with its provenance, and stage 1 on it training self-attention only."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from humo.hashing import file_sha256
from humo.training import pretrain, train


def test_pretrain_writes_a_backbone_stage1_starts_from(train_params, shards, tmp_path) -> None:
    p = train_params
    cfg = p.pretrain.model_copy(update={"steps": 4, "out": tmp_path / "tiny-t2v"})
    record = pretrain.run(cfg, p.train, p.model, p.tracking, p.paths, command="humo pretrain pretrain.steps=4")
    weights = cfg.out / pretrain.WEIGHTS_FILE
    saved = json.loads((cfg.out / pretrain.PROVENANCE_FILE).read_text())
    assert (cfg.out / "config.json").is_file()  # a checkpoint folder of its own
    assert saved == json.loads(json.dumps(record, default=str))
    assert saved["weights_sha256"] == file_sha256(weights) and saved["steps"] == 4 and saved["seed"] == p.pretrain.seed
    assert saved["manifest_sha256"] == file_sha256(p.paths.manifest) and saved["shard_index_sha256"]
    assert saved["condition_dropout"]["image"] == 1.0 and saved["condition_dropout"]["audio"] == 1.0
    backbone = load_file(str(weights))

    # stage 1 on it, the paper's way: only self-attention moves; the rest is the backbone's, bit for bit
    model = p.model.model_copy(update={"checkpoint": weights})
    stage1 = p.train_stage1.model_copy(update={"trainable": "self_attention"})
    out = train.run(1, p.train, stage1, model, p.tracking, p.paths).out_dir
    trained = load_file(str(out / "model.safetensors"))
    moved = {key for key in backbone if not torch.equal(backbone[key], trained[key])}
    assert moved and all("self_attn." in key for key in moved)
    assert torch.equal(trained["blocks.0.ffn.0.weight"], backbone["blocks.0.ffn.0.weight"])

    # a backbone changed after its provenance was written is refused by name
    backbone["blocks.0.ffn.0.weight"] += 1.0
    save_file(backbone, str(weights))
    with pytest.raises(ValueError, match="changed after `humo pretrain`"):
        train.run(1, p.train, stage1, model, p.tracking, p.paths)


def test_full_fine_tune_scope_trains_every_parameter_in_stage2() -> None:
    from humo.models.transformer import HumoTransformer3D
    from humo.training.system import trainable_parameter_names

    model = HumoTransformer3D.from_preset("tiny", num_layers=2)
    every = {name for name, _ in model.named_parameters()}
    assert set(trainable_parameter_names(model, 2, "all")) == every
    assert set(trainable_parameter_names(model, 2)) < every
    stage1_all = set(trainable_parameter_names(model, 1, "all"))
    assert stage1_all == set(trainable_parameter_names(model, 1, "backbone")) and not any("audio" in n for n in stage1_all)
    with pytest.raises(ValueError, match="scope"):
        trainable_parameter_names(model, 1, "everything")
