"""Tiny real components for pipeline tests: minilm text, log-mel audio, an untrained tiny Wan VAE, a 2-layer DiT."""

from __future__ import annotations


import numpy as np
import pytest
import torch

from humo.config import AudioEncoderConfig, TextEncoderConfig
from humo.inference.pipeline import HumoPipeline
from humo.models.encoders import VideoVAE, build_tiny_vae, load_audio_encoder, load_text_encoder
from humo.models.testing import randomize_
from humo.models.transformer import HumoTransformer3D

TINY_VAE_BASE_DIM = 8


@pytest.fixture(scope="session")
def text_encoder():
    return load_text_encoder(TextEncoderConfig())


@pytest.fixture(scope="session")
def audio_encoder():
    return load_audio_encoder(AudioEncoderConfig())


@pytest.fixture(scope="session")
def tiny_vae() -> VideoVAE:
    torch.manual_seed(0)
    return VideoVAE(build_tiny_vae(TINY_VAE_BASE_DIM))


def make_transformer(reference_mode: str = "temporal", seed: int = 0, **overrides: object) -> HumoTransformer3D:
    extra: dict[str, object] = {"num_layers": 2, **overrides}
    if reference_mode == "channel":
        extra.update(reference_mode="channel", in_channels=36)
    return randomize_(HumoTransformer3D.from_preset("tiny", **extra), seed)


@pytest.fixture(scope="session")
def pipeline(text_encoder, audio_encoder, tiny_vae) -> HumoPipeline:
    pipe = HumoPipeline(make_transformer(), tiny_vae, text_encoder, audio_encoder, max_frames=17)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="session")
def channel_pipeline(text_encoder, audio_encoder, tiny_vae) -> HumoPipeline:
    pipe = HumoPipeline(make_transformer("channel", seed=1), tiny_vae, text_encoder, audio_encoder, max_frames=17)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="session")
def speech(real_data) -> np.ndarray:
    """The upstream example speech (2.26 s, 16 kHz mono)."""
    from humo.data.media import read_audio

    return read_audio(real_data / "humo_audio1.wav")


@pytest.fixture(scope="session")
def portrait(real_data) -> np.ndarray:
    """The upstream example reference portrait (816x896 RGBA)."""
    from PIL import Image

    return np.asarray(Image.open(real_data / "humo_man_Jaime.png").convert("RGB"))


@pytest.fixture
def generate_case(tmp_path, real_data):
    """What ``humo generate`` needs: a trained-checkpoint folder, a tiny VAE under ``paths.artifacts``, a JSONL of
    one good and one bad request, and the overrides for a fast run. Returns ``(checkpoint, requests, overrides)``."""
    import json

    from humo.models.checkpoints import save_trained

    model = make_transformer()
    state = model.state_dict()
    checkpoint = save_trained(
        tmp_path / "train_stage2", state, state,
        config={"stage": 2, "preset": "tiny", "transformer": model.humo_config.model_dump(mode="json"), "params": {}},
        run={"run_id": "run123", "checkpoint": "ema.safetensors"},
    )
    build_tiny_vae(TINY_VAE_BASE_DIM).save_pretrained(tmp_path / "artifacts" / "train_vae" / "vae")
    requests = tmp_path / "requests.jsonl"
    requests.write_text(
        json.dumps({"id": "ok", "prompt": "a man talks", "img_paths": [str(real_data / "humo_man_Jaime.png")],
                    "audio_path": str(real_data / "humo_audio1.wav")}) + "\n"
        + json.dumps({"id": "bad", "prompt": "a man talks", "audio_path": "missing.wav", "mode": "TA"}) + "\n"
    )
    overrides = [f"paths.artifacts={tmp_path / 'artifacts'}", "generate.steps=2", "generate.height=32",
                 "generate.width=32", "generate.max_frames=9", "generate.progress_bar=false"]
    return checkpoint, requests, overrides


@pytest.fixture(scope="session")
def model_factory():
    """``make_transformer`` for tests that need their own model (e.g. to save a checkpoint)."""
    return make_transformer
