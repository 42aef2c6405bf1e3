"""Serving: ``humo serve`` runs MLflow's scoring server on ``models:/<name>@<alias>`` (champion by default).

    humo serve                          # models:/humo@champion on 127.0.0.1:5001
    humo serve --alias candidate --port 5002

It runs ``mlflow models serve -m models:/<name>@<alias> --env-manager local -h HOST -p PORT`` with the tracking
URI from params (the registry lives in the tracking store) and this Python's ``bin`` folder first on ``PATH``
(MLflow starts ``uvicorn`` by name). A request (JSON, ``dataframe_records`` or ``inputs``)::

    curl -s -H 'Content-Type: application/json' http://127.0.0.1:5001/invocations \\
      -d '{"dataframe_records": [{"prompt": "A person in a red shirt talks.", "mode": "TA", "audio": "<base64 wav>"}]}'

answers ``{"predictions": [{"video": "<base64 mp4>", "sidecar": "<json>"}]}``; a bad field answers HTTP 400 with
``{"error_code": "INVALID_PARAMETER_VALUE", "message": "... <field>: <what is wrong>"}``.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from humo.config import RegistryConfig, TrackingConfig
from humo.inference.parallel import SEQUENCE_PARALLEL_ENV

logger = logging.getLogger(__name__)

SERVER_WORKERS = 1
"""Scoring-server workers: one pipeline in memory (generation is compute-bound; add replicas, not workers)."""


def model_uri(name: str, alias: str) -> str:
    """``models:/<name>@<alias>``."""
    if not alias or "/" in alias or "@" in alias:
        raise ValueError(f"alias {alias!r} is not a registry alias; use e.g. 'champion' or 'candidate'")
    return f"models:/{name}@{alias}"


def serve_command(uri: str, host: str, port: int, timeout_s: int, workers: int = SERVER_WORKERS) -> list[str]:
    """The ``mlflow models serve`` command line (local environment: no conda/virtualenv is built)."""
    mlflow_cli = Path(sys.executable).with_name("mlflow")
    program = [str(mlflow_cli)] if mlflow_cli.is_file() else [sys.executable, "-m", "mlflow"]
    options = ["--env-manager", "local", "-h", host, "-p", str(port), "-t", str(timeout_s), "-w", str(workers)]
    return [*program, "models", "serve", "-m", uri, *options]


def serve_environment(tracking_uri: str, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment of the server: the tracking URI, this Python's ``bin`` first on PATH, no telemetry."""
    env = dict(os.environ if base is None else base)
    env["MLFLOW_TRACKING_URI"] = tracking_uri
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.setdefault("MLFLOW_ENABLE_TELEMETRY", "false")
    env.setdefault("DO_NOT_TRACK", "1")
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    return env


def start_server(
    registry: RegistryConfig,
    tracking: TrackingConfig,
    alias: str | None = None,
    host: str | None = None,
    port: int | None = None,
    log_file: Path | None = None,
    sequence_parallel: int = 1,
) -> subprocess.Popen:
    """Start the scoring server in the background; the caller stops it (``terminate()``).

    Args:
        registry: model name, default alias source (``champion_alias``), host and port.
        tracking: where the registry is.
        alias, host, port: override ``registry``'s.
        log_file: where the server's output goes (None: inherit this process's streams).
        sequence_parallel: processes each video is split over (the server starts the helpers itself).
    """
    uri = model_uri(registry.model_name, alias or registry.champion_alias)
    command = serve_command(uri, host or registry.host, port or registry.port, registry.timeout_s)
    logger.info("serving %s at http://%s:%d (%s)", uri, host or registry.host, port or registry.port, " ".join(command))
    stream = open(log_file, "ab") if log_file is not None else None  # noqa: SIM115 - handed to the child process
    env = serve_environment(tracking.uri)
    if sequence_parallel > 1:
        env[SEQUENCE_PARALLEL_ENV] = str(sequence_parallel)
    try:
        return subprocess.Popen(
            command,
            env=env,
            stdout=stream,
            stderr=subprocess.STDOUT if stream is not None else None,
            start_new_session=True,
        )
    finally:
        if stream is not None:
            stream.close()


def stop_server(process: subprocess.Popen, timeout_s: float = 20.0) -> int:
    """Stop a server from :func:`start_server` and its workers (its own process group); returns the exit code."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
    return process.wait()


def run(
    registry: RegistryConfig,
    tracking: TrackingConfig,
    alias: str | None = None,
    host: str | None = None,
    port: int | None = None,
    sequence_parallel: int = 1,
) -> int:
    """Serve in the foreground until Ctrl-C or SIGTERM, then stop the server and its workers; returns its exit code.

    ``sequence_parallel`` (``generate.parallel.sequence_parallel``): split each video over that many processes.
    """
    process = start_server(registry, tracking, alias=alias, host=host, port=port, sequence_parallel=sequence_parallel)

    def _interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        return process.wait()
    except KeyboardInterrupt:
        logger.info("stopping the server")
        return stop_server(process)
    finally:
        signal.signal(signal.SIGTERM, previous)
