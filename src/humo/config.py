"""Typed configuration: ``params.yaml`` -> one validated :class:`Params` object.

There is exactly one reader of ``params.yaml``: :func:`load_params`. Every section of the file is a pydantic
model with ``extra="forbid"``, so a typo fails at load time with a message that names the key and the keys
that are allowed there. Stages receive only the sections they use (``synthtalk.run(cfg=params.synth, ...)``),
never the whole object, and deep code receives plain values.

Overrides use dotted keys, ``synth.num_clips=8``; the value is parsed as YAML (``8`` is an int, ``null`` is
None, ``[1, 2]`` a list) and then validated with the schema's types like any value from the file.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

DEFAULT_PARAMS_PATH = Path("params.yaml")


class ConfigError(ValueError):
    """params.yaml or an override is missing, malformed or invalid; the message says where and how to fix."""


class Section(BaseModel):
    """Base of every config section: unknown keys are rejected and loaded values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# =====================================================================================================
# Sections
# =====================================================================================================


class PathsConfig(Section):
    """Where the pipeline reads and writes, relative to the project root (the folder holding params.yaml)."""

    raw: Path = Path("data/raw")
    """The raw dataset in the HuMoSet layout, tracked by ``data.dvc``."""
    artifacts: Path = Path("artifacts")
    """Derived outputs of the DVC stages (one sub-folder per stage)."""
    reports: Path = Path("reports")
    """Human-readable reports, metrics and plots."""

    # The artifact layout, named once: every stage, the registry and the tests take their folders from here
    # (dvc.yaml spells the same folders as stage outputs; tests/test_dvc_deps.py keeps the two in step).

    def stage_dir(self, stage: str) -> Path:
        """``<artifacts>/<stage>``: the output folder of a DVC stage (``curate``, ``train_stage2``, ...)."""
        return self.artifacts / stage

    def report_dir(self, stage: str) -> Path:
        """``<reports>/<stage>``: the human-readable output of a stage."""
        return self.reports / stage

    @property
    def manifest(self) -> Path:
        """The curated manifest (contract 2), written by ``curate``."""
        return self.stage_dir("curate") / "manifest.parquet"

    @property
    def vae_dir(self) -> Path:
        """The trained tiny VAE (diffusers layout), written by ``train_vae``."""
        return self.stage_dir("train_vae") / "vae"

    @property
    def features_dir(self) -> Path:
        """Precomputed training shards and their index, written by ``precompute``."""
        return self.stage_dir("precompute")

    @property
    def stage1_dir(self) -> Path:
        """The stage-1 checkpoint (contract 3), written by ``train_stage1``."""
        return self.stage_dir("train_stage1")

    @property
    def candidate_dir(self) -> Path:
        """The stage-2 checkpoint: the candidate that ``evaluate`` scores and ``register`` registers."""
        return self.stage_dir("train_stage2")

    @property
    def eval_set_dir(self) -> Path:
        """The fixed held-out evaluation set, written by ``eval_set``."""
        return self.stage_dir("eval_set")


class SynthConfig(Section):
    """SynthTalk: the procedurally rendered talking-person dataset (design.md section 4)."""

    seed: int = 0
    """Seed of everything random in the dataset; the same seed gives byte-identical files."""
    num_clips: int = Field(512, ge=1)
    """Total clips over all identities."""
    num_train_identities: int = Field(64, ge=1)
    num_heldout_identities: int = Field(16, ge=0)
    heldout_fraction: float = Field(0.125, ge=0.0, lt=1.0)
    """Share of the clips given to held-out identities (evaluation only)."""
    num_frames: int = Field(33, ge=5)
    """Frames per clip; must be 4k+1 so the VAE maps it to whole latent frames."""
    fps: int = Field(25, ge=1)
    height: int = Field(64, ge=32)
    width: int = Field(64, ge=32)
    sample_rate: int = Field(16_000, ge=8_000)
    workers: int = Field(2, ge=1)
    """Processes rendering and encoding clips in parallel."""

    @model_validator(mode="after")
    def _check_shapes(self) -> SynthConfig:
        if (self.num_frames - 1) % 4:
            raise ValueError(f"num_frames={self.num_frames} must be of the form 4k+1 (e.g. 33 or 97)")
        if self.height % 16 or self.width % 16:
            raise ValueError(f"height x width = {self.height}x{self.width} must be multiples of 16 (VAE 8x, patch 2x)")
        if self.num_clips < self.num_train_identities + self.num_heldout_identities:
            raise ValueError(
                f"num_clips={self.num_clips} is smaller than the number of identities "
                f"({self.num_train_identities}+{self.num_heldout_identities}); every identity needs a clip"
            )
        return self


class LoggingConfig(Section):
    """How much the stages say."""

    level: str = Field("INFO", pattern="^(DEBUG|INFO|WARNING|ERROR)$")


def _require_path(kind: str, path: Path | None, real_kinds: tuple[str, ...], what: str) -> None:
    if kind in real_kinds and path is None:
        raise ValueError(f"kind={kind!r} loads real weights from a local folder: set path to the {what}")


class TrackingConfig(Section):
    """MLflow tracking and registry: a local sqlite store by default, any tracking server otherwise."""

    uri: str = "sqlite:///mlflow.db"
    """Tracking URI, e.g. ``sqlite:///mlflow.db``, ``http://mlflow.internal:5000``, ``postgresql://...``."""
    experiment: str = "humo"


class AdapterRef(Section):
    """One LoRA file put on the model at inference (``model.adapters``)."""

    path: Path
    """A LoRA ``.safetensors`` (humo's ``diffusion_model.*.lora_A/B`` layout, peft's, DiffSynth's, kohya's or
    diffusers' names; :func:`humo.models.lora.read_lora`) or a LoRA training output folder."""
    scale: float = 1.0
    """Strength: the update is ``scale * alpha / r * B A``."""


class ModelConfig(Section):
    """The HuMo DiT: a named preset (``humo.models.presets``) with optional field overrides."""

    preset: Literal["tiny", "humo-1.7b", "humo-17b"] = "tiny"
    overrides: dict[str, Any] = Field(default_factory=dict)
    """Preset fields to change, e.g. ``{num_layers: 2}``; names are checked against the preset's schema."""
    checkpoint: Path | None = None
    """Released HuMo weights (``HuMo-1.7B/ema.pth`` or the ``HuMo-17B`` shard folder); ``None`` = random init."""
    adapters: tuple[AdapterRef, ...] = ()
    """LoRA adapters put on the generating model (``humo generate``), in order, each with its strength."""
    merge_adapters: bool = False
    """Fold the adapters into the weights (no cost per forward; for serving) instead of running them beside the
    layers (peft LoRA layers; strengths stay separate)."""


class TextEncoderConfig(Section):
    """Text encoder: all-MiniLM-L6-v2 shipped in a wheel (embedded) or umT5-XXL from a local Wan2.1 folder."""

    kind: Literal["minilm", "umt5"] = "minilm"
    path: Path | None = None
    """For ``umt5``: the diffusers-format Wan2.1 folder (``text_encoder/``, ``tokenizer/``)."""
    max_length: int = Field(64, ge=1)
    """Tokens given to the DiT (padded/truncated); 512 for umT5 as upstream."""

    @model_validator(mode="after")
    def _check_path(self) -> TextEncoderConfig:
        _require_path(self.kind, self.path, real_kinds=("umt5",), what="Wan2.1 diffusers folder")
        return self


class AudioEncoderConfig(Section):
    """Audio features: librosa log-mel (embedded) or Whisper-large-v3's encoder from a local folder."""

    kind: Literal["logmel", "whisper"] = "logmel"
    path: Path | None = None
    """For ``whisper``: a local Whisper-large-v3 folder (config, weights, preprocessor)."""

    @model_validator(mode="after")
    def _check_path(self) -> AudioEncoderConfig:
        _require_path(self.kind, self.path, real_kinds=("whisper",), what="Whisper folder")
        return self


class VaeConfig(Section):
    """Video VAE: a tiny AutoencoderKLWan trained by the ``train_vae`` stage, or the Wan2.1 VAE."""

    kind: Literal["tiny", "wan"] = "tiny"
    path: Path | None = None
    """For ``wan``: the diffusers-format Wan2.1 folder (``vae/``); for ``tiny``: None = train_vae's output."""

    @model_validator(mode="after")
    def _check_path(self) -> VaeConfig:
        _require_path(self.kind, self.path, real_kinds=("wan",), what="Wan2.1 diffusers folder")
        return self


class EncodersConfig(Section):
    """The frozen encoders around the DiT."""

    text: TextEncoderConfig = TextEncoderConfig()
    audio: AudioEncoderConfig = AudioEncoderConfig()
    vae: VaeConfig = VaeConfig()


class TrainVaeConfig(Section):
    """Training of the embedded tiny VAE on SynthTalk (skipped when ``encoders.vae.kind`` is ``wan``)."""

    seed: int = 0
    steps: int = Field(300, ge=1)
    batch_size: int = Field(4, ge=1)
    learning_rate: float = Field(1e-3, gt=0)
    clip_frames: int = Field(5, ge=1)
    """Frames per training crop (4k+1)."""
    num_train_clips: int = Field(128, ge=1)
    num_val_clips: int = Field(16, ge=1)
    base_dim: int = Field(16, ge=4)
    """Base channel width of the tiny AutoencoderKLWan."""
    crop_size: int | None = Field(None, ge=8)
    """Side of the square spatial training crop (a multiple of 8; the VAE is convolutional); None = whole frames."""
    mouth_weight: float = Field(10.0, ge=0)
    """Extra L1 weight inside the ground-truth mouth boxes (0 = uniform): the lips carry the sync."""

    @model_validator(mode="after")
    def _check_frames(self) -> TrainVaeConfig:
        if (self.clip_frames - 1) % 4:
            raise ValueError(f"clip_frames={self.clip_frames} must be of the form 4k+1 (e.g. 5 or 9)")
        if self.crop_size is not None and self.crop_size % 8:
            raise ValueError(f"crop_size={self.crop_size} must be a multiple of 8 (the VAE's spatial stride)")
        return self


class CurateConfig(Section):
    """Curation: raw videos -> clean training clips (``humo curate``, issue 3). Thresholds are documented here."""

    source_format: Literal["humoset", "folder"] = "humoset"
    """Reader: ``humoset`` (video/, reference_image/, video_caption.parquet) or a plain ``folder`` of videos
    with optional sidecar captions ``name.txt`` and sidecar audio ``name.wav``/``name.mp3``."""
    source_dir: Path | None = None
    """Folder to read; ``None`` = ``paths.raw``."""
    limit: int | None = Field(None, ge=1)
    """Read only the first N sources (sorted); ``None`` = all."""
    num_frames: int = Field(33, ge=5)
    """Frames per clip (4k+1): 33 for the embedded preset, 97 for the real one."""
    max_clips_per_source: int | None = Field(None, ge=1)
    """Keep at most this many clips of one source (evenly spread over it); ``None`` = all."""
    fps: float = Field(25.0, gt=0)
    """Target frame rate every source is resampled to (by timestamps, without drift)."""
    workers: int = Field(2, ge=1)
    """Processes working on sources in parallel."""
    analysis_size: int = Field(256, ge=32)
    """Longest side of the frames decoded for analysis (faces, shots, sync, quality); clips keep full size."""
    shot_threshold: float = Field(0.5, gt=0, le=2)
    """Shot cut where the chi-square-like histogram distance between consecutive frames exceeds this."""
    face_detector: Literal["auto", "annotation", "opencv"] = "auto"
    """``annotation``: the dataset's ground-truth face boxes; ``opencv``: OpenCV's bundled Haar cascade;
    ``auto``: annotation boxes when the source has them, OpenCV otherwise."""
    face_every: int = Field(3, ge=1)
    """OpenCV detector: run the cascade on every n-th frame and interpolate between detections."""
    min_face_fraction: float = Field(0.5, ge=0, le=1)
    """Share of a clip's frames where a face must be detected (missed frames are interpolated)."""
    min_face_size: float = Field(0.15, gt=0, le=1)
    """Smallest median face box side as a fraction of the frame's shorter side."""
    vad: Literal["auto", "silero", "energy"] = "auto"
    """Voice-activity detector: silero-vad (model in its wheel), an RMS energy threshold, or ``auto``: energy
    for datasets flagged synthetic (SynthTalk: silero misses part of its synthetic syllables, see
    humo.data.speech), silero for everything else."""
    vad_threshold: float = Field(0.5, gt=0, lt=1)
    """silero speech probability above which a 32 ms chunk is speech."""
    energy_threshold_db: float = Field(-30.0, lt=0)
    """Energy VAD: a frame is speech when its RMS is within this many dB of the source's loudest frame."""
    silence_rms: float = Field(1e-3, gt=0)
    """A source whose loudest frame RMS is below this is silent and rejected."""
    min_speech_ratio: float = Field(0.2, ge=0, le=1)
    """Smallest share of a clip's frames with speech."""
    sync_scorer: Literal["auto", "motion", "mouth", "lips", "syncnet"] = "auto"
    """Sync estimator (``humo.data.sync``), run over each whole shot: ``motion`` (mouth motion against the
    audio envelope, exact on SynthTalk), ``mouth`` (model-free lip shape of a full-resolution face track
    against speech bands), ``lips`` (dlib's landmarks, ``humo[faces]``), ``syncnet`` (SyncNet v2 from
    ``syncnet_weights``); ``auto``: ``motion`` for synthetic datasets, ``lips`` for real video when dlib is
    installed, else ``mouth``."""
    syncnet_weights: Path | None = None
    """Local ``syncnet_v2.model`` for ``sync_scorer: syncnet`` (nothing is downloaded)."""
    sync_search: int = Field(10, ge=1)
    """Offsets ``-sync_search..sync_search`` frames are searched."""
    sync_max_offset: int = Field(1, ge=0)
    """Largest accepted ``|offset|`` in frames."""
    sync_min_confidence: float | None = Field(None, ge=0)
    """Smallest accepted sync confidence (median minus best distance); ``None`` = the scorer's own default
    (confidences of different scorers are on different scales)."""
    sync_crop_size: int = Field(160, ge=32)
    """Side of the face-track crops the ``mouth`` and ``lips`` scorers see (cut from full-size frames)."""
    min_resolution: int = Field(64, ge=8)
    """Smallest accepted shorter side of a source in pixels."""
    min_brightness: float = Field(20.0, ge=0, le=255)
    max_brightness: float = Field(235.0, ge=0, le=255)
    """Accepted range of the mean luma of a clip."""
    min_sharpness: float = Field(5.0, ge=0)
    """Smallest variance of the Laplacian of the face crop (resized to 64x64): lower is blurrier."""
    reference_min_distance: int = Field(50, ge=1)
    """Sources without a reference image: the face crop comes from another shot, or from a frame at least
    this many frames away from the clip."""
    reference_min_similarity: float | None = Field(0.9, ge=-1, le=1)
    """A reference cropped from another shot or moment is kept only when the cosine of dlib's face
    embeddings (``humo[faces]``) of it and of the clip's face reaches this (measured: the same person across
    a clip's halves 0.99, different people 0.78-0.83); ``None`` = no check. Without dlib it is not measured."""
    link_mode: Literal["reference", "hardlink", "copy"] = "reference"
    """Clips that need no cut or resample: point at the source (``reference``), hard-link or copy it."""
    captioner: Literal["none"] = "none"
    """Captioner for clips without a caption (``humo.data.captions.CAPTIONERS``); ``none`` = leave it empty."""
    folder_split: Literal["train", "heldout"] = "train"
    """Split given to sources that carry none (folder reader)."""

    @model_validator(mode="after")
    def _check(self) -> CurateConfig:
        if (self.num_frames - 1) % 4:
            raise ValueError(f"num_frames={self.num_frames} must be of the form 4k+1 (e.g. 33 or 97)")
        if self.sync_search + 3 > self.num_frames:
            raise ValueError(f"sync_search={self.sync_search} needs num_frames >= {self.sync_search + 3}")
        if self.sync_max_offset > self.sync_search:
            raise ValueError(f"sync_max_offset={self.sync_max_offset} exceeds sync_search={self.sync_search}")
        if self.min_brightness >= self.max_brightness:
            raise ValueError(f"min_brightness={self.min_brightness} must be below max_brightness={self.max_brightness}")
        return self


class ValidateConfig(Section):
    """Great Expectations checks of the curated manifest (``humo validate``)."""

    check_files: bool = True
    """Open every clip to check that it exists and has ``curate.num_frames`` frames at ``curate.fps``."""
    min_clips: int = Field(1, ge=0)
    """The manifest must hold at least this many clips."""
    min_sync_confidence: float = 0.0
    max_sync_confidence: float = 2.0
    """Range every ``sync_confidence`` must fall in (the distance is in [0, 2])."""


class PiecewiseScaleConfig(Section):
    """A guidance scale that is piecewise constant in the timestep (``humo.diffusion.guidance.PiecewiseScale``).

    ``values[k]`` applies while the timestep is above ``switch_points[k]``; ``values[-1]`` below the last one.
    """

    values: tuple[float, ...] = (1.0,)
    switch_points: tuple[float, ...] = ()
    """Strictly decreasing timesteps in (0, 1000); one fewer than ``values``."""

    @model_validator(mode="after")
    def _check(self) -> PiecewiseScaleConfig:
        if len(self.values) != len(self.switch_points) + 1:
            raise ValueError(
                f"values={list(self.values)} needs exactly one more entry than switch_points={list(self.switch_points)}"
            )
        if any(a <= b for a, b in zip(self.switch_points, self.switch_points[1:])):
            raise ValueError(f"switch_points={list(self.switch_points)} must be strictly decreasing (e.g. [980, 500])")
        return self


SPEED_BUILTINS: tuple[str, ...] = ("off", "config")
"""Request ``speed`` values that every configuration has: no caching nor truncation, and the configured ones."""


class TruncateConfig(Section):
    """Guidance truncation (humo.diffusion.guidance.Truncation): from ``from_step`` on, the ``drop`` branches are no
    longer evaluated; each is folded out of the guidance chain (the classic case: drop the unconditional ``∅``)."""

    from_step: int | None = Field(None, ge=1)
    """First solver step (0-based) without the dropped branches; None: off (exact). It must come after the
    17B form's switch (step 5 of 50)."""
    drop: tuple[str, ...] = ("I", "∅")
    """Branch names (``∅``, ``I``, ``T``, ``TI``, ``TA``); names a mode's chain does not have are ignored. The
    default drops the text negatives: late steps keep the audio guidance only."""

    @model_validator(mode="after")
    def _check(self) -> TruncateConfig:
        for name in self.drop:
            if name not in ("∅", "null") and (not name or set(name.upper()) - set("TIA")):
                raise ValueError(f"truncate.drop has {name!r}; branch names use the letters T, I, A, or '∅'")
        return self

    @property
    def enabled(self) -> bool:
        return self.from_step is not None and bool(self.drop)


class StepCacheConfig(Section):
    """Step caching (humo.diffusion.step_cache): a branch reuses its last block residual while the calibrated
    criterion stays under ``threshold``; fitted on the model by ``humo calibrate-cache``."""

    criterion: Literal["off", "teacache", "magcache"] = "off"
    """``off`` (exact), ``teacache`` (rescaled modulation change) or ``magcache`` (residual-norm ratio)."""

    @field_validator("criterion", mode="before")
    @classmethod
    def _yaml_off(cls, value: Any) -> Any:
        return "off" if value is False else value  # YAML 1.1 reads a bare `off` as false
    threshold: float = Field(0.1, gt=0)
    """Accumulated estimated change (teacache) or ratio error (magcache) under which a step reuses."""
    max_skips: int = Field(3, ge=1)
    """Reuses in a row at most, per branch."""
    retain_fraction: float = Field(0.2, ge=0, le=1)
    """The first share of the steps always computes (the layout is decided there)."""

    @property
    def enabled(self) -> bool:
        return self.criterion != "off"


class SpeedPresetConfig(Section):
    """A named bundle of step caching and guidance truncation that a request may pick (request field ``speed``)."""

    cache: StepCacheConfig = StepCacheConfig()
    truncate: TruncateConfig = TruncateConfig()


class GuidanceConfig(Section):
    """Multi-condition classifier-free guidance (humo-reference.md 2.2); see ``humo.diffusion.guidance``."""

    form: Literal["auto", "humo-17b", "humo-1.7b", "custom"] = "auto"
    """``auto``: the form of the model that is loaded (HuMo-1.7B layout: ``humo-1.7b``; HuMo-17B and ``tiny``,
    which was trained and evaluated with it: ``humo-17b``); ``humo-17b``: 3 branches, time-adaptive switch;
    ``humo-1.7b``: 4 static branches; ``custom``: Eq. (4) nesting with the piecewise scales of ``custom``."""
    scale_text: float | None = Field(None, ge=0)
    """Upstream ``scale_t``; None = the form's upstream value (17B 5.0, 1.7B 7.0: see UPSTREAM_SCALES)."""
    scale_image: float | None = Field(None, ge=0)
    """Upstream ``scale_i`` (1.7B only; the 17B form merges image into the text term); None = 4.0."""
    scale_audio: float | None = Field(None, ge=0)
    """Upstream ``scale_a``; None = the form's upstream value (17B 5.5, 1.7B 7.5)."""
    switch_timestep: float = Field(980.0, ge=0, le=1000)
    """17B form: above it text-only guidance (image kept in the negative), below it joint text+image."""
    late_text_offset: float = 2.0
    """17B form: after the switch the text+image scale is ``scale_text - late_text_offset``."""
    custom: dict[Literal["text", "image", "audio"], PiecewiseScaleConfig] = Field(default_factory=dict)
    """``form: custom`` only: a piecewise scale per condition, e.g. ``text: {values: [7, 4], switch_points: [980]}``."""
    truncate: TruncateConfig = TruncateConfig()
    """Drop branches in late steps (off by default)."""


class LongVideoConfig(Section):
    """Videos longer than one window: sliding windows over the latent sequence (humo.inference.long_video)."""

    enabled: bool = False
    """Generate audio longer than ``generate.max_frames`` in windows of ``max_frames`` (else cut it there)."""
    overlap_latent_frames: int = Field(2, ge=1)
    """Latent frames each window shares with the previous one (held to the previous window's clean latents)."""
    max_total_frames: int = Field(1001, ge=1)
    """Hard cap on a request's frames over all windows (4k+1); longer audio is cut with a warning."""
    prefix_hold: Literal["clean", "noised"] = "clean"
    """How the shared frames are held: clean at every step, as the reference slot is (smoother seams on the tiny
    model, trained with ``train_stage2.continuation_share`` or not), or noised to the current level
    (replacement inpainting)."""
    seam_strength: float = Field(0.7, ge=0.0, lt=1.0)
    """Noise level each seam's surroundings are re-noised to and denoised again from (0 = no seam pass); costs
    the solver steps below that level once per seam (about a third of a window's at shift 5)."""
    seam_radius: int = Field(3, ge=1)
    """Latent frames on each side of a seam over which the second pass is blended in."""


class ParallelConfig(Section):
    """One video on several processes (launch with ``torchrun --nproc-per-node N -m humo generate ...``)."""

    sequence_parallel: int = Field(1, ge=1)
    """Processes that split each video's tokens by latent frame (must equal the launched world size)."""
    shard_dit: bool = False
    """Shard the DiT's weights over the same processes (FSDP2 ``fully_shard`` per block and the root)."""
    shard_text: bool = False
    """Shard the text encoder's layers too (real UMT5 only; the embedded MiniLM is too small to matter)."""
    timeout_s: float = Field(1800.0, gt=0)
    """How long a process waits in a collective for the others before the request fails."""


class MemoryConfig(Section):
    """Memory levers for one device; each is measured in the README (error, bytes, step time)."""

    load_in_place: bool = True
    """Build the DiT on the meta device and fill it from the file (peak near the weights' size, not twice)."""
    weight_storage: Literal["native", "fp8", "int8"] = "native"
    """``fp8``: float8_e4m3 block linears with a per-tensor scale (ComfyUI's ``scaled_fp8``), upcast per layer;
    ``int8``: torchao int8 weight-only quantization (needs torchao); ``native``: the compute dtype."""
    compute_dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """dtype of activations, norms, biases, embeddings, modulation and the audio projection."""
    offload_blocks: int = Field(0, ge=0)
    """Keep this many DiT blocks (the last ones) on the host and move each to the device just before it runs."""
    prefetch: bool = True
    """With offload: start moving the next offloaded block while the current one computes (CUDA streams)."""
    max_branch_batch: int | None = Field(None, ge=1)
    """Guidance branches per DiT forward; None: all active branches in one batched forward (fastest), 1: one at
    a time as upstream runs them (a third of the activations for TIA)."""
    text_encoder_on_host: bool = False
    """Keep the text encoder on the CPU (its token states are moved to the device): frees ~11 GB of umT5."""


class GenerateConfig(Section):
    """Sampling (``humo generate``, serving, evaluation, samples): solver, guidance, sizes, lengths. A request's mode
    is its own or follows its inputs (T, plus I with an image, plus A with audio)."""

    solver: Literal["unipc", "euler"] = "unipc"
    """``unipc``: diffusers UniPC configured as upstream's flow UniPC (order 2, bh2); ``euler``: flow Euler."""
    steps: int = Field(50, ge=1, le=1000)
    """Denoising steps (upstream 50; its README suggests 30-40 for speed)."""
    shift: float = Field(5.0, gt=0)
    """Time shift of the sampling schedule ``s * sigma / (1 + (s - 1) * sigma)`` (upstream 5.0)."""
    seed: int = 666666
    """Default seed of a request (upstream's default)."""
    height: int = Field(64, ge=16, le=4096)
    width: int = Field(64, ge=16, le=4096)
    max_frames: int = Field(97, ge=1)
    """Frames of one generation window (4k+1): audio decides the length, capped here (upstream trained at 97)."""
    long_video: LongVideoConfig = LongVideoConfig()
    negative_prompt: str | None = None
    """The null text; None = the text encoder's default (``humo.models.encoders.NEGATIVE_PROMPT``)."""
    guidance: GuidanceConfig = GuidanceConfig()
    crf: int = Field(18, ge=0, le=51)
    """x264 quality of written videos (lower is better)."""
    progress_bar: bool = True
    """Show a tqdm bar over the denoising steps."""
    parallel: ParallelConfig = ParallelConfig()
    memory: MemoryConfig = MemoryConfig()
    cache: StepCacheConfig = StepCacheConfig()
    cache_calibration: Path = Path("artifacts/calibrate_cache/calibration.json")
    """The step-cache fit of the model (``humo calibrate-cache`` writes it; a registered model carries its own)."""
    speed_presets: dict[str, SpeedPresetConfig] = Field(default_factory=dict)
    """Named cache + truncation settings a request may pick with ``speed``; ``off`` (neither) and ``config``
    (``cache`` and ``guidance.truncate`` above) are built in."""

    @model_validator(mode="after")
    def _check(self) -> GenerateConfig:
        reserved = sorted(set(self.speed_presets) & set(SPEED_BUILTINS))
        if reserved:
            raise ValueError(f"speed_presets may not be named {reserved}: those names are built in")
        if self.height % 16 or self.width % 16:
            raise ValueError(
                f"height x width = {self.height}x{self.width} must be multiples of 16 (VAE 8x, patch 2x), e.g. 64x64"
            )
        if self.parallel.shard_dit and (self.memory.weight_storage != "native" or self.memory.offload_blocks):
            raise ValueError(
                "generate.parallel.shard_dit shards the weights over processes; it does not combine with "
                f"memory.weight_storage={self.memory.weight_storage!r} or memory.offload_blocks="
                f"{self.memory.offload_blocks} (use one or the other)"
            )
        caps = (("max_frames", self.max_frames), ("long_video.max_total_frames", self.long_video.max_total_frames))
        for name, value in caps:
            if (value - 1) % 4:
                raise ValueError(f"{name}={value} must be of the form 4k+1 (e.g. 97)")
        if self.long_video.overlap_latent_frames >= (self.max_frames - 1) // 4 + 1:
            raise ValueError(
                f"long_video.overlap_latent_frames={self.long_video.overlap_latent_frames} must be smaller than the "
                f"{(self.max_frames - 1) // 4 + 1} latent frames of a max_frames={self.max_frames} window"
            )
        return self


class CalibrateCacheConfig(Section):
    """The ``calibrate_cache`` stage: fit the step cache on the trained model (humo.inference.calibrate)."""

    num_clips: int = Field(4, ge=1)
    """Training clips of the curated manifest to generate (each in every mode below), never evaluation cases."""
    modes: tuple[Literal["T", "TI", "TA", "TIA"], ...] = ("TA", "TI", "TIA")
    """Modes to run: together they must cover every branch a served mode uses."""
    seed: int = 0


class PrecomputeConfig(Section):
    """The ``precompute`` stage: encode every manifest clip once into safetensors shards (humo.features)."""

    shard_size: int = Field(64, ge=1)
    """Clips per shard file; a killed run resumes at the first shard not written."""
    batch_size: int = Field(16, ge=1)
    """Clips given to the encoders at once."""


class ConditionDropoutConfig(Section):
    """Per-sample probabilities of dropping each condition (classifier-free guidance needs every null branch)."""

    text: float = Field(0.1, ge=0.0, le=1.0)
    """Text replaced by the negative-prompt embedding (the sampler's "null text")."""
    image: float = Field(0.1, ge=0.0, le=1.0)
    """Reference slot filled with zeros."""
    audio: float = Field(0.1, ge=0.0, le=1.0)
    """All-zero audio features (still passed through the audio projection); stage 2 only."""


class AdapterConfig(Section):
    """Train a LoRA adapter instead of the stage's weights (``train.adapter``; peft, :mod:`humo.models.lora`).

    The base stays frozen and bit-identical; the stage writes the adapter (``adapter.safetensors``, its EMA, in the
    ComfyUI / diffusion-pipe layout) and the base it needs, not a copy of the whole model. Stage 2's base is stage
    1's EMA model; stage 1's is ``model.checkpoint`` (released weights: a LoRA needs a trained base).
    """

    kind: Literal["none", "lora"] = "none"
    """``none``: full fine-tuning of the stage's parameters (the paper); ``lora``: a low-rank adapter."""
    rank: int = Field(32, ge=1)
    """Rank r (32 as in diffusion-pipe and DiffSynth-Studio's Wan examples)."""
    alpha: float | None = Field(None, gt=0)
    """Scale numerator: the update is ``alpha / r * B A``; None = r (scale 1, diffusion-pipe's rule)."""
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    """Dropout on the LoRA branch's input."""
    target_modules: tuple[str, ...] | None = None
    """Linear layers to adapt, as dotted suffixes (``self_attn.q``; ``*`` for one name part); None = the stage's
    default: every linear of each block's self-attention, text cross-attention and FFN (musubi-tuner's and
    diffusion-pipe's choice), plus in stage 2 the audio path (audio cross-attention, audio projection, mask head)."""

    @property
    def effective_alpha(self) -> float:
        return float(self.alpha if self.alpha is not None else self.rank)


class TrainConfig(Section):
    """Settings both training stages share (``train_stage1`` / ``train_stage2`` hold what differs)."""

    seed: int = 0
    """Seeds initialisation, data order, noise, timesteps, dropout and the task mix."""
    batch_size: int = Field(8, ge=1)
    """Global batch: split evenly over the processes (must be a multiple of ``devices``)."""
    num_workers: int = Field(0, ge=0)
    """Data-loader processes per training process (0 on small CPUs: shards are small and in the page cache)."""
    strategy: Literal["single", "ddp", "fsdp"] = "single"
    """``single`` process, ``ddp``, or ``fsdp`` (Lightning ModelParallelStrategy + fully_shard per block)."""
    accelerator: Literal["cpu", "gpu", "auto"] = "cpu"
    devices: int = Field(1, ge=1)
    """Processes (GPUs, or CPU processes with gloo) for ``ddp`` and ``fsdp``."""
    precision: Literal["32-true", "bf16-mixed"] = "32-true"
    """``bf16-mixed`` on GPUs; CPU training stays in float32."""
    gradient_checkpointing: bool = False
    """Recompute block activations in the backward pass (memory for time; GPUs with long sequences)."""
    timestep_distribution: Literal["logit_normal", "uniform"] = "logit_normal"
    """How training noise levels are drawn (the upstream yaml hints at logit-normal(0, 1))."""
    timestep_shift: float = Field(1.0, gt=0)
    """Shift ``s sigma / (1 + (s - 1) sigma)`` applied to the drawn noise levels (> 1 favours high noise)."""
    condition_dropout: ConditionDropoutConfig = ConditionDropoutConfig()
    ema_decay: float = Field(0.99, ge=0.0, lt=1.0)
    """Decay of the EMA of the trainable weights (saved as ema.safetensors, the sampler's default)."""
    weight_decay: float = Field(0.0, ge=0.0)
    warmup_steps: int = Field(20, ge=0)
    """Linear learning-rate warm-up, then constant."""
    val_every_n_steps: int = Field(100, ge=1)
    """Validation loss (fixed noise, no dropout) every N optimizer steps."""
    val_batches: int = Field(4, ge=1)
    """Validation batches per evaluation."""
    checkpoint_every_n_steps: int = Field(100, ge=1)
    """Resumable checkpoint (weights, optimizer, scheduler, EMA, step) every N steps."""
    log_every_n_steps: int = Field(10, ge=1)
    sample_every_n_steps: int = Field(0, ge=0)
    """Render sample videos of fixed held-out requests every N steps (and at the end) as MLflow artifacts;
    0 = off. Single-process training only (:mod:`humo.evaluation.samples`, a callback the CLI passes to the stage)."""
    num_samples: int = Field(2, ge=1)
    """Sample requests per sampling step: the first held-out clips of the manifest by clip id."""
    sample_steps: int = Field(10, ge=1)
    """Denoising steps per sample video."""
    adapter: AdapterConfig = AdapterConfig()

    @model_validator(mode="after")
    def _check_devices(self) -> TrainConfig:
        if self.strategy == "single" and self.devices != 1:
            raise ValueError(f"strategy='single' runs one process but devices={self.devices}; use ddp or fsdp")
        if self.batch_size % self.devices:
            raise ValueError(
                f"batch_size={self.batch_size} (global) must be a multiple of devices={self.devices}"
            )
        return self


class PretrainConfig(Section):
    """``humo pretrain``: the tiny DiT's text-to-video backbone, a stand-in for Wan2.1's T2V weights.

    Every parameter but the audio modules trains on text -> video alone (no reference, no audio); the result is
    versioned in the repository (``out``, with its provenance) and stage 1 starts from it (``model.checkpoint``).
    """

    steps: int = Field(1000, ge=1)
    learning_rate: float = Field(1e-3, gt=0)
    seed: int = 0
    out: Path = Path("models/tiny-t2v")
    """Folder of the versioned backbone: ``ema.safetensors`` and ``provenance.json``."""


class TrainStage1Config(Section):
    """Stage 1, subject preservation (text + reference image): only the self-attention layers train."""

    steps: int = Field(600, ge=1)
    learning_rate: float = Field(1e-3, gt=0)
    trainable: Literal["self_attention", "backbone", "all"] = "self_attention"
    """``self_attention``: the paper's minimal-invasive stage 1 on a pretrained backbone (model.checkpoint: the
    released weights, or the tiny DiT's text-to-video backbone from ``humo pretrain``). ``backbone``: every
    non-audio parameter, for a randomly initialised DiT (a frozen random backbone with a zero-initialised head
    cannot learn). ``all``: the same set, named for the paper's "full fine-tune" ablation."""


class TrainStage2Config(Section):
    """Stage 2, audio-visual sync: self-attention + audio projection, audio cross-attention and mask predictor."""

    steps: int = Field(700, ge=1)
    learning_rate: float = Field(1e-3, gt=0)
    audio_share_start: float = Field(0.2, ge=0.0, le=1.0)
    """Share of audio-visual-sync samples at the start (paper: 20%); the rest are subject-preservation samples."""
    audio_share_end: float = Field(0.5, ge=0.0, le=1.0)
    """Share reached at the end of the ramp (paper: 50%)."""
    audio_ramp_steps: int = Field(500, ge=0)
    """Steps of the linear ramp from start to end (the paper does not give the shape)."""
    mask_loss_weight: float = Field(0.1, ge=0.0)
    """Weight lambda of the focus-by-predicting mask loss (not given in the paper)."""
    continuation_share: float = Field(0.0, ge=0.0, le=1.0)
    """Share of batches trained as long-video continuations (ours, not the paper's): the clips from their second
    latent frame on, the first ``1..continuation_max_prefix`` frames kept clean and out of the loss, as the
    long-video sampler holds the frames a window takes from the previous one (``generate.long_video``)."""
    continuation_max_prefix: int = Field(2, ge=1)
    """Most clean leading frames of a continuation batch; at least ``generate.long_video.overlap_latent_frames``."""
    trainable: Literal["self_attention", "all"] = "self_attention"
    """``self_attention``: the paper's minimal-invasive stage 2 (self-attention and the audio modules);
    ``all``: every parameter (the paper's "full fine-tune" ablation)."""


class OrchestrationConfig(Section):
    """Prefect flows: where fan-out runs, and where the scheduled batch inference finds its requests."""

    dask_address: str | None = None
    """Scheduler of an existing Dask cluster (``tcp://host:8786``); ``None`` starts a local cluster per flow run."""
    dask_workers: int = Field(2, ge=1)
    """Worker processes of the local cluster (ignored with ``dask_address``)."""
    inbox: Path = Path("inbox")
    """Folder of request files (``*.json`` in upstream's test_case format, or ``*.jsonl``) for batch inference."""
    outbox: Path = Path("outputs")
    """Where batch inference writes videos and sidecars (one sub-folder per request file)."""
    model: str = "models:/humo@champion"
    """Model that batch inference uses: ``models:/<name>@<alias>`` or a checkpoint folder."""
    retrain_cron: str = "0 2 * * *"
    """Schedule of the nightly curate-and-retrain deployment (cron, server time zone)."""
    inference_cron: str = "0 * * * *"
    """Schedule of the hourly batch inference over the inbox."""


class MetricRule(Section):
    """One metric the candidate is compared on against the current champion."""

    name: str = Field(min_length=1)
    """Key in the evaluation metrics (``reports/evaluate/metrics.json``), dotted for nested values: ``TIA.sync``."""
    direction: Literal["maximize", "minimize"] = "maximize"
    tolerance: float = Field(0.0, ge=0.0)
    """The candidate may be worse than the champion by up to this much on this metric and still win."""


class RequestLimitsConfig(Section):
    """What one generation request may ask for, in every entry point (batch, serving, evaluation, samples, long
    video): a request outside these fails alone with a reason naming the field (HTTP 400 when served)."""

    max_payload_bytes: int = Field(16_000_000, ge=1024)
    """Largest request: the prompt plus the base64 text of the image and the audio."""
    max_image_bytes: int = Field(4_000_000, ge=1)
    """Largest decoded reference image file (PNG/JPEG bytes)."""
    max_image_side: int = Field(4096, ge=16)
    """Largest width or height of the reference image in pixels."""
    max_video_side: int = Field(1024, ge=16)
    """Largest ``height`` or ``width`` a request may ask for (multiples of 16)."""
    max_audio_bytes: int = Field(8_000_000, ge=1)
    """Largest decoded audio file (WAV/FLAC/OGG bytes)."""
    max_prompt_chars: int = Field(2000, ge=1)
    max_frames: int = Field(97, ge=5)
    """Most video frames of one window (4k+1): ``num_frames`` above it is refused; longer audio is cut to it with
    a note (or, with ``generate.long_video.enabled``, generated in windows up to ``max_total_frames``)."""
    min_audio_frames: int = Field(5, ge=1)
    """Shortest audio a request may drive a video with, in 25 fps frames (5 = 0.2 s, one latent frame after the
    first): shorter audio is refused, as it would make a still image."""
    max_seed: int = Field(2**63 - 1, ge=0)
    """Largest seed (torch generators take 64-bit seeds)."""
    max_steps: int = Field(50, ge=1)
    """Most denoising steps one request may ask for."""
    max_guidance_scale: float = Field(20.0, gt=0)
    """Largest guidance scale (text, image, audio) a request may set."""
    allowed_modes: tuple[Literal["T", "TI", "TA", "TIA"], ...] = ("T", "TI", "TA", "TIA")
    """Modes the server accepts."""

    @model_validator(mode="after")
    def _check(self) -> RequestLimitsConfig:
        if (self.max_frames - 1) % 4:
            raise ValueError(f"max_frames={self.max_frames} must be of the form 4k+1 (e.g. 97)")
        if not self.allowed_modes:
            raise ValueError("allowed_modes is empty; allow at least one of T, TI, TA, TIA")
        return self


class RegistryConfig(Section):
    """MLflow model registry and serving (``humo register``, ``humo serve``): names, aliases, promotion, limits."""

    model_name: str = Field("humo", min_length=1)
    """Registered model name; the server loads ``models:/<model_name>@<alias>``."""
    candidate_alias: str = "candidate"
    """Alias set on every newly registered version."""
    champion_alias: str = "champion"
    """Alias moved only when the evaluation gate passes and the candidate beats the current champion."""
    compare: tuple[MetricRule, ...] = (
        MetricRule(name="sync_confidence_at_zero"),
        MetricRule(name="identity_similarity", tolerance=0.01),
        MetricRule(name="text_alignment", tolerance=0.01),
    )
    """Metrics compared against the champion: the candidate must be no worse on each (within its tolerance) and
    strictly better on at least one."""
    weights: Literal["embed", "reference"] = "embed"
    """``embed``: DiT weights (and the tiny VAE) are uploaded as model artifacts; ``reference``: only a manifest
    of their paths with sha256 checksums is uploaded and verified at load time (multi-GB real weights)."""
    host: str = "127.0.0.1"
    """Address ``humo serve`` binds to (loopback by default)."""
    port: int = Field(5001, ge=1, le=65535)
    timeout_s: int = Field(600, ge=1)
    """Longest time the server spends on one request before answering 504 (generation on a CPU is slow)."""

    @model_validator(mode="after")
    def _check(self) -> RegistryConfig:
        if self.candidate_alias == self.champion_alias:
            raise ValueError(f"candidate_alias and champion_alias are both {self.champion_alias!r}; use two names")
        return self


class DemoConfig(Section):
    """``humo demo``: the Gradio page's server."""

    host: str = "127.0.0.1"
    """Address to bind (loopback: only this machine; 0.0.0.0 to show it on the network)."""
    port: int = Field(7860, ge=1, le=65535)
    concurrency: int = Field(1, ge=1)
    """Generations at once (one loaded pipeline runs them in turn anyway; more only interleave encoding)."""
    max_queue: int = Field(16, ge=1)
    """Requests waiting beyond that; the next one is told the queue is full."""
    out_dir: Path | None = None
    """Where the videos and sidecars go; None = a fresh temporary folder."""


class EvaluateGateConfig(Section):
    """Promotion gate (``humo.evaluation.gates``): every bound must hold for the candidate to be promotable.

    Bounds name figures of ``humo.evaluation.metrics.METRICS`` measured in ``mode`` (mean over the evaluation
    set); an unknown name is an error at evaluation time.
    """

    mode: Literal["TA", "TI", "TIA"] = "TIA"
    """The generation mode whose figures the gate reads."""
    minimum: dict[str, float] = Field(
        default_factory=lambda: {
            "sync_confidence_at_zero": 0.05,
            "identity_similarity": 0.2,
            "text_alignment": 0.5,
            "face_presence": 0.5,
        }
    )
    """Figure -> lowest acceptable value."""
    maximum: dict[str, float] = Field(default_factory=lambda: {"flicker": 20.0})
    """Figure -> highest acceptable value."""


class SpeedStudyConfig(Section):
    """The ``speed_study`` stage (humo.evaluation.speed): each speed setting against the full sampler."""

    rows: tuple[str, ...] = ()
    """Speed choices to measure: names of ``generate.speed_presets`` or ``config``, optionally ``name@steps`` for
    another step count (the full sampler ``off`` always runs)."""

    @model_validator(mode="after")
    def _check(self) -> SpeedStudyConfig:
        for row in self.rows:
            name, sep, steps = row.partition("@")
            if not name or (sep and not steps.isdigit()):
                raise ValueError(f"speed study row {row!r} must be a speed name or name@steps (e.g. config@25)")
        return self
    step_baselines: tuple[int, ...] = ()
    """The full sampler at these step counts too: the cheap shortcut every caching setting has to beat."""
    seeds: int = Field(3, ge=1)
    """Seeds per row; the full run's spread over them is the noise a difference is read against."""
    steps: int = Field(50, ge=1)
    mode: Literal["T", "TA", "TI", "TIA"] = "TIA"
    seed: int = 0


class LoraStudyConfig(Section):
    """``humo lora-study``: stage 2 as a LoRA (``train.adapter``) beside full stage 2 on the evaluation set."""

    seeds: int = Field(3, ge=1)
    """Seeds per case for each model (the seed-to-seed spread is the table's noise)."""
    mode: Literal["TA", "TI", "TIA"] = "TIA"
    steps: int | None = Field(None, ge=1)
    """Training steps of the LoRA stage 2; None = ``train_stage2.steps``. Fewer steps give it the wall-time budget
    of full stage 2 when its steps are slower (``benchmarks/bench_training.py`` measures the ratio)."""


class AblationConfig(Section):
    """``humo ablation``: the paper's Table 3 and Fig. 4 in miniature, every trained row with several seeds.

    Every variant trains from the pretrained backbone (``model.checkpoint``) with the short stages below, the full
    row the same way; the evaluation covers ``num_cases`` held-out clips (distinct identities first) with
    ``sampling_seeds`` noise seeds each; intervals come from a two-level bootstrap (training seeds, then cases).
    """

    training_seeds: tuple[int, ...] = Field((0, 1, 2), min_length=1)
    """``train.seed`` of each training run of every trained variant."""
    stage1_steps: int = Field(300, ge=1)
    stage2_steps: int = Field(300, ge=1)
    """Short stages (the stage-2 audio ramp is shortened in proportion); w/o progressive gets their sum."""
    num_cases: int = Field(16, ge=1)
    """Held-out clips of the ablation's own evaluation set (``artifacts/ablation/eval_set``)."""
    sampling_seeds: int = Field(2, ge=1)
    """Noise seeds per case and row."""
    confidence: float = Field(0.95, gt=0.0, lt=1.0)
    bootstrap_resamples: int = Field(2000, ge=100)


class EvaluateConfig(Section):
    """The ``eval_set`` and ``evaluate`` stages: a fixed held-out set, generation in several modes, metrics, gate."""

    seed: int = 0
    """Seed of the evaluation set's choice of clips and of the generation noise."""
    num_cases: int = Field(6, ge=1)
    """Held-out clips in the evaluation set (distinct held-out identities first)."""
    modes: tuple[Literal["T", "TA", "TI", "TIA"], ...] = ("TA", "TI", "TIA")
    """Generation modes evaluated (the paper compares TA, TI and TIA)."""
    steps: int = Field(10, ge=1)
    """Denoising steps per evaluation video (fewer than ``generate.steps`` to fit the stage's time budget)."""
    decode_batch: int = Field(9, ge=1)
    """Videos decoded by the VAE at once (the causal VAE decodes frame by frame: batching is much faster)."""
    sync_max_offset: int = Field(10, ge=1)
    """Offsets -K..K frames searched by the sync metrics (clips need at least K + 3 frames)."""
    mouth_margin_px: float = Field(3.0, ge=0.0)
    """Pixels added around the union of a case's annotated mouth boxes (a generated head moves a little)."""
    strip_frames: int = Field(6, ge=1)
    """Frames per clip shown in the report's frame strips."""
    sync_scorer: Literal["motion", "mouth", "lips", "syncnet"] | None = None
    """Extra sync figures (``sync_model_*``, provenance model) from a scorer of :mod:`humo.data.sync`
    (``syncnet``: SyncNet v2 from ``syncnet_weights``, the paper's Sync-C / Sync-D); ``None`` = none."""
    syncnet_weights: Path | None = None
    """Local ``syncnet_v2.model`` for ``sync_scorer`` / ``real_sync_scorer: syncnet``."""
    image_embedder: Path | None = None
    """A local CLIP or DINO(v2) folder (save_pretrained): adds ``embedding_similarity`` (CLIP-I / DINO-I)."""
    text_scorer: Path | None = None
    """A local CLIP folder: adds ``text_model_score`` (caption-frame CLIP similarity, a TVA stand-in)."""
    real_shift_frames: int = Field(8, ge=1)
    """Real-video check (``humo evaluate-real``): delay of the deliberately shifted audio, in frames."""
    real_max_offset: int = Field(15, ge=1)
    """Real-video check: offsets searched (SyncNet's +-15 frames)."""
    real_sync_scorer: Literal["auto", "motion", "mouth", "lips", "syncnet"] = "auto"
    """Real-video check: the sync scorer (``auto``: ``lips`` with ``humo[faces]``, else ``mouth``)."""
    gate: EvaluateGateConfig = EvaluateGateConfig()
    speed: SpeedStudyConfig = SpeedStudyConfig()
    """The quality-speed table of step caching and guidance truncation (stage ``speed_study``)."""
    lora_study: LoraStudyConfig = LoraStudyConfig()
    ablation: AblationConfig = AblationConfig()


class Params(Section):
    """The whole of params.yaml. Each field is one top-level section."""

    paths: PathsConfig = PathsConfig()
    logging: LoggingConfig = LoggingConfig()
    synth: SynthConfig = SynthConfig()
    tracking: TrackingConfig = TrackingConfig()
    model: ModelConfig = ModelConfig()
    encoders: EncodersConfig = EncodersConfig()
    train_vae: TrainVaeConfig = TrainVaeConfig()
    precompute: PrecomputeConfig = PrecomputeConfig()
    train: TrainConfig = TrainConfig()
    pretrain: PretrainConfig = PretrainConfig()
    train_stage1: TrainStage1Config = TrainStage1Config()
    train_stage2: TrainStage2Config = TrainStage2Config()
    generate: GenerateConfig = GenerateConfig()
    limits: RequestLimitsConfig = RequestLimitsConfig()
    """What one request may ask for, the same in every entry point (``humo.inference.generate``)."""
    calibrate_cache: CalibrateCacheConfig = CalibrateCacheConfig()
    curate: CurateConfig = CurateConfig()
    validation: ValidateConfig = ValidateConfig()
    """Checks of the curated manifest; named ``validation`` because ``validate`` shadows a pydantic method."""
    orchestration: OrchestrationConfig = OrchestrationConfig()
    registry: RegistryConfig = RegistryConfig()
    demo: DemoConfig = DemoConfig()
    evaluate: EvaluateConfig = EvaluateConfig()

    @model_validator(mode="after")
    def _defaults_within_limits(self) -> Params:
        names = {row.partition("@")[0] for row in self.evaluate.speed.rows}
        unknown = sorted(names - set(self.generate.speed_presets) - set(SPEED_BUILTINS))
        if unknown:
            raise ValueError(
                f"evaluate.speed.rows names {unknown}, which are not in generate.speed_presets "
                f"({sorted(self.generate.speed_presets)}) nor built in ({list(SPEED_BUILTINS)})"
            )
        storage = self.generate.memory.weight_storage
        if self.model.adapters and not self.model.merge_adapters and storage != "native":
            raise ValueError(
                f"model.adapters beside the layers cannot run on generate.memory.weight_storage={storage} weights; "
                "set model.merge_adapters=true (folded in before the weights are stored in fp8/int8)"
            )
        side = self.limits.max_video_side
        if max(self.generate.height, self.generate.width) > side:
            raise ValueError(
                f"generate.height x width = {self.generate.height}x{self.generate.width} is over limits.max_video_side"
                f"={side}: every request left at the default would be refused; lower the size or raise the limit"
            )
        return self


# =====================================================================================================
# Loading
# =====================================================================================================


def load_params(path: str | Path = DEFAULT_PARAMS_PATH, overrides: Iterable[str] = ()) -> Params:
    """Read, override and validate params.yaml: the one reader of the file.

    Args:
        path: the YAML file.
        overrides: dotted ``key=value`` strings applied on top of the file, e.g. ``"synth.num_clips=8"``.

    Returns:
        The validated, immutable :class:`Params`.

    Raises:
        ConfigError: the file is missing or not a YAML mapping, an override is malformed or names an unknown
            key, or a value fails validation. The message names the key and the allowed keys or range.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"params file {path} not found; run from the project root or pass --params PATH")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from err
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping of sections, got {type(raw).__name__}")
    for override in overrides:
        _apply_override(raw, override)
    return validate_params(raw, source=str(path))


def validate_params(raw: Mapping[str, Any], source: str = "params") -> Params:
    """Validate a plain mapping as :class:`Params`, turning pydantic's errors into one readable message."""
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, source)) from None


def _apply_override(raw: dict[str, Any], override: str) -> None:
    """Set ``a.b.c=value`` in ``raw`` after checking every key of the path against the schema."""
    key, sep, text = override.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {override!r} must look like section.key=value, e.g. synth.num_clips=8")
    parts = key.strip().split(".")
    model: type[BaseModel] | None = Params
    node = raw
    for depth, part in enumerate(parts):
        if model is None:
            raise ConfigError(f"override {key!r}: {'.'.join(parts[:depth])} is a value, not a section")
        _check_key(model, part, ".".join(parts[:depth]) or "<top level>", f"override {key!r}")
        if depth == len(parts) - 1:
            try:
                node[part] = yaml.safe_load(text)
            except yaml.YAMLError as err:
                raise ConfigError(f"override {key!r}: value {text!r} is not valid YAML: {err}") from err
            return
        field = model.model_fields[part]
        annotation = field.annotation
        model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"override {key!r}: {part} holds a value, not a section")
        node = child


def _check_key(model: type[BaseModel], key: str, where: str, context: str) -> None:
    allowed = list(model.model_fields)
    if key not in allowed:
        close = difflib.get_close_matches(key, allowed, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"{context}: unknown key {key!r} in {where}. Allowed keys: {', '.join(allowed)}.{hint}")


def _model_at(location: tuple[Any, ...]) -> type[BaseModel] | None:
    """The section model found by walking ``location`` from :class:`Params`."""
    model: type[BaseModel] = Params
    for part in location:
        field = model.model_fields.get(str(part))
        annotation = field.annotation if field else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return model


def _format_errors(err: ValidationError, source: str) -> str:
    lines = [f"{source}: {err.error_count()} invalid setting(s):"]
    for error in err.errors():
        location = tuple(error["loc"])
        dotted = ".".join(str(part) for part in location) or "<top level>"
        if error["type"] == "extra_forbidden":
            parent = _model_at(location[:-1])
            allowed = list(parent.model_fields) if parent else []
            close = difflib.get_close_matches(str(location[-1]), allowed, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            lines.append(f"  - unknown key {dotted!r}. Allowed keys here: {', '.join(allowed)}.{hint}")
        else:
            value = error.get("input")
            got = "" if isinstance(value, dict) else f" (got {value!r})"
            lines.append(f"  - {dotted}: {error['msg']}{got}")
    return "\n".join(lines)


def resolved_dict(params: BaseModel) -> dict[str, Any]:
    """A JSON-ready dict of a config object (paths as strings), e.g. to save next to a checkpoint."""
    return params.model_dump(mode="json")
