"""The ``train_stage1`` and ``train_stage2`` stages: two-stage progressive training of the HuMo DiT.

``run(stage=1, ...)`` trains subject preservation (text + reference image; self-attention only) from a random
init (or released weights, ``model.checkpoint``); ``run(stage=2, ...)`` starts from stage 1's EMA weights and
trains audio-visual sync (self-attention + audio projection, audio cross-attention and mask predictor) with the
task mix rising from 20% to 50% audio samples. Both read only the precomputed shards (``artifacts/precompute``).

Outputs in ``artifacts/train_stage{N}`` (contract (3), :mod:`humo.models.checkpoints`): ``model.safetensors``,
``ema.safetensors``, ``config.json``, ``run.json`` and ``checkpoints/last.ckpt`` (resumable Lightning checkpoint:
weights, optimizer, scheduler, EMA, step). With ``train.adapter.kind: lora`` the stage trains a LoRA adapter on a
frozen base (stage 2: stage 1's EMA model; stage 1: ``model.checkpoint``) and writes an adapter folder
(``adapter.safetensors``, ``adapter_raw.safetensors``, the base recorded in ``config.json``) instead of the weights. Calling ``run`` again after a crash or a kill resumes from
``last.ckpt`` when the settings are the same; data order and randomness are functions of the step, so a resumed
run ends with the same weights as an uninterrupted one (bitwise on CPU in one process).

Tracking: one MLflow run per stage (nested under ``$HUMO_PARENT_RUN_ID`` when a flow sets it) with the resolved
config as params, per-task losses, learning rate, samples/s and the mask accuracy. Sample videos are not built
here: the caller passes their callback through ``run(..., callbacks=...)`` when :func:`samples_allowed` says so.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch

from humo.config import (
    ModelConfig,
    PathsConfig,
    TrackingConfig,
    TrainConfig,
    TrainStage1Config,
    TrainStage2Config,
)
from humo.features.shards import ShardIndex, file_sha256
from humo.models.checkpoints import (
    EMA_FILE,
    base_record,
    check_preset,
    is_adapter_folder,
    save_adapter,
    save_trained,
    weights_file,
)
from humo.models.presets import HumoDiTConfig, get_preset
from humo.training.datamodule import ShardDataModule
from humo.training.strategies import build_strategy
from humo.training.system import HumoSystem, NonFiniteLossError

logger = logging.getLogger(__name__)

RUN_ID_ENV = "HUMO_TRAIN_RUN_ID"
"""Set by rank 0 before the worker processes start, so they log into the same MLflow run."""
RESUME_CHECKPOINT = "last.ckpt"
FINGERPRINT_FILE = "fingerprint.json"
SAMPLING_FIELDS = ("sample_every_n_steps", "num_samples", "sample_steps")
"""``train`` fields that do not change the weights: left out of the resume fingerprint."""
INFERENCE_MODEL_FIELDS = ("adapters", "merge_adapters")
"""``model`` fields that only generation reads (LoRA files put on a loaded model)."""


@dataclass
class TrainResult:
    """What a training stage produced."""

    stage: int
    out_dir: Path
    run_id: str | None
    steps: int
    seconds: float
    metrics: dict[str, float] = field(default_factory=dict)
    val_history: list[tuple[int, float]] = field(default_factory=list)
    """(step, validation loss) for every evaluation, the first one before any training step."""


# =====================================================================================================
# Callbacks
# =====================================================================================================


class ThroughputAndHistory(L.Callback):
    """Logs samples/s over each logging interval and records the validation-loss history."""

    def __init__(self, batch_size: int, every_n_steps: int) -> None:
        self.batch_size = batch_size
        self.every = every_n_steps
        self.val_history: list[tuple[int, float]] = []
        self._last: tuple[float, int] | None = None

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        now, step = time.perf_counter(), trainer.global_step
        if self._last is None:
            self._last = (now, step)
        elif step - self._last[1] >= self.every:
            rate = (step - self._last[1]) * self.batch_size / (now - self._last[0])
            pl_module.log("train/samples_per_sec", rate, batch_size=self.batch_size)
            self._last = (now, step)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        value = trainer.callback_metrics.get("val/loss")
        if value is not None and not trainer.sanity_checking:
            self.val_history.append((trainer.global_step, float(value)))
            logger.info("step %d: validation loss %.4f", trainer.global_step, float(value))


# =====================================================================================================
# Checks before any step
# =====================================================================================================


def _check_features(example: dict[str, torch.Tensor], cfg: HumoDiTConfig, folder: Path) -> None:
    """Refuse shards whose shapes do not fit the model (another encoder or VAE than the preset expects)."""
    text_len, text_dim = example["text_embeds"].shape
    groups, channels = example["audio_features"].shape[-2:]
    channels_latent, _, height, width = example["video_latents"].shape
    problems = []
    if text_dim != cfg.text_dim or text_len > cfg.text_len:
        problems.append(f"text states ({text_len}, {text_dim}) vs model text_len>={text_len}, text_dim={cfg.text_dim}")
    if (groups, channels) != (cfg.audio_groups, cfg.audio_channels):
        problems.append(f"audio (groups, channels) ({groups}, {channels}) vs ({cfg.audio_groups}, {cfg.audio_channels})")
    if channels_latent != cfg.out_channels:
        problems.append(f"latent channels {channels_latent} vs out_channels {cfg.out_channels}")
    if height % cfg.patch_size[1] or width % cfg.patch_size[2]:
        problems.append(f"latent grid {height}x{width} not divisible by the patch {cfg.patch_size[1:]}")
    if problems:
        raise ValueError(
            f"the shards in {folder} do not fit the model preset: {'; '.join(problems)}. Re-run precompute with "
            "the encoders that match model.preset (or pick the preset that matches encoders)"
        )


def _fingerprint(data: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def _resume_path(ckpt_dir: Path, fingerprint: str, resume: bool) -> Path | None:
    """``last.ckpt`` when it was written with the same settings; otherwise clear the folder and start fresh."""
    last = ckpt_dir / RESUME_CHECKPOINT
    marker = ckpt_dir / FINGERPRINT_FILE
    if resume and last.is_file() and marker.is_file() and json.loads(marker.read_text()).get("fingerprint") == fingerprint:
        return last
    if ckpt_dir.exists():
        if last.is_file():
            logger.warning("%s was written with other settings (or resume is off): starting over", last)
        shutil.rmtree(ckpt_dir)
    ckpt_dir.mkdir(parents=True)
    marker.write_text(json.dumps({"fingerprint": fingerprint}))
    return None


def parameter_sharding(model: torch.nn.Module) -> dict[str, Any]:
    """How this process holds the parameters: counts of DTensor (FSDP-sharded) parameters and of elements held
    locally versus in the whole model (FSDP on N processes holds about 1/N of them)."""
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.tensor import DTensor

    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()  # the root stays unsharded after a forward without backward (the last validation)
    params = list(model.parameters())
    sharded = [p for p in params if isinstance(p, DTensor)]
    return {
        "num_parameters": len(params),
        "num_dtensor_parameters": len(sharded),
        "local_elements": sum(p.to_local().numel() if isinstance(p, DTensor) else p.numel() for p in params),
        "total_elements": sum(p.numel() for p in params),
        "local_bytes": sum(
            (p.to_local() if isinstance(p, DTensor) else p).numel() * p.element_size() for p in params
        ),
    }


def _rank() -> int:
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    return int(getattr(rank_zero_only, "rank", 0))


def samples_allowed(train: TrainConfig) -> bool:
    """Whether sample videos may be rendered: ``train.sample_every_n_steps > 0`` and one process.

    The caller (the CLI) builds the sample-video callback only then and passes it to :func:`run`; the reason for
    a skip is logged.
    """
    if train.sample_every_n_steps == 0:
        logger.debug("sample videos are off (train.sample_every_n_steps=0)")
        return False
    if train.strategy != "single":
        logger.info(
            "sample videos are skipped with train.strategy=%s (single-process training only)", train.strategy
        )
        return False
    return True


# =====================================================================================================
# The stage
# =====================================================================================================


@dataclass(frozen=True)
class _StageDirs:
    """The folders of one stage, resolved against the project root."""

    shards: Path
    manifest: Path
    out: Path
    init: Path
    """Stage 1's output: stage 2's start."""

    @property
    def checkpoints(self) -> Path:
        """The resumable Lightning checkpoints of the stage."""
        return self.out / "checkpoints"


@dataclass(frozen=True)
class _Inputs:
    """The checked inputs of a stage."""

    manifest_sha256: str
    datamodule: ShardDataModule
    transformer_cfg: HumoDiTConfig
    base: dict[str, Any] | None = None
    """With an adapter: the base it is trained on (:func:`humo.models.checkpoints.base_record`)."""


def run(
    stage: Literal[1, 2],
    train: TrainConfig,
    stage_cfg: TrainStage1Config | TrainStage2Config,
    model: ModelConfig,
    tracking: TrackingConfig,
    paths: PathsConfig,
    root: Path = Path("."),
    resume: bool = True,
    callbacks: Sequence[L.Callback] = (),
    out_dir: Path | None = None,
) -> TrainResult:
    """Train one stage on the precomputed shards and write its checkpoint folder.

    Args:
        stage: 1 (subject preservation) or 2 (audio-visual sync).
        train: settings both stages share (batch, strategy, precision, dropout, EMA, cadence).
        stage_cfg: ``train_stage1`` or ``train_stage2`` (steps, learning rate; stage 2: task mix, mask weight).
        model: the preset (and overrides; stage 1 may start from released weights ``model.checkpoint``).
        tracking: MLflow store and experiment.
        paths: ``features_dir`` and ``manifest`` (inputs), ``stage1_dir`` (stage 2's start) and the output
            ``stage_dir("train_stage{stage}")``.
        root: the project root (relative ``paths`` are resolved against it).
        resume: continue from ``checkpoints/last.ckpt`` when it was written with the same settings.
        callbacks: extra Lightning callbacks, e.g. the sample-video callback the CLI builds; appended to the
            Trainer's own (history, checkpoint, learning-rate monitor).
        out_dir: the checkpoint folder instead of ``paths.stage_dir("train_stage{stage}")`` (``humo pretrain``).

    Returns:
        A :class:`TrainResult` (output folder, MLflow run id, metrics, validation history).

    Raises:
        FileNotFoundError: no shards, no manifest, or (stage 2) no stage-1 checkpoint.
        ValueError: stale or empty shards, shards that do not fit the preset, a stage-1 checkpoint of another
            preset; all before any training step.
        NonFiniteLossError: the loss became NaN/inf (a checkpoint of the weights before that step is written).
    """
    # 1. the arguments and the stage's folders
    _check_stage(stage, stage_cfg)
    dirs = _stage_dirs(stage, paths, Path(root), out_dir)
    rank = _rank()

    # 2. everything that can be wrong with the inputs, before any step
    inputs = _check_inputs(stage, train, stage_cfg, model, dirs)

    # 3. the model, and the checkpoint to resume from (only one written with the same settings)
    transformer = _build_transformer(stage, train, stage_cfg, model, inputs.transformer_cfg, dirs.init)
    params_used = recorded_params(stage, train, stage_cfg, model)
    resume_from = _resume_from(stage, train, params_used, inputs.manifest_sha256, dirs, resume, rank)
    system = _build_system(stage, transformer, inputs.datamodule, train, stage_cfg, dirs.checkpoints)
    trainable = _trainable_summary(system)

    # 4. tracking: rank 0 opens the MLflow run; worker processes inherit its id through the environment
    context = _tracking_context(stage, tracking, params_used, inputs.transformer_cfg, resume_from is not None, rank)
    start = time.perf_counter()
    metrics: dict[str, float] = {}
    with context as active:
        run_id = _share_run_id(active)

        # 5. fit, then gather the weights (a collective under FSDP: every rank)
        fit = _fit(
            stage, system, inputs.datamodule, train, stage_cfg, tracking, run_id, dirs.checkpoints, resume_from,
            callbacks,
        )
        sharding = parameter_sharding(system.transformer)
        weights = system.adapter_weights() if train.adapter.kind == "lora" else system.full_state_dicts()
        seconds = time.perf_counter() - start
        trainable["optimizer_state_bytes"] = optimizer_state_bytes(fit["trainer"].optimizers[0])

        # 6. rank 0 writes the checkpoint folder and logs the run's summary
        if rank == 0:
            metrics = _write_outputs(
                stage, stage_cfg, model, dirs.out, inputs, params_used,
                run_id=run_id, seconds=seconds, fit=fit, sharding=sharding, weights=weights, tracked=active is not None,
                trainable=trainable,
            )
    return TrainResult(
        stage=stage,
        out_dir=dirs.out,
        run_id=run_id,
        steps=stage_cfg.steps,
        seconds=seconds,
        metrics=metrics,
        val_history=fit["history"].val_history,
    )


def _check_stage(stage: int, stage_cfg: TrainStage1Config | TrainStage2Config) -> None:
    """Refuse a stage other than 1 or 2, or the settings section of the other stage."""
    if stage not in (1, 2):
        raise ValueError(f"stage must be 1 or 2, got {stage}")
    expected_cfg = TrainStage1Config if stage == 1 else TrainStage2Config
    if not isinstance(stage_cfg, expected_cfg):
        raise TypeError(f"stage {stage} takes a {expected_cfg.__name__}, got {type(stage_cfg).__name__}")


def _stage_dirs(stage: int, paths: PathsConfig, root: Path, out_dir: Path | None = None) -> _StageDirs:
    """The stage's folders from :class:`~humo.config.PathsConfig`; a relative one is taken under ``root``."""

    def resolve(path: Path) -> Path:
        return path if path.is_absolute() else root / path

    return _StageDirs(
        shards=resolve(paths.features_dir),
        manifest=resolve(paths.manifest),
        out=resolve(out_dir or paths.stage_dir(f"train_stage{stage}")),
        init=resolve(paths.stage1_dir),
    )


def _check_inputs(
    stage: int,
    train: TrainConfig,
    stage_cfg: TrainStage1Config | TrainStage2Config,
    model: ModelConfig,
    dirs: _StageDirs,
) -> _Inputs:
    """Check manifest, shards (fresh, complete, fitting the preset) and (stage 2) the stage-1 checkpoint.

    Raises:
        FileNotFoundError: no manifest, no shards, or (stage 2) no stage-1 checkpoint.
        ValueError: stale, incomplete or empty shards, shards that do not fit the preset, a stage-1 checkpoint of
            another preset.
    """
    if not dirs.manifest.is_file():
        raise FileNotFoundError(f"manifest {dirs.manifest} not found: the shards cannot be checked; run curate first")
    ShardIndex.load(dirs.shards)  # a clear error when precompute never ran
    manifest_hash = file_sha256(dirs.manifest)
    datamodule = ShardDataModule(
        dirs.shards,
        batch_size=train.batch_size,
        num_steps=stage_cfg.steps,
        num_workers=train.num_workers,
        seed=train.seed,
        val_batches=train.val_batches,
        expected_provenance={"manifest_sha256": manifest_hash},
    )
    transformer_cfg = get_preset(model.preset, **model.overrides)
    _check_features(datamodule.example(), transformer_cfg, dirs.shards)
    if stage == 2:
        check_preset(dirs.init, model.preset, transformer_cfg)
    base = base_record(stage, dirs.init, model.checkpoint) if train.adapter.kind == "lora" else None
    return _Inputs(manifest_sha256=manifest_hash, datamodule=datamodule, transformer_cfg=transformer_cfg, base=base)


def _build_transformer(
    stage: int,
    train: TrainConfig,
    stage_cfg: TrainStage1Config | TrainStage2Config,
    model: ModelConfig,
    transformer_cfg: HumoDiTConfig,
    init_dir: Path,
) -> torch.nn.Module:
    """The seeded model: stage 1 from a random init (or released weights), stage 2 from stage 1's EMA weights."""
    L.seed_everything(train.seed, workers=True, verbose=False)
    from humo.models.transformer import HumoTransformer3D

    if stage == 1 and model.checkpoint is not None:
        from humo.models.checkpoints import check_provenance
        from humo.models.convert import load_humo_checkpoint

        record = check_provenance(Path(model.checkpoint))
        transformer = load_humo_checkpoint(model.checkpoint, transformer_cfg)
        if record is not None:
            logger.info(
                "stage 1 starts from %s (%s, %s steps, seed %s)", model.checkpoint, record["command"], record["steps"],
                record["seed"],
            )
    else:
        transformer = HumoTransformer3D.from_preset(transformer_cfg)
    if stage == 1 and model.checkpoint is None and stage_cfg.trainable == "self_attention":
        logger.warning(
            "stage 1 trains only self-attention but model.checkpoint is None: the frozen backbone is random and "
            "its output head starts at zero, so little can be learnt; set train_stage1.trainable=backbone"
        )
    if stage == 2 and is_adapter_folder(init_dir):  # stage 1 trained an adapter: start from it folded in
        from humo.models.checkpoints import load_trained_transformer

        transformer.load_state_dict(load_trained_transformer(init_dir).state_dict(), strict=True)
        logger.info("stage 2 starts from the stage-1 adapter in %s merged into its base", init_dir)
    elif stage == 2:
        from safetensors.torch import load_file

        transformer.load_state_dict(load_file(str(init_dir / EMA_FILE)), strict=True)
        logger.info("stage 2 starts from the stage-1 EMA weights in %s", init_dir)
    return transformer


def recorded_params(
    stage: int, train: TrainConfig, stage_cfg: TrainStage1Config | TrainStage2Config, model: ModelConfig
) -> dict[str, Any]:
    """The resolved settings of the run (MLflow params, ``config.json``, the resume fingerprint).

    ``train.adapter`` is left out for full fine-tuning, so such runs record what they recorded before adapters;
    ``model.adapters`` and ``model.merge_adapters`` are inference settings and never recorded here.
    """
    return {
        "train": train.model_dump(mode="json", exclude={"adapter"} if train.adapter.kind == "none" else None),
        f"train_stage{stage}": stage_cfg.model_dump(mode="json"),
        "model": model.model_dump(mode="json", exclude=set(INFERENCE_MODEL_FIELDS)),
    }


def _resume_from(
    stage: int,
    train: TrainConfig,
    params_used: dict[str, Any],
    manifest_hash: str,
    dirs: _StageDirs,
    resume: bool,
    rank: int,
) -> Path | None:
    """``last.ckpt`` when it was written with the same settings, else ``None`` (rank 0 then clears the folder).

    The fingerprint covers the settings that change the weights (not :data:`SAMPLING_FIELDS`), the manifest
    and (stage 2) the stage-1 EMA weights. Worker processes take ``last.ckpt`` when rank 0 kept it.
    """
    excluded = set(SAMPLING_FIELDS) | ({"adapter"} if train.adapter.kind == "none" else set())
    weight_params = {**params_used, "train": train.model_dump(mode="json", exclude=excluded)}
    init_hash = file_sha256(weights_file(dirs.init)) if stage == 2 else None
    fingerprint = _fingerprint({"params": weight_params, "manifest": manifest_hash, "init": init_hash})
    if rank == 0:
        return _resume_path(dirs.checkpoints, fingerprint, resume)
    last = dirs.checkpoints / RESUME_CHECKPOINT
    return last if resume and last.is_file() else None


def _build_system(
    stage: int,
    transformer: torch.nn.Module,
    datamodule: ShardDataModule,
    train: TrainConfig,
    stage_cfg: TrainStage1Config | TrainStage2Config,
    ckpt_dir: Path,
) -> HumoSystem:
    """The Lightning module of the stage (stage 2 adds the task mix and the mask loss)."""
    stage2 = stage_cfg if isinstance(stage_cfg, TrainStage2Config) else None
    return HumoSystem(
        transformer,
        stage=stage,
        null_text_embeds=datamodule.null_text_embeds(),
        learning_rate=stage_cfg.learning_rate,
        weight_decay=train.weight_decay,
        warmup_steps=train.warmup_steps,
        condition_dropout=train.condition_dropout.model_dump(),
        audio_share_start=stage2.audio_share_start if stage2 else 0.0,
        audio_share_end=stage2.audio_share_end if stage2 else 0.0,
        audio_ramp_steps=stage2.audio_ramp_steps if stage2 else 0,
        mask_loss_weight=stage2.mask_loss_weight if stage2 else 0.0,
        continuation_share=stage2.continuation_share if stage2 else 0.0,
        continuation_max_prefix=stage2.continuation_max_prefix if stage2 else 0,
        timestep_distribution=train.timestep_distribution,
        timestep_shift=train.timestep_shift,
        ema_decay=train.ema_decay,
        seed=train.seed,
        fsdp=train.strategy == "fsdp",
        gradient_checkpointing=train.gradient_checkpointing,
        nan_checkpoint_dir=str(ckpt_dir),
        scope=stage_cfg.trainable,
        lora=_lora_settings(train),
    )


def _lora_settings(train: TrainConfig) -> dict[str, Any] | None:
    """``train.adapter`` as the system takes it (None: full fine-tuning)."""
    adapter = train.adapter
    if adapter.kind == "none":
        return None
    return {
        "rank": adapter.rank,
        "alpha": adapter.effective_alpha,
        "dropout": adapter.dropout,
        "target_modules": list(adapter.target_modules) if adapter.target_modules else None,
    }


def _trainable_summary(system: HumoSystem) -> dict[str, Any]:
    """Trainable parameters of the stage and their share of the model (before any sharding)."""
    params = dict(system.transformer.named_parameters())
    trainable = sum(params[name].numel() for name in system.trainable_names)
    frozen = sum(p.numel() for name, p in params.items() if name not in set(system.trainable_names))
    return {
        "trainable_parameters": trainable,
        "trainable_share": trainable / max(trainable + frozen, 1),
        "lora_modules": len(system.lora_targets),
    }


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of the optimizer's state tensors held by this process (AdamW: two moments per trainable element)."""
    total = 0
    for state in optimizer.state.values():
        for value in state.values():
            if isinstance(value, torch.Tensor):
                local = value.to_local() if hasattr(value, "to_local") else value
                total += local.numel() * local.element_size()
    return total


def _tracking_context(
    stage: int,
    tracking: TrackingConfig,
    params_used: dict[str, Any],
    transformer_cfg: HumoDiTConfig,
    resumed: bool,
    rank: int,
) -> contextlib.AbstractContextManager[Any]:
    """Rank 0: the stage's MLflow run (resolved config as params); worker processes: a null context."""
    from humo.tracking import mlflow_run

    if rank != 0:
        return contextlib.nullcontext(None)
    return mlflow_run(
        tracking,
        f"train_stage{stage}",
        params={**params_used, "transformer": transformer_cfg.model_dump(mode="json")},
        tags={"humo.resumed": str(resumed)},
        log_system_metrics=True,
    )


def _share_run_id(active: Any) -> str | None:
    """The MLflow run id: rank 0 publishes its run's id in :data:`RUN_ID_ENV`, the workers read it from there."""
    if active is None:
        return os.environ.get(RUN_ID_ENV)
    run_id = active.info.run_id
    os.environ[RUN_ID_ENV] = run_id
    return run_id


def _fit(
    stage: int,
    system: HumoSystem,
    datamodule: ShardDataModule,
    train: TrainConfig,
    stage_cfg: TrainStage1Config | TrainStage2Config,
    tracking: TrackingConfig,
    run_id: str | None,
    ckpt_dir: Path,
    resume_from: Path | None,
    callbacks: Sequence[L.Callback] = (),
) -> dict[str, Any]:
    """Build the Trainer (own callbacks, then ``callbacks``) and fit; returns the trainer and the history callback."""
    from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
    from lightning.pytorch.loggers import MLFlowLogger

    mlflow_logger = MLFlowLogger(experiment_name=tracking.experiment, tracking_uri=tracking.uri, run_id=run_id)
    history = ThroughputAndHistory(train.batch_size, train.log_every_n_steps)
    checkpoint = ModelCheckpoint(
        dirpath=ckpt_dir,
        filename="step{step}",
        every_n_train_steps=train.checkpoint_every_n_steps,
        save_top_k=0,
        save_last=True,
        enable_version_counter=False,
    )
    trainer = L.Trainer(
        accelerator=train.accelerator,
        devices=train.devices,
        strategy=build_strategy(train.strategy, train.devices),
        precision=train.precision,
        max_steps=stage_cfg.steps,
        max_epochs=1,
        val_check_interval=min(train.val_every_n_steps, stage_cfg.steps),
        check_val_every_n_epoch=None,
        limit_val_batches=train.val_batches,
        num_sanity_val_steps=0,
        log_every_n_steps=train.log_every_n_steps,
        logger=mlflow_logger,
        callbacks=[history, checkpoint, LearningRateMonitor(logging_interval="step"), *callbacks],
        use_distributed_sampler=False,
        enable_model_summary=False,
        default_root_dir=ckpt_dir.parent,
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*ended before the epoch ended.*")
        warnings.filterwarnings("ignore", message=".*`max_epochs` was not set.*")
        if resume_from is None:
            trainer.validate(system, datamodule=datamodule, verbose=False)  # the loss before any step
        else:
            logger.info("stage %d resumes from %s", stage, resume_from)
        try:
            trainer.fit(system, datamodule=datamodule, ckpt_path=resume_from)
        except NonFiniteLossError:
            logger.error("stage %d stopped on a non-finite loss; see the checkpoint in %s", stage, ckpt_dir)
            raise
    return {"trainer": trainer, "history": history}


def _write_outputs(
    stage: int,
    stage_cfg: TrainStage1Config | TrainStage2Config,
    model: ModelConfig,
    out_dir: Path,
    inputs: _Inputs,
    params_used: dict[str, Any],
    *,
    run_id: str | None,
    seconds: float,
    fit: dict[str, Any],
    sharding: dict[str, Any],
    weights: tuple[Any, Any],
    tracked: bool,
    trainable: dict[str, Any],
) -> dict[str, float]:
    """Write the checkpoint folder (contract 3); inside an MLflow run also log ``run.json`` and the first and
    last validation loss. Returns the final scalar metrics."""
    metrics = {k: float(v) for k, v in fit["trainer"].callback_metrics.items() if v.numel() == 1}
    history = fit["history"].val_history
    config = {
        "stage": stage,
        "preset": model.preset,
        "transformer": inputs.transformer_cfg.model_dump(mode="json"),
        "params": params_used,
    }
    run_info = {
        "run_id": run_id,
        "checkpoint": str(out_dir),
        "stage": stage,
        "steps": stage_cfg.steps,
        "seconds": round(seconds, 2),
        "metrics": metrics,
        "val_history": history,
        "shards_manifest_sha256": inputs.manifest_sha256,
        "parameters": sharding,
        "trainable": trainable,
    }
    raw, ema = weights
    if inputs.base is not None:
        settings = params_used["train"]["adapter"]
        config["adapter"] = {
            **settings, "alpha": float(settings["alpha"] or settings["rank"]), "targets": sorted(raw.modules),
            "base": inputs.base,
        }
        save_adapter(out_dir, raw, ema, config, run_info)
    else:
        save_trained(out_dir, raw, ema, config, run_info)
    if tracked:
        import mlflow

        mlflow.log_dict(run_info, "run.json")
        if history:
            mlflow.log_metrics({"val/loss_first": history[0][1], "val/loss_last": history[-1][1]})
    logger.info(
        "stage %d: %d steps in %.1f s; validation loss %s; checkpoint %s",
        stage, stage_cfg.steps, seconds,
        " -> ".join(f"{v:.4f}" for _, v in history[:1] + history[-1:]), out_dir,
    )
    return metrics
