"""HumoSystem: the LightningModule that trains the HuMo DiT on precomputed features.

The system owns the objective; the transformer (a plain ``nn.Module``) computes. One shared ``_step`` serves
training and validation:

1. take a batch of clean video latents ``x0`` and sample noise levels (logit-normal, shifted);
2. drop conditions independently for classifier-free guidance (text -> the negative-prompt embedding,
   image -> a zero reference slot, audio -> all-zero features, which still pass through the projection);
3. in stage 2, choose per sample between the subject-preservation task (audio null) and the audio-visual
   sync task, with the audio share rising from ``audio_share_start`` to ``audio_share_end``;
4. predict the velocity on ``[x_t ; reference]`` and regress ``noise - x0`` on the **video frames only**;
5. in stage 2, add the focus-by-predicting mask loss (size-weighted BCE against the latent-grid face mask).

Which parameters train is the paper's minimal-invasive recipe (humo-reference.md section 3): stage 1 the
self-attention layers only; stage 2 the self-attention layers and the audio modules (projection, audio
cross-attention, mask predictor). Everything else is frozen.

With ``lora`` the stage trains a LoRA adapter instead (:mod:`humo.models.lora`, peft layers injected here, before
FSDP wraps the blocks): only the adapter's parameters train, the whole base stays frozen.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from humo.constants import NUM_TRAIN_TIMESTEPS
from humo.diffusion.flow_matching import add_noise, sample_training_sigmas, velocity_target
from humo.models import lora as lora_lib

logger = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or inf; a checkpoint of the weights before that step was written."""

TRAINABLE_PATTERNS: dict[int, tuple[str, ...]] = {
    1: ("self_attn.",),
    2: ("self_attn.", "audio_proj.", "audio_cross_attn_wrapper.", "mask_predictor."),
}
"""Parameter-name fragments trained in each stage (paper section 3.3/3.4)."""
AUDIO_PATTERNS = ("audio_proj.", "audio_cross_attn_wrapper.", "mask_predictor.")
"""The audio-related modules stage 2 adds; frozen (and unused) in stage 1 whatever else trains."""
SCOPES = ("self_attention", "backbone", "all")
"""What a stage trains (:func:`trainable_parameter_names`)."""


def trainable_parameter_names(model: nn.Module, stage: int, scope: str = "self_attention") -> list[str]:
    """Names of the parameters that train in ``stage`` (1 or 2).

    Args:
        model: the transformer.
        stage: 1 or 2.
        scope: ``self_attention``, the paper's minimal-invasive recipe on a pretrained backbone (stage 1 the
            self-attention layers, stage 2 those and the audio modules); ``backbone`` (stage 1: every non-audio
            parameter, for a model without a pretrained backbone); ``all`` (every parameter the stage uses: the
            paper's "full fine-tune" ablation, stage 1 every non-audio parameter, stage 2 every parameter).
    """
    if stage not in TRAINABLE_PATTERNS:
        raise ValueError(f"stage must be 1 or 2, got {stage}")
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    names = [name for name, _ in model.named_parameters()]
    if scope == "all" and stage == 2:
        return names
    if scope in ("backbone", "all"):
        return [name for name in names if not any(p in name for p in AUDIO_PATTERNS)]
    patterns = TRAINABLE_PATTERNS[stage]
    return [name for name in names if any(p in name for p in patterns)]


def freeze_for_stage(model: nn.Module, stage: int, scope: str = "self_attention") -> list[str]:
    """Set ``requires_grad`` so that exactly the stage's parameters train; returns their names."""
    names = set(trainable_parameter_names(model, stage, scope))
    if not names:
        raise ValueError(f"no parameter of {type(model).__name__} matches stage {stage}'s patterns {TRAINABLE_PATTERNS[stage]}")
    for name, param in model.named_parameters():
        param.requires_grad_(name in names)
    return sorted(names)


def audio_share(step: int, start: float, end: float, ramp_steps: int) -> float:
    """Share of audio-visual-sync samples at ``step``: linear from ``start`` to ``end`` over ``ramp_steps``."""
    if ramp_steps <= 0:
        return end
    progress = min(max(step / ramp_steps, 0.0), 1.0)
    return start + (end - start) * progress


def size_weighted_bce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The paper's focus-by-predicting loss: ``(h w / sum M_gt) * BCE(M_pred, M_gt)`` per frame, averaged.

    Small faces get a large weight. Frames without any face pixel are left out (their weight is undefined).

    Args:
        logits: ``(B, F, h, w)`` mask logits.
        target: ``(B, F, h, w)`` binary face masks.
    """
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean(dim=(-2, -1))  # (B, F)
    area = target.mean(dim=(-2, -1))  # sum M / (h w)
    valid = area > 0
    if not valid.any():
        return logits.sum() * 0.0
    return (bce[valid] / area[valid]).mean()


def continuation_batch(batch: dict[str, torch.Tensor], skip: int = 1) -> dict[str, torch.Tensor]:
    """``batch`` as a later long-video window sees its clips: starting ``skip`` latent frames in.

    A clip's first latent frame is the causal VAE's single-frame latent; every window after the first starts on
    4-frame latents taken from the previous window, so continuation is trained on clips cropped past it.

    Args:
        batch: ``video_latents (B, 16, F, h, w)``, ``audio_features (B, F, ...)``, ``face_mask (B, F, h, w)``
            (per-frame entries are cropped; the rest is shared).

    Returns:
        The same entries with ``F - skip`` frames.
    """
    cropped = dict(batch)
    cropped["video_latents"] = batch["video_latents"][:, :, skip:]
    for name in ("audio_features", "face_mask"):
        if name in batch:
            cropped[name] = batch[name][:, skip:]
    return cropped


class EmaWeights:
    """Exponential moving average of a set of parameters (kept on the parameters' device and dtype)."""

    def __init__(self, named_params: Iterable[tuple[str, torch.Tensor]], decay: float) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"ema decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.shadow = {name: p.detach().clone() for name, p in named_params}

    @torch.no_grad()
    def update(self, named_params: Iterable[tuple[str, torch.Tensor]]) -> None:
        for name, param in named_params:
            if name in self.shadow:
                self.shadow[name].lerp_(param.detach(), 1.0 - self.decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The shadow weights as they are (DTensor shards under FSDP)."""
        return dict(self.shadow)

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """The shadow weights as whole CPU tensors (a collective under FSDP: every rank must call it)."""
        return {name: _full_tensor(value).detach().cpu().clone() for name, value in self.shadow.items()}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = set(self.shadow) - set(state)
        if missing:
            raise ValueError(f"EMA state lacks {sorted(missing)[:5]}... ({len(missing)} names)")
        for name, value in state.items():
            if name in self.shadow:
                target = self.shadow[name]
                if _is_dtensor(target) and not _is_dtensor(value):
                    from torch.distributed.tensor import distribute_tensor

                    value = distribute_tensor(value.to(target.device), target.device_mesh, target.placements)
                target.copy_(value)


def _is_dtensor(value: torch.Tensor) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(value, DTensor)


def _full_tensor(value: torch.Tensor) -> torch.Tensor:
    """A DTensor gathered to a whole tensor; a plain tensor as it is."""
    return value.full_tensor() if _is_dtensor(value) else value


class HumoSystem(L.LightningModule):
    """Trains a HuMo transformer in stage 1 (text + image) or stage 2 (text + image + audio).

    Args:
        transformer: the DiT (``HumoTransformer3D``), already initialised or loaded.
        stage: 1 (subject preservation) or 2 (audio-visual sync).
        null_text_embeds: ``(L, D)`` embedding of the negative prompt, used when text is dropped.
        learning_rate, weight_decay, warmup_steps: AdamW and a linear warm-up, then constant.
        condition_dropout: probabilities of dropping ``text``, ``image`` and ``audio`` per sample.
        audio_share_start, audio_share_end, audio_ramp_steps: stage-2 task mix (paper: 20% -> 50%).
        mask_loss_weight: weight of the focus-by-predicting loss (stage 2).
        continuation_share: stage 2, share of batches trained as long-video continuations
            (:func:`continuation_batch`, first ``1..continuation_max_prefix`` frames clean and out of the loss).
        continuation_max_prefix: most clean leading frames of a continuation batch (the long-video overlap).
        timestep_distribution, timestep_shift: how noise levels are sampled.
        ema_decay: decay of the EMA of the trainable weights.
        seed: seeds the system's own randomness (dropout, task mix, noise levels, noise) per global step.
        fsdp: shard every transformer block and the root with ``fully_shard`` in :meth:`configure_model`.
        gradient_checkpointing: recompute block activations in the backward pass.
        nan_checkpoint_dir: where the checkpoint written before a non-finite loss goes.
        scope: what the stage trains: ``self_attention`` (paper), ``backbone`` (stage 1, random init) or ``all``
            (the paper's full fine-tune); see :func:`trainable_parameter_names`.
        lora: train a LoRA adapter instead: ``{"rank", "alpha", "dropout", "target_modules"}`` (patterns of
            :func:`humo.models.lora.resolve_targets`; None = the stage's defaults); ``scope`` is then unused.
    """

    def __init__(
        self,
        transformer: nn.Module,
        stage: Literal[1, 2],
        null_text_embeds: torch.Tensor,
        learning_rate: float = 1e-4,
        weight_decay: float = 0.0,
        warmup_steps: int = 0,
        condition_dropout: dict[str, float] | None = None,
        audio_share_start: float = 0.2,
        audio_share_end: float = 0.5,
        audio_ramp_steps: int = 1000,
        mask_loss_weight: float = 0.1,
        continuation_share: float = 0.0,
        continuation_max_prefix: int = 2,
        timestep_distribution: Literal["logit_normal", "uniform"] = "logit_normal",
        timestep_shift: float = 1.0,
        ema_decay: float = 0.999,
        seed: int = 0,
        fsdp: bool = False,
        gradient_checkpointing: bool = False,
        nan_checkpoint_dir: str | None = None,
        scope: Literal["self_attention", "backbone", "all"] = "self_attention",
        lora: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["transformer", "null_text_embeds"])
        if getattr(getattr(transformer, "humo_config", None), "reference_mode", "temporal") != "temporal":
            # Deviation from upstream: the 17B channel layout needs Wan's zero-video latent for the condition
            # channels; our trainer implements the 1.7B temporal layout only.
            raise ValueError(
                "training supports reference_mode='temporal' presets (tiny, humo-1.7b); the channel layout of "
                "humo-17b needs the zero-video condition latent, which the trainer does not build"
            )
        self.transformer = transformer
        self.stage = stage
        self.register_buffer("null_text_embeds", null_text_embeds.float(), persistent=False)
        self.condition_dropout = {"text": 0.1, "image": 0.1, "audio": 0.1, **(condition_dropout or {})}
        if lora is None:
            self.trainable_names = freeze_for_stage(transformer, stage, scope)
            self.lora_targets: list[str] = []
        else:
            self.lora_targets = lora_lib.resolve_targets(
                transformer, lora.get("target_modules") or lora_lib.default_targets(stage)
            )
            names = set(lora_lib.inject_lora(transformer, self.lora_targets, lora["rank"], lora["alpha"], lora["dropout"]))
            for name, param in transformer.named_parameters():
                param.requires_grad_(name in names)
            self.trainable_names = sorted(names)
        if gradient_checkpointing:
            transformer.enable_gradient_checkpointing()
        self.ema: EmaWeights | None = None
        self._seed = seed

    # ------------------------------------------------------------------------------------------------
    # Lightning hooks, in Lightning's order
    # ------------------------------------------------------------------------------------------------

    def configure_model(self) -> None:
        """FSDP2: one wrapping unit per transformer block, then the root (design.md section 6)."""
        if not self.hparams.fsdp:
            return
        from torch.distributed.fsdp import FSDPModule, fully_shard

        if isinstance(self.transformer, FSDPModule):  # validate() then fit() call this hook twice
            return

        mesh = self.device_mesh["data_parallel"]
        for block in self.transformer.blocks:
            fully_shard(block, mesh=mesh)
        fully_shard(self.transformer, mesh=mesh)

    def on_fit_start(self) -> None:
        if self.ema is None:
            self.ema = EmaWeights(self._trainable_named_parameters(), self.hparams.ema_decay)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        losses = self._step(batch, generator=self._generator(), drop=True)
        batch_size = batch["video_latents"].shape[0]
        finite = bool(torch.isfinite(losses["loss"]))
        distributed = self.trainer.world_size > 1  # log the mean over the processes, i.e. over the global batch
        if distributed:
            finite = not self.trainer.strategy.reduce_boolean_decision(not finite, all=False)
        if not finite:
            self._stop_on_non_finite(losses)
        for name, value in losses.items():
            self.log(f"train/{name}", value, prog_bar=name == "loss", batch_size=batch_size, sync_dist=distributed)
        if self.stage == 2:
            self.log("train/audio_share", self._audio_share(), batch_size=batch_size)
        return losses["loss"]

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        # The EMA follows each optimizer step here, before any on_train_batch_end hook (where checkpoints are
        # written), so a checkpoint always holds the EMA of the weights it holds.
        super().optimizer_step(*args, **kwargs)
        if self.ema is not None:
            self.ema.update(self._trainable_named_parameters())

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        # Fixed generator per batch and no dropout: validation loss is comparable across evaluations.
        generator = torch.Generator(device="cpu").manual_seed(10_000 + batch_idx)
        losses = self._step(batch, generator=generator, drop=False, shard=False)
        if self.stage == 2 and self.hparams.continuation_share > 0:
            # the long-video case: how well the frames after a clean prefix of the most frames are predicted
            prefix = self.hparams.continuation_max_prefix
            generator = torch.Generator(device="cpu").manual_seed(10_000 + batch_idx)
            continued = self._step(batch, generator=generator, drop=False, shard=False, prefix=prefix)
            losses["flow_loss_continuation"] = continued["flow_loss"]
        for name, value in losses.items():
            self.log(f"val/{name}", value, prog_bar=name == "loss", batch_size=batch["video_latents"].shape[0], sync_dist=True)

    def configure_optimizers(self) -> dict[str, Any]:
        params = [p for p in self.transformer.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=self.hparams.learning_rate, weight_decay=self.hparams.weight_decay)
        warmup = max(self.hparams.warmup_steps, 0)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / (warmup + 1)))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.ema is not None:
            checkpoint["ema"] = self.ema.full_state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "ema" in checkpoint:
            if self.ema is None:
                self.ema = EmaWeights(self._trainable_named_parameters(), self.hparams.ema_decay)
            self.ema.load_state_dict(checkpoint["ema"])

    # ------------------------------------------------------------------------------------------------
    # The objective
    # ------------------------------------------------------------------------------------------------

    def _step(
        self,
        batch: dict[str, torch.Tensor],
        generator: torch.Generator,
        drop: bool = True,
        shard: bool = True,
        prefix: int | None = None,
    ) -> dict[str, torch.Tensor]:
        """Flow-matching loss (+ mask loss in stage 2) of one batch.

        Args:
            batch: ``video_latents (B, 16, F, h, w)``, ``ref_latents (B, 16, 1, h, w)``, ``text_embeds (B, L, D)``,
                ``audio_features (B, F, 8, G, C)``, ``face_mask (B, F, h, w)``.
            generator: CPU generator for every random draw of the step.
            drop: apply condition dropout and the stage-2 task mix (training); without it every condition is
                kept and stage 2 uses audio for all samples (validation).
            shard: draw randomness for the global batch and take this process's slice, so that N processes
                with B/N clips each draw exactly what one process with B clips draws.
            prefix: clean leading frames of a continuation step; None draws it in training (0 unless a stage-2
                batch is drawn as a continuation) and is 0 in validation.

        Returns:
            ``loss``, ``flow_loss``, per-task flow losses, and in stage 2 ``mask_loss`` and ``mask_accuracy``.
        """
        # 0. continuation (stage 2, long videos): the clips from their second latent frame on, the first
        #    `prefix` frames clean and out of the loss, as the sampler holds the frames of the previous window
        if prefix is None:
            prefix = self._draw_prefix(generator, batch["video_latents"].shape[2]) if drop else 0
        if prefix:
            batch = continuation_batch(batch)
        x0 = batch["video_latents"]  # (B, 16, F, h, w)
        batch_size, _, num_frames = x0.shape[:3]
        device = x0.device
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if shard and self._trainer else (0, 1)
        total = batch_size * world
        part = slice(rank * batch_size, (rank + 1) * batch_size)

        def draw(fn: Any, *shape: int) -> torch.Tensor:
            return fn(total, *shape, generator=generator)[part].to(device)

        # 1. noise levels (logit-normal + shift) and noisy latents x_t = (1 - s) x0 + s noise
        sigmas = sample_training_sigmas(
            total, generator, self.hparams.timestep_distribution, self.hparams.timestep_shift
        )[part].to(device)
        noise = draw(torch.randn, *x0.shape[1:]).to(x0.dtype)
        x_t = add_noise(x0, noise, sigmas)
        x_t[:, :, :prefix] = x0[:, :, :prefix]

        # 2. condition dropout (per sample, independent); 3. task mix: audio only for the sync task
        keep = {name: torch.ones(batch_size, dtype=torch.bool, device=device) for name in ("text", "image", "audio")}
        uniforms = {name: draw(torch.rand) for name in ("text", "image", "audio", "task")}
        if drop:
            for name in keep:
                keep[name] = uniforms[name] >= self.condition_dropout[name]
        if self.stage == 1:
            sync_task = torch.zeros(batch_size, dtype=torch.bool, device=device)
        else:
            share = self._audio_share() if drop else 1.0
            sync_task = uniforms["task"] < share
        keep["audio"] = keep["audio"] & sync_task

        text = torch.where(keep["text"][:, None, None], batch["text_embeds"], self.null_text_embeds.to(x0.dtype))
        ref = batch["ref_latents"] * keep["image"][:, None, None, None, None]
        audio = batch["audio_features"] * keep["audio"][:, None, None, None, None]
        num_ref = ref.shape[2]
        audio = torch.cat([audio, audio.new_zeros(batch_size, num_ref, *audio.shape[2:])], dim=1)

        # 4. velocity prediction on [x_t ; reference], loss on the video frames only (never the reference slot)
        output = self.transformer(
            hidden_states=torch.cat([x_t, ref], dim=2),
            timestep=sigmas * NUM_TRAIN_TIMESTEPS,
            encoder_hidden_states=text,
            audio_features=audio,
            num_ref_frames=num_ref,
            return_mask=self.stage == 2,
        )
        prediction = output.sample[:, :, prefix:num_frames]
        target = velocity_target(x0, noise)[:, :, prefix:]
        per_sample = (prediction.float() - target.float()).pow(2).flatten(1).mean(dim=1)  # (B,)
        flow_loss = per_sample.mean()
        losses = {"flow_loss": flow_loss, "loss": flow_loss}
        if drop and self.hparams.continuation_share > 0:
            losses["continuation_prefix"] = torch.tensor(float(prefix), device=device)
        if self.stage == 2 and drop:
            # per-task losses (NaN-free: a task absent from the batch contributes a zero-weight mean)
            for name, chosen in (("flow_loss_sync", sync_task), ("flow_loss_subject", ~sync_task)):
                weight = chosen.float()
                losses[name] = (per_sample * weight).sum() / weight.sum().clamp(min=1.0)

        # 5. focus-by-predicting (stage 2): size-weighted BCE against the latent-grid face mask
        if self.stage == 2 and output.mask_logits is not None:
            mask = batch["face_mask"].to(output.mask_logits.dtype)
            mask_loss = size_weighted_bce(output.mask_logits, mask)
            losses["mask_loss"] = mask_loss
            losses["mask_accuracy"] = ((output.mask_logits > 0) == (mask > 0.5)).float().mean()
            losses["loss"] = flow_loss + self.hparams.mask_loss_weight * mask_loss
        return losses

    def _stop_on_non_finite(self, losses: dict[str, torch.Tensor]) -> None:
        """Write a checkpoint of the weights before this step, then raise NonFiniteLossError naming the step."""
        step = self.global_step
        path = None
        if self.hparams.nan_checkpoint_dir:
            path = Path(self.hparams.nan_checkpoint_dir) / f"nonfinite-step{step}.ckpt"
            self.trainer.save_checkpoint(path)
        values = {name: float(value.detach()) for name, value in losses.items()}
        raise NonFiniteLossError(
            f"non-finite loss at global step {step} ({values}); checkpoint before the step: {path}. "
            "Lower the learning rate (train_stage*.learning_rate) or check the features"
        )

    # ------------------------------------------------------------------------------------------------
    # Helpers
    # ------------------------------------------------------------------------------------------------

    def _audio_share(self) -> float:
        return audio_share(
            self.global_step, self.hparams.audio_share_start, self.hparams.audio_share_end, self.hparams.audio_ramp_steps
        )

    def _draw_prefix(self, generator: torch.Generator, num_frames: int) -> int:
        """0, or with probability ``continuation_share`` (stage 2) a prefix of 1..``continuation_max_prefix``.

        Drawn from the step's generator only when continuation is on, so runs without it draw what they always
        drew; every process draws the same value (the generator is seeded by the global step).
        """
        share, most = self.hparams.continuation_share, self.hparams.continuation_max_prefix
        if self.stage != 2 or share <= 0 or most < 1:
            return 0
        chosen = torch.rand(1, generator=generator).item() < share
        prefix = int(torch.randint(1, most + 1, (1,), generator=generator).item())
        if not chosen:
            return 0
        if num_frames - 1 <= prefix:
            raise ValueError(
                f"train_stage2.continuation_max_prefix={most} leaves no frame to predict in clips of {num_frames} "
                "latent frames (one is skipped); lower it or use longer clips"
            )
        return prefix

    def _generator(self) -> torch.Generator:
        """A CPU generator seeded from (seed, global step): a resumed run draws the same randomness."""
        return torch.Generator(device="cpu").manual_seed(self._seed * 1_000_003 + self.global_step)

    def _trainable_named_parameters(self) -> Iterable[tuple[str, torch.Tensor]]:
        names = set(self.trainable_names)
        return ((n, p) for n, p in self.transformer.named_parameters() if n in names)

    def _gathered_state_dicts(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """``(raw, ema)`` state dicts of the module as it is (peft names with an adapter), whole, on the CPU."""
        raw = {}
        for name, value in self.transformer.state_dict().items():
            raw[name] = _full_tensor(value).detach().cpu().clone()
        ema = dict(raw)
        if self.ema is not None:
            ema.update(self.ema.full_state_dict())
        return raw, ema

    def full_state_dicts(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """``(raw, ema)`` whole transformer state dicts on the CPU with upstream's names; the EMA one has the EMA
        weights in place of the trained ones; with an adapter, the adapter is folded into the base. A collective
        under FSDP: every rank must call it."""
        raw, ema = self._gathered_state_dicts()
        if self.hparams.lora is None:
            return raw, ema
        alpha = self.hparams.lora["alpha"]
        return tuple(  # type: ignore[return-value]
            lora_lib.merge_into_state(lora_lib.base_state(state), [(lora_lib.lora_from_state(state, alpha), 1.0)])
            for state in (raw, ema)
        )

    def adapter_weights(self) -> tuple[lora_lib.LoraWeights, lora_lib.LoraWeights]:
        """``(raw, ema)`` of the trained LoRA adapter. A collective under FSDP: every rank must call it.

        Raises:
            ValueError: the system trains no adapter.
        """
        if self.hparams.lora is None:
            raise ValueError("this stage trains no adapter (train.adapter.kind=none)")
        alpha = self.hparams.lora["alpha"]
        raw, ema = self._gathered_state_dicts()
        return lora_lib.lora_from_state(raw, alpha), lora_lib.lora_from_state(ema, alpha)

    def base_state_dict(self) -> dict[str, torch.Tensor]:
        """The frozen base under the adapter, upstream names (whole, CPU; a collective under FSDP)."""
        return lora_lib.base_state(self._gathered_state_dicts()[0])
