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
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from humo.constants import NUM_TRAIN_TIMESTEPS
from humo.diffusion.flow_matching import add_noise, sample_training_sigmas, velocity_target

logger = logging.getLogger(__name__)

TRAINABLE_PATTERNS: dict[int, tuple[str, ...]] = {
    1: ("self_attn.",),
    2: ("self_attn.", "audio_proj.", "audio_cross_attn_wrapper.", "mask_predictor."),
}
"""Parameter-name fragments trained in each stage (paper section 3.3/3.4)."""


def trainable_parameter_names(model: nn.Module, stage: int) -> list[str]:
    """Names of the parameters that train in ``stage`` (1 or 2)."""
    if stage not in TRAINABLE_PATTERNS:
        raise ValueError(f"stage must be 1 or 2, got {stage}")
    patterns = TRAINABLE_PATTERNS[stage]
    return [name for name, _ in model.named_parameters() if any(p in name for p in patterns)]


def freeze_for_stage(model: nn.Module, stage: int) -> list[str]:
    """Set ``requires_grad`` so that exactly the stage's parameters train; returns their names."""
    names = set(trainable_parameter_names(model, stage))
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
        return dict(self.shadow)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = set(self.shadow) - set(state)
        if missing:
            raise ValueError(f"EMA state lacks {sorted(missing)[:5]}... ({len(missing)} names)")
        for name, value in state.items():
            if name in self.shadow:
                self.shadow[name].copy_(value)


class HumoSystem(L.LightningModule):
    """Trains a HuMo transformer in stage 1 (text + image) or stage 2 (text + image + audio).

    Args:
        transformer: the DiT (``HumoTransformer3D``), already initialised or loaded.
        stage: 1 (subject preservation) or 2 (audio-visual sync).
        null_text_embeds: ``(L, D)`` embedding of the negative prompt, used when text is dropped.
        learning_rate, weight_decay, warmup_steps: AdamW and a linear warm-up.
        condition_dropout: probabilities of dropping ``text``, ``image`` and ``audio`` per sample.
        audio_share_start, audio_share_end, audio_ramp_steps: stage-2 task mix (paper: 20% -> 50%).
        mask_loss_weight: weight of the focus-by-predicting loss (stage 2).
        timestep_distribution, timestep_shift: how noise levels are sampled.
        ema_decay: decay of the EMA of the trainable weights.
        seed: seeds the system's own generator (dropout, task mix, noise levels, noise).
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
        timestep_distribution: Literal["logit_normal", "uniform"] = "logit_normal",
        timestep_shift: float = 1.0,
        ema_decay: float = 0.999,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["transformer", "null_text_embeds"])
        self.transformer = transformer
        self.stage = stage
        self.register_buffer("null_text_embeds", null_text_embeds.float(), persistent=False)
        self.condition_dropout = {"text": 0.1, "image": 0.1, "audio": 0.1, **(condition_dropout or {})}
        self.trainable_names = freeze_for_stage(transformer, stage)
        self.ema: EmaWeights | None = None
        self._seed = seed

    # ------------------------------------------------------------------------------------------------
    # Lightning hooks, in Lightning's order
    # ------------------------------------------------------------------------------------------------

    def on_fit_start(self) -> None:
        if self.ema is None:
            self.ema = EmaWeights(self._trainable_named_parameters(), self.hparams.ema_decay)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        losses = self._step(batch, generator=self._generator(batch_idx, "train"))
        batch_size = batch["video_latents"].shape[0]
        for name, value in losses.items():
            self.log(f"train/{name}", value, prog_bar=name == "loss", batch_size=batch_size)
        self.log("train/audio_share", self._audio_share(), batch_size=batch_size)
        return losses["loss"]

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.ema is not None:
            self.ema.update(self._trainable_named_parameters())

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        # Fixed generator per batch: validation loss is comparable across epochs.
        losses = self._step(batch, generator=torch.Generator(device="cpu").manual_seed(10_000 + batch_idx), drop=False)
        for name, value in losses.items():
            self.log(f"val/{name}", value, prog_bar=name == "loss", batch_size=batch["video_latents"].shape[0])

    def configure_optimizers(self) -> dict[str, Any]:
        params = [p for p in self.transformer.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=self.hparams.learning_rate, weight_decay=self.hparams.weight_decay)
        warmup = max(self.hparams.warmup_steps, 0)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / (warmup + 1)))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.ema is not None:
            checkpoint["ema"] = self.ema.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "ema" in checkpoint:
            self.ema = EmaWeights(self._trainable_named_parameters(), self.hparams.ema_decay)
            self.ema.load_state_dict(checkpoint["ema"])

    # ------------------------------------------------------------------------------------------------
    # The objective
    # ------------------------------------------------------------------------------------------------

    def _step(self, batch: dict[str, torch.Tensor], generator: torch.Generator, drop: bool = True) -> dict[str, torch.Tensor]:
        x0 = batch["video_latents"]  # (B, 16, F, h, w)
        batch_size, _, num_frames = x0.shape[:3]
        device = x0.device

        # 1. noise levels and noisy latents
        sigmas = sample_training_sigmas(
            batch_size, generator, self.hparams.timestep_distribution, self.hparams.timestep_shift
        ).to(device)
        noise = torch.randn(x0.shape, generator=generator).to(device=device, dtype=x0.dtype)
        x_t = add_noise(x0, noise, sigmas)

        # 2. condition dropout (per sample, independent)
        keep = {name: torch.ones(batch_size, dtype=torch.bool, device=device) for name in ("text", "image", "audio")}
        if drop:
            for name in keep:
                keep[name] = torch.rand(batch_size, generator=generator).to(device) >= self.condition_dropout[name]

        # 3. task mix: stage 1 never sees audio; stage 2 gives the sync task to a rising share of samples
        if self.stage == 1:
            keep["audio"] = torch.zeros_like(keep["audio"])
        else:
            share = self._audio_share() if drop else 1.0
            keep["audio"] &= torch.rand(batch_size, generator=generator).to(device) < share

        text = torch.where(keep["text"][:, None, None], batch["text_embeds"], self.null_text_embeds.to(x0.dtype))
        ref = batch["ref_latents"] * keep["image"][:, None, None, None, None]
        audio = batch["audio_features"] * keep["audio"][:, None, None, None, None]
        num_ref = ref.shape[2]
        audio = torch.cat([audio, audio.new_zeros(batch_size, num_ref, *audio.shape[2:])], dim=1)

        # 4. velocity prediction on [x_t ; reference], loss on the video frames only
        output = self.transformer(
            hidden_states=torch.cat([x_t, ref], dim=2),
            timestep=sigmas * NUM_TRAIN_TIMESTEPS,
            encoder_hidden_states=text,
            audio_features=audio,
            num_ref_frames=num_ref,
            return_mask=self.stage == 2,
        )
        prediction = output.sample[:, :, :num_frames]
        flow_loss = F.mse_loss(prediction.float(), velocity_target(x0, noise).float())
        losses = {"flow_loss": flow_loss, "loss": flow_loss}

        # 5. focus-by-predicting (stage 2)
        if self.stage == 2 and output.mask_logits is not None:
            mask = batch["face_mask"].to(output.mask_logits.dtype)
            mask_loss = size_weighted_bce(output.mask_logits, mask)
            losses["mask_loss"] = mask_loss
            losses["mask_accuracy"] = ((output.mask_logits > 0) == (mask > 0.5)).float().mean()
            losses["loss"] = flow_loss + self.hparams.mask_loss_weight * mask_loss
        if not torch.isfinite(losses["loss"]):
            raise FloatingPointError(
                f"non-finite loss {losses['loss'].item()} at global step {self.global_step} "
                f"(flow {flow_loss.item()}); lower the learning rate or check the features"
            )
        return losses

    # ------------------------------------------------------------------------------------------------
    # Helpers
    # ------------------------------------------------------------------------------------------------

    def _audio_share(self) -> float:
        return audio_share(
            self.global_step, self.hparams.audio_share_start, self.hparams.audio_share_end, self.hparams.audio_ramp_steps
        )

    def _generator(self, batch_idx: int, split: str) -> torch.Generator:
        """A generator seeded from (seed, global step): resumed runs draw the same randomness."""
        offset = 0 if split == "train" else 1
        return torch.Generator(device="cpu").manual_seed(self._seed * 1_000_003 + 2 * self.global_step + offset)

    def _trainable_named_parameters(self) -> Iterable[tuple[str, torch.Tensor]]:
        names = set(self.trainable_names)
        return ((n, p) for n, p in self.transformer.named_parameters() if n in names)

    def ema_state_dict(self) -> dict[str, torch.Tensor]:
        """The full transformer state with the EMA weights in place of the trained ones."""
        state = {k: v.detach().clone() for k, v in self.transformer.state_dict().items()}
        if self.ema is not None:
            state.update({k: v.detach().clone() for k, v in self.ema.state_dict().items()})
        return state

