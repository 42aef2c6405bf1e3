"""Encoders: the embedded ones for real (MiniLM, log-mel), the real architectures as tiny random models from
configs saved to tmp_path (umT5, Whisper, AutoencoderKLWan); no download."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from humo.config import AudioEncoderConfig, TextEncoderConfig, VaeConfig
from humo.features.audio import window_audio_features
from humo.models.encoders import (
    NEGATIVE_PROMPT,
    WAN_NEGATIVE_PROMPT,
    build_tiny_vae,
    clean_prompt,
    frames_to_tensor,
    group_hidden_states,
    interpolate_rows,
    letterbox_image,
    load_audio_encoder,
    load_text_encoder,
    load_vae,
    minilm_folder,
    tensor_to_frames,
)

SR = 16_000
SPF = 640  # samples per 25 fps frame


# -----------------------------------------------------------------------------------------------------
# Text
# -----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def minilm():
    return load_text_encoder(TextEncoderConfig(kind="minilm", max_length=32))


def _token_counts(encoder, prompts: list[str]) -> list[int]:
    batch = encoder.tokenizer([clean_prompt(p) for p in prompts], truncation=True, max_length=encoder.max_length)
    return [len(ids) for ids in batch["input_ids"]]


def test_minilm_states_are_zero_past_each_prompt(minilm) -> None:
    prompts = ["A person in a green shirt talks.", "Someone nods in front of a striped blue wall, smiling a lot."]
    states = minilm.encode(prompts)
    assert states.shape == (2, 32, 384) and states.dtype == torch.float32
    assert minilm.dim == 384 and minilm.max_length == 32
    nonzero = (states.abs().sum(-1) > 0).sum(1).tolist()
    assert nonzero == _token_counts(minilm, prompts)
    assert nonzero[0] < nonzero[1] < 32
    # the same prompt in another batch gives the same states; different prompts differ
    torch.testing.assert_close(minilm.encode(prompts[:1])[0], states[0], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(states[0, 1], states[1, 1])


def test_minilm_truncates_long_prompts_and_keeps_meaning(minilm) -> None:
    states = minilm.encode(["word " * 200, NEGATIVE_PROMPT])
    assert (states.abs().sum(-1) > 0).sum(1).tolist() == [32, 32]
    assert minilm.negative_prompt == NEGATIVE_PROMPT
    # mean-pooled states of paraphrases are closer than unrelated sentences (a real pretrained encoder)
    a, b, c = minilm.encode(["a man is talking", "a person speaks", "striped blue wallpaper pattern"])
    cos = lambda x, y: F.cosine_similarity(x.sum(0), y.sum(0), dim=0)  # noqa: E731
    assert cos(a, b) > cos(a, c)


def test_text_encoder_rejects_a_bare_string(minilm) -> None:
    with pytest.raises(ValueError, match="list of strings"):
        minilm.encode("a person talks")


def test_clean_prompt_as_upstream() -> None:
    assert clean_prompt("  a &amp;amp; b \n\t c  ") == "a & b c"


@pytest.fixture(scope="module")
def tiny_wan_text_folder(tmp_path_factory) -> Path:
    """A diffusers-format Wan2.1 folder with a tiny random umT5 encoder and a local tokenizer of matching vocab."""
    from transformers import AutoTokenizer, UMT5Config, UMT5EncoderModel

    root = tmp_path_factory.mktemp("wan")
    tokenizer = AutoTokenizer.from_pretrained(minilm_folder())
    tokenizer.save_pretrained(root / "tokenizer")
    torch.manual_seed(0)
    config = UMT5Config(vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4)
    UMT5EncoderModel(config).save_pretrained(root / "text_encoder")
    return root


def test_umt5_from_a_local_wan_folder(tiny_wan_text_folder: Path) -> None:
    encoder = load_text_encoder(TextEncoderConfig(kind="umt5", path=tiny_wan_text_folder, max_length=512))
    assert encoder.dim == 32 and encoder.max_length == 512
    assert encoder.negative_prompt == WAN_NEGATIVE_PROMPT
    prompts = ["a person &amp;amp; a wall", "a   person & a wall"]
    states = encoder.encode(prompts)
    assert states.shape == (2, 512, 32)
    # upstream's cleaning makes both prompts the same text
    torch.testing.assert_close(states[0], states[1])
    count = _token_counts(encoder, prompts)[0]
    assert (states[0].abs().sum(-1) > 0).sum().item() == count
    assert states[0, count:].abs().max().item() == 0.0


def test_umt5_missing_folder_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'tokenizer'}"):
        load_text_encoder(TextEncoderConfig(kind="umt5", path=tmp_path))


# -----------------------------------------------------------------------------------------------------
# Audio
# -----------------------------------------------------------------------------------------------------


def _bursts(num_frames: int, loud_frames: range, seed: int = 0) -> np.ndarray:
    """Silence with a harmonic burst over the given 25 fps frames."""
    audio = np.zeros(num_frames * SPF, dtype=np.float32)
    t = np.arange(len(loud_frames) * SPF) / SR
    tone = 0.3 * (np.sin(2 * np.pi * 180 * t) + 0.5 * np.sin(2 * np.pi * 360 * t))
    audio[loud_frames.start * SPF : loud_frames.stop * SPF] = tone
    return audio + np.random.default_rng(seed).normal(0, 1e-4, audio.shape).astype(np.float32)


def test_logmel_rows_follow_the_audio() -> None:
    encoder = load_audio_encoder(AudioEncoderConfig(kind="logmel"))
    assert (encoder.groups, encoder.channels) == (1, 80)
    audio = _bursts(33, range(10, 20))
    rows = encoder.features(audio, 33)
    assert rows.shape == (33, 1, 80) and rows.dtype == torch.float32
    energy = rows[:, 0].max(-1).values  # the loudest mel bin of each frame
    assert energy[11:19].min() > energy[:8].max() + 0.5  # loud frames stand out
    assert energy[22:].max() < energy[11:19].min()
    assert window_audio_features(rows, 33).shape == (9, 8, 1, 80)


def test_logmel_zero_rows_past_the_audio_and_trims_longer_audio() -> None:
    encoder = load_audio_encoder(AudioEncoderConfig(kind="logmel"))
    audio = _bursts(10, range(2, 8))
    rows = encoder.features(audio, 17)
    assert rows[:10].abs().sum(-1).min() > 0
    assert rows[10:].abs().max() == 0
    longer = encoder.features(_bursts(40, range(2, 8)), 17)
    assert longer.shape == (17, 1, 80)
    assert encoder.features(audio[:100], 5).abs().max() == 0  # less than one frame of audio


@pytest.mark.parametrize("bad", [np.zeros((2, 6400), np.float32), np.zeros(6400, np.int16)])
def test_audio_encoder_rejects_wrong_dims(bad: np.ndarray) -> None:
    encoder = load_audio_encoder(AudioEncoderConfig(kind="logmel"))
    with pytest.raises(ValueError, match=str(bad.shape) if bad.ndim == 2 else "int16"):
        encoder.features(bad, 9)


def test_interpolate_rows_is_linear_with_aligned_corners() -> None:
    ramp = torch.arange(66, dtype=torch.float32)[:, None, None].repeat(1, 2, 3)
    out = interpolate_rows(ramp, 33)
    assert out.shape == (33, 2, 3)
    torch.testing.assert_close(out[:, 0, 0], torch.linspace(0, 65, 33))


def test_group_hidden_states_as_upstream() -> None:
    states = torch.arange(33, dtype=torch.float32)[None, :, None].repeat(7, 1, 2)  # hidden state k holds k
    grouped = group_hidden_states(states)
    assert grouped.shape == (7, 5, 2)
    assert grouped[0, :, 0].tolist() == [3.5, 11.5, 19.5, 27.5, 32.0]
    with pytest.raises(ValueError, match="from 6 layers"):
        group_hidden_states(torch.zeros(3, 7, 2))


@pytest.fixture(scope="module")
def tiny_whisper_folder(tmp_path_factory) -> Path:
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperModel

    folder = tmp_path_factory.mktemp("whisper")
    torch.manual_seed(0)
    config = WhisperConfig(
        vocab_size=64, pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1,
        num_mel_bins=80, d_model=16, encoder_layers=4, encoder_attention_heads=2,
        decoder_layers=1, decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
        max_source_positions=1500, max_target_positions=16,
    )
    WhisperModel(config).save_pretrained(folder)
    WhisperFeatureExtractor(feature_size=80).save_pretrained(folder)
    return folder


def test_whisper_features_follow_upstream(tiny_whisper_folder: Path) -> None:
    from transformers import WhisperFeatureExtractor, WhisperModel

    encoder = load_audio_encoder(AudioEncoderConfig(kind="whisper", path=tiny_whisper_folder))
    assert (encoder.groups, encoder.channels) == (5, 16)
    audio = _bursts(33, range(5, 25))
    rows = encoder.features(audio, 37)
    assert rows.shape == (37, 5, 16)
    assert rows[33:].abs().max() == 0 and rows[:33].abs().sum(-1).min() > 0

    # the same computation spelled out: 30 s log-mel, all hidden states, groups of 1 layer + last, 50 -> 25 Hz
    mel = WhisperFeatureExtractor.from_pretrained(tiny_whisper_folder)(audio, sampling_rate=SR, return_tensors="pt")
    with torch.no_grad():
        hidden = WhisperModel.from_pretrained(tiny_whisper_folder).encoder(
            mel["input_features"], output_hidden_states=True
        ).hidden_states
    assert len(hidden) == 5
    stacked = torch.stack(hidden, dim=2)[0, :66]  # [66, 5, 16]: trimmed to 2 * 33 rows at 50 Hz
    expected = F.interpolate(stacked.flatten(1).T[None], size=33, mode="linear", align_corners=True)[0].T
    torch.testing.assert_close(rows[:33], expected.reshape(33, 5, 16), atol=1e-5, rtol=1e-4)


def test_whisper_chunks_long_audio(tiny_whisper_folder: Path) -> None:
    encoder = load_audio_encoder(AudioEncoderConfig(kind="whisper", path=tiny_whisper_folder))
    audio = _bursts(800, range(740, 790))  # 32 s: two 30 s chunks
    rows = encoder.features(audio, 801)
    assert rows.shape == (801, 5, 16)
    assert rows[:800].abs().sum(-1).min() > 0 and rows[800:].abs().max() == 0
    # 50 Hz rows of the second 30 s chunk (from 1500 on) equal those of encoding that chunk alone
    both = encoder.features_50hz(audio)
    assert both.shape == (3000, 5, 16)
    torch.testing.assert_close(both[1500:], encoder.features_50hz(audio[30 * SR :]), atol=1e-5, rtol=1e-4)
    assert not torch.allclose(both[:1500], both[1500:], atol=1e-2)


def test_whisper_missing_folder_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=f"{tmp_path} has no config.json"):
        load_audio_encoder(AudioEncoderConfig(kind="whisper", path=tmp_path))


# -----------------------------------------------------------------------------------------------------
# VAE
# -----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_vae_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("vae")
    torch.manual_seed(0)
    vae = build_tiny_vae(base_dim=8)
    vae.register_to_config(latents_mean=[0.1 * c for c in range(16)], latents_std=[1.0 + 0.5 * c for c in range(16)])
    vae.save_pretrained(folder)
    return folder


def test_vae_encode_decode_shapes_and_normalisation(tiny_vae_folder: Path) -> None:
    from diffusers import AutoencoderKLWan

    vae = load_vae(VaeConfig(kind="tiny"), trained_dir=tiny_vae_folder)
    video = torch.rand(2, 3, 9, 32, 48, generator=torch.Generator().manual_seed(0)) * 2 - 1
    latents = vae.encode(video)
    assert latents.shape == (2, 16, 3, 4, 6)
    raw = AutoencoderKLWan.from_pretrained(tiny_vae_folder).encode(video).latent_dist.mode()
    mean = torch.tensor([0.1 * c for c in range(16)]).view(1, 16, 1, 1, 1)
    std = torch.tensor([1.0 + 0.5 * c for c in range(16)]).view(1, 16, 1, 1, 1)
    torch.testing.assert_close(latents, (raw - mean) / std, atol=1e-5, rtol=1e-5)
    decoded = vae.decode(latents)
    assert decoded.shape == video.shape and decoded.min() >= -1 and decoded.max() <= 1
    image = vae.encode_image(video[:, :, 0])
    assert image.shape == (2, 16, 1, 4, 6)
    torch.testing.assert_close(image, latents[:, :, :1], atol=1e-5, rtol=1e-5)  # causal: frame 0 alone


def test_vae_wan_kind_reads_the_vae_subfolder(tiny_vae_folder: Path, tmp_path: Path) -> None:
    (tmp_path / "vae").symlink_to(tiny_vae_folder, target_is_directory=True)
    vae = load_vae(VaeConfig(kind="wan", path=tmp_path))
    assert vae.latents_std.flatten()[2].item() == pytest.approx(2.0)


def test_vae_bad_inputs(tiny_vae_folder: Path, tmp_path: Path) -> None:
    vae = load_vae(VaeConfig(kind="tiny", path=tiny_vae_folder))
    with pytest.raises(ValueError, match=r"8 frames .*4k\+1.*cut it to 5"):
        vae.encode(torch.zeros(1, 3, 8, 32, 32))
    with pytest.raises(ValueError, match=r"\[batch, 3, frames, height, width\], got shape \(3, 9, 32, 32\)"):
        vae.encode(torch.zeros(3, 9, 32, 32))
    with pytest.raises(ValueError, match="outside \\[-1, 1\\]"):
        vae.encode(torch.full((1, 3, 5, 32, 32), 255.0))
    with pytest.raises(ValueError, match="multiples of 8"):
        vae.encode(torch.zeros(1, 3, 5, 30, 32))
    with pytest.raises(ValueError, match=r"\[batch, 16, latent_frames, h, w\], got shape \(1, 4, 2, 4, 4\)"):
        vae.decode(torch.zeros(1, 4, 2, 4, 4))
    with pytest.raises(FileNotFoundError, match="humo train-vae"):
        load_vae(VaeConfig(kind="tiny"))
    with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'vae'} has no config.json"):
        load_vae(VaeConfig(kind="wan", path=tmp_path))


# -----------------------------------------------------------------------------------------------------
# Pixels
# -----------------------------------------------------------------------------------------------------


def test_letterbox_keeps_aspect_and_pads_white() -> None:
    wide = np.zeros((20, 40, 3), np.uint8)  # h=20, w=40: black
    out = letterbox_image(wide, 64, 64)
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    assert (out[:16] == 255).all() and (out[48:] == 255).all()  # 16 white rows above and below
    assert (out[17:47] < 10).all()
    tall = Image.new("RGB", (10, 40), (0, 0, 200))
    out = letterbox_image(tall, 32, 64)  # fit height 32 -> width 8, pad 28 columns each side
    assert (out[:, :28] == 255).all() and (out[:, 36:] == 255).all()
    assert (out[:, 29:35, 2] > 150).all() and (out[:, 29:35, 0] < 50).all()
    same = np.random.default_rng(0).integers(0, 256, (16, 24, 3), dtype=np.uint8)
    assert np.array_equal(letterbox_image(same, 16, 24), same)  # right size: untouched
    with pytest.raises(ValueError, match="uint8"):
        letterbox_image(same.astype(np.float32), 16, 24)


def test_pixel_round_trip() -> None:
    frames = np.random.default_rng(0).integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
    tensor = frames_to_tensor(frames)
    assert tensor.shape == (3, 5, 8, 8) and tensor.min() >= -1 and tensor.max() <= 1
    assert np.array_equal(tensor_to_frames(tensor), frames)
    assert frames_to_tensor(frames[0]).shape == (3, 8, 8)
