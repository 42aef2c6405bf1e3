"""Batch generation: a requests file -> one mp4 (H.264 + the driving audio as AAC, 25 fps) and one JSON sidecar each.

Requests come in upstream's ``test_case.json`` format (``{case: {img_paths: [...], audio_path, prompt}}``, paths
relative to the request file) or as JSONL (one object per line with an ``id``). Besides upstream's three fields a
request may set any setting of :class:`humo.inference.generate.GenerationRequest` (``seed``, ``mode``, ``steps``,
``num_frames``, ``height``, ``width``, ``scale_text``, ``scale_image``, ``scale_audio``, ``negative_prompt``); any
other field fails that request. Every request goes through :func:`humo.inference.generate.generate`, with the same
limits (``params.limits``) as serving.

Guarantees:

- **A bad request never stops the batch**: it is recorded as failed with a clear reason in ``summary.json``
  (missing or unreadable image, missing, corrupt or empty audio, a mode needing an image given none, absurd
  sizes or frame counts, unknown fields). Audio at any sample rate or channel count is resampled to 16 kHz mono;
  silent audio is allowed and noted.
- **Idempotent and resumable**: each output's sidecar records a key over the inputs' hashes, the settings and the
  model; a request whose mp4 and sidecar exist with the same key (and the mp4's recorded hash) is skipped. Files are
  written as a pair that a killed batch can always complete or redo (:func:`humo.inference.generate.write_outputs`):
  a rerun finishes a pair cut between its renames and deletes temporary files.
- **Safe names**: outputs are ``<safe id>_seed<seed>.mp4`` with the id reduced to ``[A-Za-z0-9._-]`` (plus a short
  hash when anything was replaced), so no id can reach outside the output folder; an existing file that is not a
  humo output (no sidecar of ours) is never overwritten.

Model references: a trained checkpoint folder (contract 3) or a ``scheme:/`` reference with a resolver passed in
(the CLI passes the registry's for ``models:/name@alias``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from humo.config import EncodersConfig, GenerateConfig, ModelConfig, PathsConfig, RequestLimitsConfig
from humo.inference.generate import (
    REQUEST_FIELDS,
    GenerationRequest,
    InvalidRequestError,
    ModelInfo,
    ModelResolver,
    atomic_write_json,
    build_pipeline,
    file_sha256,
    follow,
    generate,
    attach_adapters,
    load_model,
    read_audio_input,
    read_image,
    read_sidecar,
    recover_outputs,
)
from humo.inference.parallel import ParallelRankError, init_runtime
from humo.inference.pipeline import HumoPipeline

logger = logging.getLogger(__name__)

SAFE_ID_CHARS = re.compile(r"[^A-Za-z0-9._-]+")
MAX_ID_LENGTH = 80
ID_HASH_CHARS = 8
SUMMARY_FILE = "summary.json"
FIELD_NAMES = {"image": "img_paths", "audio": "audio_path"}
"""Request fields as upstream's test_case.json names them (errors name the field the user wrote)."""
FILE_FIELDS = ("img_paths", "audio_path")


# =====================================================================================================================
# Requests
# =====================================================================================================================


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



def _resolve(base: Path, text: str, path_map: Mapping[str, str | Path] | None) -> Path:
    if path_map and text in path_map:
        return Path(path_map[text])
    path = Path(text)
    return path if path.is_absolute() else base / path


def load_request(
    raw: RawRequest, base: Path, limits: RequestLimitsConfig, path_map: Mapping[str, str | Path] | None
) -> GenerationRequest:
    """A request-file entry -> a :class:`GenerationRequest` with its files read (paths relative to ``base``).

    Raises:
        InvalidRequestError: unreadable entry, unknown field, bad value, missing or unreadable file.
    """
    if raw.fields is None:
        raise InvalidRequestError("request", raw.error or "unreadable request")
    fields = dict(raw.fields)
    unknown = sorted(set(fields) - set(REQUEST_FIELDS) - set(FILE_FIELDS))
    if unknown:
        allowed = ", ".join((*REQUEST_FIELDS, *FILE_FIELDS))
        raise InvalidRequestError(unknown[0], f"unknown field (allowed: {allowed})")
    img_paths, audio_path = fields.pop("img_paths", None) or [], fields.pop("audio_path", None)
    if not isinstance(img_paths, list) or not all(isinstance(p, str) for p in img_paths):
        raise InvalidRequestError("img_paths", f"must be a list of image paths, got {img_paths!r:.60}")
    if audio_path is not None and not isinstance(audio_path, str):
        raise InvalidRequestError("audio_path", f"must be a path, got {audio_path!r:.60}")
    GenerationRequest.from_fields(fields)  # the settings fail before any file is read
    inputs, notes = {}, []
    if img_paths:
        path = _resolve(base, img_paths[0], path_map)
        fields["image"] = read_image(path, limits, name="img_paths")
        inputs[f"image:{path}"] = file_sha256(path)
        if len(img_paths) > 1:
            # Deviation from upstream: upstream appends one reference frame per image; we use the first only.
            notes.append(f"{len(img_paths)} reference images given; only the first is used")
    if audio_path is not None:
        path = _resolve(base, audio_path, path_map)
        fields["audio"] = read_audio_input(path, name="audio_path")
        inputs[f"audio:{path}"] = file_sha256(path)
    inputs["prompt"] = hashlib.sha256(str(fields.get("prompt", "")).encode()).hexdigest()
    return GenerationRequest.from_fields({**fields, "inputs": inputs, "notes": tuple(notes)})


def _idempotency_key(request: GenerationRequest, settings: GenerateConfig, model: ModelInfo) -> str:
    """A key over the inputs' checksums, the request's settings, the ``generate`` section and the model."""
    source = {
        "request": request.describe(),
        "settings": settings.model_dump(mode="json", exclude={"progress_bar", "parallel"}),
        "model": model.describe(),
    }
    return hashlib.sha256(json.dumps(source, sort_keys=True).encode()).hexdigest()


def generate_batch(
    pipeline: HumoPipeline,
    requests_path: str | Path,
    out_dir: str | Path,
    settings: GenerateConfig,
    limits: RequestLimitsConfig,
    model: ModelInfo,
    path_map: Mapping[str, str | Path] | None = None,
) -> BatchSummary:
    """Generate every request of ``requests_path`` into ``out_dir``; bad requests are recorded, not raised.

    Args:
        pipeline: a ready :class:`HumoPipeline`.
        requests_path: upstream ``test_case.json`` or ``.jsonl``.
        out_dir: output folder (created).
        settings: the ``generate`` section (defaults for seed, sizes, steps; guidance, long videos).
        limits: the ``limits`` section (the same as serving's).
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
            request = load_request(raw, requests_path.parent, limits, path_map)
            result = _generate_one(pipeline, request, out_dir, settings, limits, model, claimed)
        except (InvalidRequestError, ParallelRankError) as err:
            # A bad request (or one another rank could not run) must not stop the batch: record the reason, go on.
            reason = str(err.renamed(FIELD_NAMES)) if isinstance(err, InvalidRequestError) else str(err)
            logger.warning("request %s failed: %s", raw.id, reason)
            result = RequestResult(raw.id, "failed", reason=reason)
        result.seconds = round(time.perf_counter() - tick, 3)
        results.append(result)
    summary = BatchSummary(results)
    atomic_write_json(out_dir / SUMMARY_FILE, summary.to_dict())
    logger.info(
        "batch %s: %d generated, %d skipped, %d failed -> %s",
        requests_path.name,
        summary.count("generated"),
        summary.count("skipped"),
        summary.count("failed"),
        out_dir,
    )
    return summary


def _claim_outputs(request: GenerationRequest, seed: int, out_dir: Path, claimed: set[str]) -> tuple[Path, Path]:
    """The request's mp4 and sidecar paths, after finishing what a killed run left; refuses foreign files."""
    stem = safe_output_stem(request.id, seed)
    if stem in claimed:
        raise InvalidRequestError("id", f"{request.id!r} with seed {seed} repeats an earlier request; give unique ids")
    claimed.add(stem)
    video_path, sidecar_path = out_dir / f"{stem}.mp4", out_dir / f"{stem}.json"
    recovered = recover_outputs(video_path, sidecar_path)
    if recovered:
        logger.info("request %s: %s (left by an interrupted run)", request.id, recovered)
    if read_sidecar(sidecar_path) is None:
        for path in (video_path, sidecar_path):
            if path.exists():
                raise InvalidRequestError(
                    "id", f"{path} exists and was not written by humo generate; refusing to overwrite it (move it "
                    "or choose another output folder)"
                )
    return video_path, sidecar_path


def _generate_one(
    pipeline: HumoPipeline,
    request: GenerationRequest,
    out_dir: Path,
    settings: GenerateConfig,
    limits: RequestLimitsConfig,
    model: ModelInfo,
    claimed: set[str],
) -> RequestResult:
    seed = settings.seed if request.seed is None else request.seed
    video_path, sidecar_path = _claim_outputs(request, seed, out_dir, claimed)
    key = _idempotency_key(request, settings, model)
    sidecar = read_sidecar(sidecar_path)
    if sidecar is not None and sidecar.get("key") == key and video_path.is_file():
        if file_sha256(video_path) == sidecar.get("output", {}).get("sha256"):
            return RequestResult(request.id, "skipped", reason="outputs exist and match", video=str(video_path),
                                 sidecar=str(sidecar_path), notes=list(sidecar.get("notes", [])))
    result = generate(pipeline, request, settings, limits, video_path=video_path, sidecar_path=sidecar_path,
                      model=model, extra_record={"key": key})
    return RequestResult(request.id, "generated", video=str(video_path), sidecar=str(sidecar_path),
                         notes=result.notes)


# =====================================================================================================================
# The stage
# =====================================================================================================================


def run(
    generate: GenerateConfig,
    limits: RequestLimitsConfig,
    encoders: EncodersConfig,
    paths: PathsConfig,
    requests: Path,
    out_dir: Path,
    model: str,
    resolvers: Mapping[str, ModelResolver] | None = None,
    model_cfg: ModelConfig | None = None,
) -> BatchSummary:
    """``humo generate``: load the model and encoders, then generate every request into ``out_dir``.

    Under torchrun (``generate.parallel.sequence_parallel: N``) every rank loads the model; rank 0 runs the batch
    and the others follow it (:func:`humo.inference.generate.follow`) and return an empty summary.

    Args:
        generate, limits, encoders, paths: params sections.
        requests: ``test_case.json`` or ``.jsonl``.
        out_dir: output folder.
        model: a checkpoint folder (``artifacts/train_stage2``) or a ``scheme:/`` reference.
        resolvers: scheme -> resolver for ``scheme:/`` references (the CLI passes the registry's ``models``).
        model_cfg: the ``model`` section: LoRA adapters to put on the model (``model.adapters``, merged or not).
    """
    runtime = init_runtime(generate.parallel)
    transformer, info = load_model(model, resolvers, in_place=generate.memory.load_in_place)
    if model_cfg is not None:
        transformer, info = attach_adapters(transformer, info, model_cfg.adapters, model_cfg.merge_adapters)
    pipe = build_pipeline(transformer, generate, encoders, paths.vae_dir, limits, parallel=runtime)
    if runtime is None:
        return generate_batch(pipe, requests, out_dir, generate, limits, info)
    try:
        if not runtime.is_main:
            logger.info("rank %d: took part in %d request(s)", runtime.rank, follow(pipe))
            return BatchSummary([])
        try:
            return generate_batch(pipe, requests, out_dir, generate, limits, info)
        finally:
            runtime.close()
    finally:
        runtime.shutdown()
