"""HumoSystem: which parameters train in each stage, the objective's pieces, EMA and the data order."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch import nn

from humo.models.transformer import HumoTransformer3D
from humo.training.datamodule import ShardDataModule, StepBatchSampler
from humo.training.system import (
    EmaWeights,
    HumoSystem,
    audio_share,
    continuation_batch,
    size_weighted_bce,
    trainable_parameter_names,
)

from shard_factory import make_shards


def _pretrained_like(seed: int = 0) -> HumoTransformer3D:
    """A tiny 2-layer DiT whose zero-initialised outputs were perturbed, as a pretrained backbone would be."""
    torch.manual_seed(seed)
    model = HumoTransformer3D.from_preset("tiny", num_layers=2, dim=64, ffn_dim=128, num_heads=2)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name == "head.head.weight" or name.endswith("audio_cross_attn.o.weight"):
                param.normal_(std=0.02)
    return model


def _fit(system: HumoSystem, folder, steps: int = 3) -> None:
    datamodule = ShardDataModule(folder, batch_size=4, num_steps=steps, val_batches=1)
    trainer = L.Trainer(
        accelerator="cpu", max_steps=steps, max_epochs=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0, use_distributed_sampler=False,
    )
    trainer.fit(system, datamodule=datamodule)


@pytest.mark.parametrize(
    ("stage", "trained", "frozen"),
    [
        (1, ("self_attn.",), ("cross_attn.", "ffn.", "audio_proj.", "head.", "text_embedding.", "patch_embedding.")),
        (2, ("self_attn.", "audio_proj.", "audio_cross_attn_wrapper.", "mask_predictor."), ("blocks.0.cross_attn.", "ffn.", "head.", "time_embedding.")),
    ],
)
def test_only_the_stage_parameters_change(tmp_path, stage, trained, frozen) -> None:
    folder = make_shards(tmp_path / "artifacts", num_train=8, num_heldout=0)
    model = _pretrained_like()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    system = HumoSystem(model, stage=stage, null_text_embeds=torch.zeros(8, 384), learning_rate=1e-2, ema_decay=0.5)
    _fit(system, folder)
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    expected = set(trainable_parameter_names(model, stage))
    assert changed, "no parameter changed: the test would prove nothing"
    assert changed <= expected, f"frozen parameters changed: {sorted(changed - expected)[:5]}"
    for fragment in trained:
        assert any(fragment in name for name in changed), f"no {fragment} parameter trained in stage {stage}"
    untouched = [n for n in before if any(f in n for f in frozen) and not any(t in n for t in trained)]
    assert untouched and all(torch.equal(model.get_parameter(n), before[n]) for n in untouched)
    # the EMA moved with the trained weights and lies between start and end
    name = next(n for n in sorted(changed) if "self_attn.q.weight" in n)
    ema = system.ema.state_dict()[name]
    assert not torch.equal(ema, before[name]) and not torch.equal(ema, model.get_parameter(name))


def test_backbone_scope_trains_everything_but_audio() -> None:
    model = HumoTransformer3D.from_preset("tiny", num_layers=2)
    names = trainable_parameter_names(model, 1, "backbone")
    assert any("ffn." in n for n in names) and any("cross_attn." in n for n in names)
    assert not any(("audio" in n or "mask_predictor" in n) for n in names)


def test_loss_is_on_video_frames_only(tmp_path) -> None:
    """Changing the prediction for the reference slot must not change the loss."""
    folder = make_shards(tmp_path / "artifacts", num_train=4, num_heldout=0)
    batch = torch.utils.data.default_collate(
        [ShardDataModule(folder, batch_size=4, num_steps=1).train_dataloader().dataset[i] for i in range(4)]
    )
    model = _pretrained_like()
    system = HumoSystem(model, stage=2, null_text_embeds=torch.zeros(8, 384))
    base = system._step(batch, torch.Generator().manual_seed(0), drop=False, shard=False)["flow_loss"]
    original = model.forward

    def forward_with_ref_noise(*args, **kwargs):
        out = original(*args, **kwargs)
        out.sample[:, :, -1:] += 100.0
        return out

    model.forward = forward_with_ref_noise
    again = system._step(batch, torch.Generator().manual_seed(0), drop=False, shard=False)["flow_loss"]
    assert torch.equal(base, again)


def test_continuation_step_holds_a_clean_prefix_and_leaves_it_out_of_the_loss(tmp_path) -> None:
    """A continuation batch starts one latent frame in, sees its first frames clean, and is not scored on them."""
    folder = make_shards(tmp_path / "artifacts", num_train=4, num_heldout=0)
    batch = torch.utils.data.default_collate(
        [ShardDataModule(folder, batch_size=4, num_steps=1).train_dataloader().dataset[i] for i in range(4)]
    )
    # 5 latent frames (the shards have 3): room for a prefix of 2 after the skipped first frame
    batch["video_latents"] = torch.cat([batch["video_latents"], batch["video_latents"][:, :, 1:].flip(2)], dim=2)
    for name in ("audio_features", "face_mask"):
        batch[name] = torch.cat([batch[name], batch[name][:, 1:].flip(1)], dim=1)
    cropped = continuation_batch(batch)
    frames = batch["video_latents"].shape[2]
    assert cropped["video_latents"].shape[2] == frames - 1 and cropped["audio_features"].shape[1] == frames - 1
    assert torch.equal(cropped["video_latents"], batch["video_latents"][:, :, 1:])
    assert torch.equal(cropped["face_mask"], batch["face_mask"][:, 1:])
    assert torch.equal(cropped["text_embeds"], batch["text_embeds"])

    model = _pretrained_like()
    system = HumoSystem(model, stage=2, null_text_embeds=torch.zeros(8, 384), continuation_share=1.0)
    seen: list[torch.Tensor] = []
    original = model.forward

    def forward_spoiling_the_prefix(*args, **kwargs):
        seen.append(kwargs["hidden_states"].detach().clone())
        out = original(*args, **kwargs)
        out.sample[:, :, :2] += 100.0  # a prefix of 2 must not be scored
        return out

    model.forward = forward_spoiling_the_prefix
    plain = system._step(batch, torch.Generator().manual_seed(0), drop=False, shard=False)
    held = system._step(batch, torch.Generator().manual_seed(0), drop=False, shard=False, prefix=2)
    assert plain["flow_loss"] > 100  # the spoiled frames count when there is no prefix ...
    assert held["flow_loss"] < 10  # ... and not with one
    assert seen[1].shape[2] == frames - 1 + 1  # the cropped clip + the reference slot
    assert torch.equal(seen[1][:, :, :2], batch["video_latents"][:, :, 1:3])  # the prefix is clean
    assert not torch.equal(seen[1][:, :, 2], batch["video_latents"][:, :, 3])  # the rest is noised

    # in training, a share of 1 makes every step a continuation with a prefix of 1..max drawn per step
    prefixes = {
        int(system._step(batch, torch.Generator().manual_seed(s), drop=True, shard=False)["continuation_prefix"])
        for s in range(8)
    }
    assert prefixes == {1, 2}
    too_long = HumoSystem(model, stage=2, null_text_embeds=torch.zeros(8, 384), continuation_share=1.0,
                          continuation_max_prefix=frames)
    with pytest.raises(ValueError, match="continuation_max_prefix"):
        too_long._step(batch, torch.Generator().manual_seed(0), drop=True, shard=False)


def test_audio_share_ramps_between_start_and_end() -> None:
    assert audio_share(0, 0.2, 0.5, 100) == pytest.approx(0.2)
    assert audio_share(50, 0.2, 0.5, 100) == pytest.approx(0.35)
    assert audio_share(1000, 0.2, 0.5, 100) == pytest.approx(0.5)
    assert audio_share(5, 0.2, 0.5, 0) == pytest.approx(0.5)


def test_size_weighted_bce_weights_small_faces_up() -> None:
    logits = torch.zeros(1, 2, 4, 4)  # p = 0.5 everywhere: plain BCE is log 2 for every cell
    small, large = torch.zeros(1, 2, 4, 4), torch.ones(1, 2, 4, 4)
    small[..., 0, 0] = 1
    assert size_weighted_bce(logits, small) == pytest.approx(16 * 0.6931, rel=1e-3)
    assert size_weighted_bce(logits, large) == pytest.approx(0.6931, rel=1e-3)
    assert size_weighted_bce(logits, torch.zeros(1, 2, 4, 4)) == 0  # no face: no weight, no NaN


def test_ema_update_and_round_trip() -> None:
    param = nn.Parameter(torch.zeros(3))
    ema = EmaWeights([("w", param)], decay=0.9)
    param.data.fill_(1.0)
    ema.update([("w", param)])
    assert torch.allclose(ema.shadow["w"], torch.full((3,), 0.1))
    other = EmaWeights([("w", torch.zeros(3))], decay=0.9)
    other.load_state_dict(ema.full_state_dict())
    assert torch.equal(other.shadow["w"], ema.shadow["w"])
    with pytest.raises(ValueError, match="decay"):
        EmaWeights([], decay=1.0)


def test_step_batches_are_global_and_resumable() -> None:
    single = StepBatchSampler(20, batch_size=4, num_steps=12, seed=3)
    halves = [StepBatchSampler(20, batch_size=2, num_steps=12, seed=3, rank=r, world_size=2) for r in (0, 1)]
    full = list(single)
    assert len(full) == 12 and all(len(b) == 4 for b in full)
    assert [a + b for a, b in zip(*[list(h) for h in halves])] == full  # two processes see the same global batch
    assert list(StepBatchSampler(20, 4, 12, seed=3, start_step=7)) == full[7:]  # a resume continues the order
    epoch = [i for b in full[:5] for i in b]
    assert sorted(epoch) == list(range(20))  # each data epoch is a permutation
    with pytest.raises(ValueError, match="fewer than one global batch"):
        StepBatchSampler(3, 4, 1, seed=0)
