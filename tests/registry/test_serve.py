"""Serving from the registry: ``humo serve`` on a free loopback port, valid and invalid requests, and the same
video from the server (a fresh process loading ``models:/<name>@champion``) as from the in-process pipeline."""

from __future__ import annotations

import base64
import concurrent.futures
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient

from humo.config import Params
from humo.data.media import read_audio, read_video
from humo.registry import mlflow_registry as reg
from humo.registry.pyfunc import build_model_folder, example_audio_base64, generate_one, load_pipeline_from_folder
from humo.registry.pyfunc import model_signature
from humo.registry.request import parse_request

from .conftest import open_store

pytestmark = pytest.mark.slow

SERVER_START_TIMEOUT_S = 240.0
REQUEST_TIMEOUT_S = 300.0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _post(port: int, payload: dict) -> tuple[int, dict]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/invocations",
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def _wait_until_up(port: int, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"server exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"server not up after {SERVER_START_TIMEOUT_S} s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def champion(tmp_path_factory: pytest.TempPathFactory, registry_params: Params, tiny_parts: dict[str, Path]):
    """A sqlite store with the tiny model registered and aliased champion; yields (uri, model folder, name)."""
    root = tmp_path_factory.mktemp("serve")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    folder = root / "model_dir"
    cfg = registry_params
    build_model_folder(folder, tiny_parts["checkpoint"], tiny_parts["vae"], cfg.encoders, cfg.generate, cfg.registry, cfg.limits, "run-a")
    previous = open_store(uri, root / "artifacts")
    client = MlflowClient(tracking_uri=uri)
    with mlflow.start_run(run_name="register"):
        version, _ = reg.register_version(
            client, cfg.registry.model_name, folder, "run-a", {"humo.metric.sync_confidence": "0.5"}, model_signature(), None,
            pip_requirements=["mlflow"],
        )
    reg.promote(client, version, cfg.registry, gate_passed=True, gate_reason="test")
    mlflow.set_tracking_uri(previous)
    return uri, folder, cfg.registry.model_name


def test_humo_serve_answers_valid_and_refuses_invalid_requests(
    champion, registry_params: Params, project_root: Path, real_data: Path, tmp_path: Path
) -> None:
    uri, folder, name = champion
    port = _free_port()
    log = tmp_path / "server.log"
    started = time.perf_counter()
    with open(log, "wb") as stream:
        process = subprocess.Popen(
            [str(Path(sys.executable).with_name("humo")), "serve", "--port", str(port), f"tracking.uri={uri}",
             f"registry.model_name={name}"],
            cwd=project_root,
            stdout=stream,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait_until_up(port, process, log)
        startup_s = time.perf_counter() - started
        valid = {"prompt": "A person in a red shirt talks.", "mode": "TA", "audio": example_audio_base64(9), "seed": 7,
                 "steps": 2}
        status, body = _post(port, {"dataframe_records": [valid]})
        assert status == 200, body
        (prediction,) = body["predictions"]
        video = base64.b64decode(prediction["video"])
        sidecar = json.loads(prediction["sidecar"])
        assert video[4:8] == b"ftyp" and sidecar["output"]["num_frames"] == 9 and sidecar["request"]["seed"] == 7
        (tmp_path / "served.mp4").write_bytes(video)
        frames, fps = read_video(tmp_path / "served.mp4")
        audio = read_audio(tmp_path / "served.mp4")  # the driving audio is muxed in
        assert frames.shape == (9, 64, 64, 3) and fps == 25
        assert abs(audio.size - 9 * 640) <= 640 and float(np.abs(audio).max()) > 0.05

        big_image = base64.b64encode((real_data / "humo_man_Jaime.png").read_bytes()).decode()
        invalid = [
            ({"mode": "TA", "audio": valid["audio"]}, "prompt"),
            ({**valid, "audio": "%%% not base64 %%%"}, "audio"),
            ({**valid, "mode": "XYZ"}, "mode"),
            ({**valid, "steps": 1000}, "steps"),
            ({**valid, "scale_audio": -1.0}, "scale_audio"),
            ({**valid, "mode": "TIA", "reference_image": big_image}, "reference_image"),
        ]
        for record, field in invalid:
            status, body = _post(port, {"dataframe_records": [record]})
            assert 400 <= status < 500, (field, status, body)
            assert field in body["message"], (field, body["message"][:300])

        # under load: six requests at once give the same six videos as the same requests one by one (one loaded
        # model serves them in turn: the VAE's causal decode cache is not re-entrant)
        loaded = [{**valid, "seed": seed} for seed in range(1, 7)]
        with concurrent.futures.ThreadPoolExecutor(len(loaded)) as pool:
            together = list(pool.map(lambda record: _post(port, {"dataframe_records": [record]}), loaded))
        assert [status for status, _ in together] == [200] * len(loaded), [b for s, b in together if s != 200]
        one_by_one = [_post(port, {"dataframe_records": [record]}) for record in loaded]
        for (_, concurrent_body), (_, sequential_body) in zip(together, one_by_one, strict=True):
            assert concurrent_body["predictions"][0]["video"] == sequential_body["predictions"][0]["video"]
        assert len({body["predictions"][0]["video"] for _, body in together}) == len(loaded)  # seeds differ

        # still up, and the same request gives the same bytes again
        status, body = _post(port, {"inputs": valid})
        assert status == 200 and body["predictions"][0]["video"] == prediction["video"]
    finally:
        process.send_signal(signal.SIGTERM)  # humo serve stops the MLflow server's process group
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2)
    print(f"server start {startup_s:.1f} s")  # noqa: T201 - reported by pytest -s

    # the fresh server process (models:/name@champion) and the in-process pipeline agree byte for byte
    pipeline, info = load_pipeline_from_folder(folder)
    request, _ = parse_request(valid, registry_params.limits, registry_params.generate, pipeline.transformer.humo_config)
    local = generate_one(pipeline, request, registry_params.generate, registry_params.limits, info)
    assert local["video"] == prediction["video"]
    assert json.loads(local["sidecar"])["output"]["video_sha256"] == sidecar["output"]["video_sha256"]
    assert np.isfinite(sidecar["timings"]["total"])
