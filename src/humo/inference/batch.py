"""Batch generation: a requests file -> one mp4 (H.264 + the driving audio as AAC, 25 fps) and one JSON sidecar each.

Requests come in upstream's ``test_case.json`` format (``{case: {img_paths: [...], audio_path, prompt}}``, paths
relative to the request file) or as JSONL (one object per line with an ``id``). Besides upstream's three fields a
request may set ``seed``, ``mode``, ``num_frames``, ``height`` and ``width``; any other field fails that request.

Guarantees:

- **A bad request never stops the batch**: it is recorded as failed with a clear reason in ``summary.json``
  (missing or unreadable image, missing, corrupt or empty audio, a mode needing an image given none, absurd
  sizes or frame counts, unknown fields). Audio at any sample rate or channel count is resampled to 16 kHz mono;
  silent audio is allowed and noted.
- **Idempotent and resumable**: each output's sidecar records a key over the inputs' hashes, the settings and the
  model; a request whose mp4 and sidecar exist with the same key (and the mp4's recorded hash) is skipped. Files are
  written to a temporary name and renamed, the sidecar last, so a killed batch leaves no half output that counts.
- **Safe names**: outputs are ``<safe id>_seed<seed>.mp4`` with the id reduced to ``[A-Za-z0-9._-]`` (plus a short
  hash when anything was replaced), so no id can reach outside the output folder; an existing file that is not a
  humo output (no sidecar of ours) is never overwritten.

Model references: a trained checkpoint folder (contract 3) or any scheme registered with
:func:`register_model_resolver` (the registry registers ``models:/name@alias``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from humo import __version__
from humo.config import EncodersConfig, GenerateConfig, PathsConfig
from humo.constants import AUDIO_SAMPLE_RATE
from humo.diffusion.guidance import GuidanceSchedule, PiecewiseScale, build_guidance
from humo.inference.pipeline import HumoPipeline, audio_is_silent, frames_for_audio

logger = logging.getLogger(__name__)

GENERATOR_TAG = "humo generate"
"""Written into every sidecar; a file without it is foreign and never overwritten."""
SAFE_ID_CHARS = re.compile(r"[^A-Za-z0-9._-]+")
MAX_ID_LENGTH = 80
ID_HASH_CHARS = 8
SUMMARY_FILE = "summary.json"
HASH_CHUNK = 1 << 20


# =====================================================================================================================
# Requests
# =====================================================================================================================


class GenerationRequest(BaseModel):
    """One request: upstream's fields plus optional per-request settings (unknown fields are errors)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1)
    prompt: str = Field(min_length=1)
    img_paths: list[str] = Field(default_factory=list)
    audio_path: str | None = None
    seed: int | None = None
    mode: Literal["T", "TI", "TA", "TIA"] | None = None
    num_frames: int | None = None
    height: int | None = None
    width: int | None = None


@dataclass
class RawRequest:
    """A request as read from the file, before validation: its id and fields, or why it could not be read."""

    id: str
    fields: dict[str, Any] | None
    error: str | None = None


def read_requests(path: str | Path) -> list[RawRequest]:
    """Read upstream's ``test_case.json`` (a mapping of case id -> fields) or a JSONL file (objects with ``id``).

    A malformed line of a JSONL file becomes a failed request; a malformed JSON file raises.

    Raises:
        FileNotFoundError: no such file.
        ValueError: a .json file that is not a JSON object of objects.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"requests file {path} not found; give a test_case.json or a .jsonl file")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".jsonl":
        requests = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as err:
                requests.append(RawRequest(f"line{number}", None, f"line {number} is not valid JSON: {err}"))
                continue
            if not isinstance(item, dict):
                requests.append(RawRequest(f"line{number}", None, f"line {number} is not a JSON object"))
                continue
            request_id = str(item.get("id") or f"line{number}")
            requests.append(RawRequest(request_id, {**item, "id": request_id}))
        return requests
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); use upstream's test_case.json layout or .jsonl") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path} must map case ids to requests ({{case: {{prompt, img_paths, audio_path}}}})")
    return [
        RawRequest(str(key), {**value, "id": str(key)})
        if isinstance(value, dict)
        else RawRequest(str(key), None, f"case {key!r} is not a JSON object")
        for key, value in data.items()
    ]


def safe_output_stem(request_id: str, seed: int) -> str:
    """``<id>_seed<seed>`` with the id reduced to ``[A-Za-z0-9._-]`` (no separators, no leading dots).

    When characters had to be replaced or the id shortened, a short hash of the original id is appended so two
    different ids never share a file name.
    """
    cleaned = SAFE_ID_CHARS.sub("_", request_id).lstrip(".") or "request"
    cleaned = cleaned[:MAX_ID_LENGTH]
    if cleaned != request_id:
        cleaned += "-" + hashlib.sha256(request_id.encode()).hexdigest()[:ID_HASH_CHARS]
    return f"{cleaned}_seed{seed}"


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(HASH_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


# =====================================================================================================================
# Models
# =====================================================================================================================


@dataclass(frozen=True)
class ModelInfo:
    """What the sidecar says about the model: a name, a version and where it came from."""

    name: str
    version: str
    source: str


ModelResolver = Callable[[str], tuple[torch.nn.Module, ModelInfo]]
MODEL_RESOLVERS: dict[str, ModelResolver] = {}
"""URI scheme (``models`` for ``models:/name@alias``) -> a function returning ``(transformer, ModelInfo)``."""


def register_model_resolver(scheme: str, resolver: ModelResolver) -> None:
    """Let :func:`load_model` resolve ``<scheme>:/...`` references (the registry registers ``models``)."""
    MODEL_RESOLVERS[scheme] = resolver


def load_model(reference: str | Path) -> tuple[torch.nn.Module, ModelInfo]:
    """The transformer named by ``reference``: a checkpoint folder, or ``<scheme>:/...`` with a registered resolver.

    Raises:
        ValueError: a URI scheme nobody registered.
        FileNotFoundError: a folder that is not a trained checkpoint.
    """
    text = str(reference)
    scheme, sep, _ = text.partition(":/")
    if sep and scheme.isalpha() and len(scheme) > 1:
        if scheme not in MODEL_RESOLVERS:
            raise ValueError(
                f"model reference {text!r} uses scheme {scheme!r} but no resolver is registered for it (known: "
                f"{sorted(MODEL_RESOLVERS) or 'none'}); give a checkpoint folder such as artifacts/train_stage2"
            )
        return MODEL_RESOLVERS[scheme](text)
    from humo.training.checkpoints import RUN_FILE, load_trained_transformer

    folder = Path(text)
    transformer = load_trained_transformer(folder)
    run_file = folder / RUN_FILE
    run = json.loads(run_file.read_text()) if run_file.is_file() else {}
    version = str(run.get("run_id") or file_sha256(next(iter(sorted(folder.glob("*.safetensors")))))[:12])
    return transformer, ModelInfo(name=folder.name, version=version, source=str(folder))


# =====================================================================================================================
# Settings -> guidance
# =====================================================================================================================


def guidance_for(settings: GenerateConfig, mode: str) -> GuidanceSchedule:
    """The guidance schedule that ``settings.guidance`` describes, for ``mode``."""
    g = settings.guidance
    custom = {name: PiecewiseScale(tuple(s.values), tuple(s.switch_points)) for name, s in g.custom.items()}
    return build_guidance(
        g.form, mode, g.scale_text, g.scale_image, g.scale_audio, g.switch_timestep, g.late_text_offset, custom
    )


# =====================================================================================================================
# The batch
# =====================================================================================================================


@dataclass
class RequestResult:
    """Outcome of one request in ``summary.json``."""

    id: str
    status: Literal["generated", "skipped", "failed"]
    reason: str | None = None
    video: str | None = None
    sidecar: str | None = None
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class BatchSummary:
    """All results of a batch run; written to ``<out_dir>/summary.json``."""

    results: list[RequestResult]

    def count(self, status: str) -> int:
        return sum(result.status == status for result in self.results)

    def to_dict(self) -> dict[str, Any]:
        return {
            "generated": self.count("generated"),
            "skipped": self.count("skipped"),
            "failed": self.count("failed"),
            "results": [asdict(result) for result in self.results],
        }


class RequestError(ValueError):
    """A request that cannot be generated; the message is the reason recorded in the summary."""


def _resolve(base: Path, text: str, path_map: Mapping[str, str | Path] | None) -> Path:
    if path_map and text in path_map:
        return Path(path_map[text])
    path = Path(text)
    return path if path.is_absolute() else base / path


def _load_image(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise RequestError(f"reference image {path} not found; fix img_paths (relative to the request file)")
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError) as err:
        raise RequestError(f"reference image {path} is not a readable image ({err}); give a PNG or JPEG") from err


def _load_audio(path: Path) -> np.ndarray:
    from audioread.exceptions import DecodeError

    from humo.data.media import MediaError, read_audio

    if not path.is_file():
        raise RequestError(f"audio file {path} not found; fix audio_path (relative to the request file)")
    try:
        audio = read_audio(path, AUDIO_SAMPLE_RATE)  # any rate / channel count -> 16 kHz mono
    # librosa falls back to audioread for files libsndfile rejects; its DecodeError (NoBackendError) escapes
    # read_audio, so it is caught here too.
    except (MediaError, DecodeError) as err:
        detail = str(err) or type(err).__name__  # audioread's NoBackendError has no message
        raise RequestError(f"audio file {path} is corrupt or empty ({detail}); give a wav, flac or mp3") from err
    if audio.size == 0:
        raise RequestError(f"audio file {path} holds no samples; give speech of at least 40 ms")
    return audio


def _atomic_write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _read_sidecar(path: Path) -> dict[str, Any] | None:
    """Our sidecar at ``path``, or None when there is none or it is not ours."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) and data.get("generator") == GENERATOR_TAG else None


def generate_batch(
    pipeline: HumoPipeline,
    requests_path: str | Path,
    out_dir: str | Path,
    settings: GenerateConfig,
    model: ModelInfo,
    path_map: Mapping[str, str | Path] | None = None,
) -> BatchSummary:
    """Generate every request of ``requests_path`` into ``out_dir``; bad requests are recorded, not raised.

    Args:
        pipeline: a ready :class:`HumoPipeline`.
        requests_path: upstream ``test_case.json`` or ``.jsonl``.
        out_dir: output folder (created).
        settings: the ``generate`` section (defaults for mode, seed, sizes; steps, guidance, long videos).
        model: name/version/source recorded in the sidecars and in the idempotency key.
        path_map: explicit replacements for request paths, keyed by the path text as written in the request
            (e.g. upstream's ``./examples/man_Jaime.png`` -> where that file really is).

    Returns:
        The :class:`BatchSummary` (also written to ``out_dir/summary.json``).
    """
    requests_path = Path(requests_path)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results: list[RequestResult] = []
    claimed: set[str] = set()
    for raw in read_requests(requests_path):
        tick = time.perf_counter()
        try:
            result = _generate_one(pipeline, raw, requests_path.parent, out_dir, settings, model, path_map, claimed)
        except (RequestError, ValueError, FileNotFoundError) as err:
            # A bad request must not stop the batch (issue #6): record the reason and go on.
            logger.warning("request %s failed: %s", raw.id, err)
            result = RequestResult(raw.id, "failed", reason=str(err))
        result.seconds = round(time.perf_counter() - tick, 3)
        results.append(result)
    summary = BatchSummary(results)
    _atomic_write_json(out_dir / SUMMARY_FILE, summary.to_dict())
    logger.info(
        "batch %s: %d generated, %d skipped, %d failed -> %s",
        requests_path.name,
        summary.count("generated"),
        summary.count("skipped"),
        summary.count("failed"),
        out_dir,
    )
    return summary


def _generate_one(
    pipeline: HumoPipeline,
    raw: RawRequest,
    base: Path,
    out_dir: Path,
    settings: GenerateConfig,
    model: ModelInfo,
    path_map: Mapping[str, str | Path] | None,
    claimed: set[str],
) -> RequestResult:
    if raw.fields is None:
        raise RequestError(raw.error or "unreadable request")
    try:
        request = GenerationRequest.model_validate(raw.fields)
    except ValidationError as err:
        problems = "; ".join(
            f"unknown field {'.'.join(map(str, e['loc']))!r} (allowed: {', '.join(GenerationRequest.model_fields)})"
            if e["type"] == "extra_forbidden"
            else f"{'.'.join(map(str, e['loc']))}: {e['msg']}"
            for e in err.errors()
        )
        raise RequestError(f"invalid request: {problems}") from None
    notes: list[str] = []
    mode = request.mode or settings.mode
    seed = settings.seed if request.seed is None else request.seed
    height = request.height or settings.height
    width = request.width or settings.width

    # inputs: a mode that needs a missing input fails before any file is read
    if "I" in mode and not request.img_paths:
        raise RequestError(f"mode {mode} needs a reference image but img_paths is empty; add one or set mode to "
                           f"{mode.replace('I', '')!r}")
    if "A" in mode and request.audio_path is None:
        raise RequestError(f"mode {mode} needs audio but audio_path is missing; add one or set mode to "
                           f"{mode.replace('A', '')!r}")
    image_paths = [_resolve(base, p, path_map) for p in request.img_paths]
    image = _load_image(image_paths[0]) if "I" in mode else None
    if len(image_paths) > 1:
        # Deviation from upstream: upstream appends one reference frame per image; we use the first only.
        notes.append(f"{len(image_paths)} reference images given; only the first is used")
    audio_path = _resolve(base, request.audio_path, path_map) if request.audio_path is not None else None
    audio = _load_audio(audio_path) if audio_path is not None else None
    if audio is not None and audio_is_silent(audio):
        notes.append("the audio is silent: expect a closed mouth")

    # names and the idempotency key
    stem = safe_output_stem(request.id, seed)
    if stem in claimed:
        raise RequestError(f"request id {request.id!r} with seed {seed} repeats an earlier request; give unique ids")
    claimed.add(stem)
    video_path, sidecar_path = out_dir / f"{stem}.mp4", out_dir / f"{stem}.json"
    inputs = {
        "prompt_sha256": hashlib.sha256(request.prompt.encode()).hexdigest(),
        "images": {str(p): file_sha256(p) for p in image_paths if p.is_file()},
        "audio": {str(audio_path): file_sha256(audio_path)} if audio_path is not None else {},
    }
    settings_used = {
        "mode": mode,
        "seed": seed,
        "height": height,
        "width": width,
        "num_frames": request.num_frames,
        "solver": pipeline.solver,
        "shift": pipeline.shift,
        "steps": settings.steps,
        "max_frames": settings.max_frames,
        "long_video": settings.long_video.model_dump(),
        "negative_prompt": pipeline.negative_prompt,
        "guidance": settings.guidance.model_dump(),
    }
    key_source = json.dumps({"inputs": inputs, "settings": settings_used, "model": asdict(model)}, sort_keys=True)
    key = hashlib.sha256(key_source.encode()).hexdigest()
    sidecar = _read_sidecar(sidecar_path)
    for path in (video_path, sidecar_path):
        if path.exists() and sidecar is None:
            raise RequestError(f"{path} exists and was not written by {GENERATOR_TAG}; refusing to overwrite it "
                               "(move it or choose another output folder)")
    if sidecar is not None and sidecar.get("key") == key and video_path.is_file():
        if file_sha256(video_path) == sidecar.get("output", {}).get("sha256"):
            return RequestResult(request.id, "skipped", reason="outputs exist and match", video=str(video_path),
                                 sidecar=str(sidecar_path), notes=list(sidecar.get("notes", [])))

    # generate
    guidance = guidance_for(settings, mode)
    generator = torch.Generator().manual_seed(seed)
    tmp_video = video_path.with_name(video_path.name + ".tmp.mp4")
    pipeline_check_size(height, width)
    long_cfg = settings.long_video
    wants_long = (
        long_cfg.enabled
        and request.num_frames is None
        and audio is not None
        and frames_for_audio(len(audio), long_cfg.max_total_frames) > settings.max_frames
    )
    if wants_long:
        from humo.inference.long_video import generate_long

        output, _ = generate_long(
            pipeline, request.prompt, audio, image=image, mode=mode, height=height, width=width,
            num_inference_steps=settings.steps, guidance=guidance, generator=generator,
            window_frames=settings.max_frames, overlap_latent_frames=long_cfg.overlap_latent_frames,
            max_total_frames=long_cfg.max_total_frames, output_type="mp4", output_path=tmp_video,
            progress=settings.progress_bar, crf=settings.crf, prefix_hold=long_cfg.prefix_hold,
            seam_strength=long_cfg.seam_strength, seam_radius=long_cfg.seam_radius,
        )
    else:
        output = pipeline(
            request.prompt, image=image, audio=audio, mode=mode, height=height, width=width,
            num_frames=request.num_frames, max_frames=settings.max_frames, num_inference_steps=settings.steps,
            guidance=guidance,
            generator=generator, output_type="mp4", output_path=tmp_video, progress=settings.progress_bar,
            crf=settings.crf,
        )
    os.replace(tmp_video, video_path)
    notes += output.notes
    record = {
        "generator": GENERATOR_TAG,
        "humo_version": __version__,
        "key": key,
        "request": request.model_dump(),
        "inputs": inputs,
        "settings": settings_used,
        "guidance_schedule": guidance.describe(),
        "model": asdict(model),
        "output": {
            "video": video_path.name,
            "sha256": file_sha256(video_path),
            "num_frames": output.num_frames,
            "fps": 25,
            "seconds_of_video": output.num_frames / 25,
            "long_video": wants_long,
        },
        "timings": {k: round(v, 4) for k, v in output.timings.items()},
        "notes": notes,
    }
    _atomic_write_json(sidecar_path, record)
    return RequestResult(request.id, "generated", video=str(video_path), sidecar=str(sidecar_path), notes=notes)


def pipeline_check_size(height: int, width: int) -> None:
    """Reject absurd sizes before any work (the pipeline checks again, with the same rule)."""
    from humo.inference.pipeline import MAX_SIDE, SIZE_MULTIPLE

    for name, value in (("height", height), ("width", width)):
        if value < SIZE_MULTIPLE or value > MAX_SIDE or value % SIZE_MULTIPLE:
            raise RequestError(f"{name}={value} must be a multiple of {SIZE_MULTIPLE} between {SIZE_MULTIPLE} and "
                               f"{MAX_SIDE}")


# =====================================================================================================================
# The stage
# =====================================================================================================================


def build_pipeline(
    transformer: torch.nn.Module, generate: GenerateConfig, encoders: EncodersConfig, paths: PathsConfig
) -> HumoPipeline:
    """A pipeline with the configured encoders (the tiny VAE from ``<artifacts>/train_vae/vae``)."""
    from humo.models.encoders import load_audio_encoder, load_text_encoder, load_vae

    vae = load_vae(encoders.vae, trained_dir=paths.artifacts / "train_vae" / "vae")
    pipe = HumoPipeline(
        transformer,
        vae,
        load_text_encoder(encoders.text),
        load_audio_encoder(encoders.audio),
        solver=generate.solver,
        shift=generate.shift,
        negative_prompt=generate.negative_prompt,
        max_frames=generate.max_frames,
    )
    pipe.set_progress_bar_config(disable=not generate.progress_bar)
    return pipe


def run(
    generate: GenerateConfig,
    encoders: EncodersConfig,
    paths: PathsConfig,
    requests: Path,
    out_dir: Path,
    model: str,
) -> BatchSummary:
    """``humo generate``: load the model and encoders, then generate every request into ``out_dir``.

    Args:
        generate, encoders, paths: params sections.
        requests: ``test_case.json`` or ``.jsonl``.
        out_dir: output folder.
        model: a checkpoint folder (``artifacts/train_stage2``) or a registered ``scheme:/`` reference.
    """
    transformer, info = load_model(model)
    pipe = build_pipeline(transformer, generate, encoders, paths)
    return generate_batch(pipe, requests, out_dir, generate, info)
