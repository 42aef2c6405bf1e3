"""Tiny real components for pipeline tests: minilm text, log-mel audio, an untrained tiny Wan VAE, a 2-layer DiT."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from humo.config import AudioEncoderConfig, TextEncoderConfig
from humo.inference.pipeline import HumoPipeline
from humo.models.encoders import VideoVAE, build_tiny_vae, load_audio_encoder, load_text_encoder
from humo.models.transformer import HumoTransformer3D

TINY_VAE_BASE_DIM = 8


def randomize_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial random weights everywhere (init zeroes the head and the audio output, which would hide bugs)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            param.copy_(1 + 0.1 * noise if "norm" in name else noise / math.sqrt(max(param.shape[-1], 1)))
    return model.eval()


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


@pytest.fixture(scope="session")
def model_factory():
    """``make_transformer`` for tests that need their own model (e.g. to save a checkpoint)."""
    return make_transformer
