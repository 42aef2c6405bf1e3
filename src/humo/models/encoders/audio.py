"""Audio encoders: one feature row per 25 fps video frame, as HuMo's audio windows expect.

Both kinds follow upstream's pipeline (humo-reference.md 1.4 steps 1-5): features at 50 Hz, trimmed to twice
the number of whole video frames in the audio, resampled to 25 Hz by linear interpolation
(``align_corners=True``), then zero rows past the audio's end up to the clip's frame count. Windowing per
latent frame is :func:`humo.features.audio.window_audio_features`, shared by both kinds.

* ``logmel`` (embedded): librosa log-mel, 80 bins, 25 ms windows every 20 ms (50 Hz, like Whisper's encoder
  output rate), normalised like Whisper's log-mel; ``[num_frames, 1, 80]``.
* ``whisper`` (real): Whisper-large-v3's encoder on 30 s chunks with every hidden state returned, reduced to 5
  groups (means of hidden states 0-7, 8-15, 16-23, 24-31 and the last one alone); ``[num_frames, 5, 1280]``.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from humo.config import AudioEncoderConfig
from humo.constants import AUDIO_FEATURE_RATE, AUDIO_SAMPLE_RATE, SAMPLES_PER_VIDEO_FRAME

logger = logging.getLogger(__name__)

LOGMEL_BINS = 80
"""Mel bins of the embedded features (Whisper up to v2 used 80; large-v3 uses 128)."""
LOGMEL_WINDOW = 400
"""STFT window of the embedded features: 25 ms at 16 kHz, as Whisper's feature extractor."""
LOGMEL_HOP = AUDIO_SAMPLE_RATE // AUDIO_FEATURE_RATE  # 320
"""20 ms hop: 50 frames per second, the rate of Whisper's encoder output (its 100 Hz mel, halved by a stride-2 conv)."""
LOG_FLOOR = 1e-10
LOG_DYNAMIC_RANGE = 8.0
"""Whisper's log-mel normalisation: log10, clamp to (max - 8), then (x + 4) / 4."""
WHISPER_CHUNK_SECONDS = 30
"""Whisper encodes fixed 30 s windows (3000 mel frames, 1500 encoder frames)."""
WHISPER_LAYER_GROUPS = 4
"""Upstream averages the hidden states before the last in 4 contiguous groups, then adds the last one alone."""


def interpolate_rows(features: torch.Tensor, num_rows: int) -> torch.Tensor:
    """Linear resampling along time, ``align_corners=True`` as upstream (50 Hz -> 25 Hz).

    Args:
        features: ``[T, G, C]``.
        num_rows: output rows.

    Returns:
        ``[num_rows, G, C]`` (float32).
    """
    if num_rows == 0 or features.shape[0] == 0:
        return features.new_zeros(num_rows, *features.shape[1:], dtype=torch.float32)
    length, groups, channels = features.shape
    flat = features.float().reshape(length, groups * channels).T[None]  # [1, G*C, T]
    out = F.interpolate(flat, size=num_rows, mode="linear", align_corners=True)
    return out[0].T.reshape(num_rows, groups, channels)


def rows_per_video_frame(features_50hz: torch.Tensor, num_samples: int, num_frames: int) -> torch.Tensor:
    """Upstream's 50 Hz -> 25 Hz step, then zero rows up to ``num_frames``.

    ``audio_len = num_samples // 640`` whole video frames are in the audio; the 50 Hz features are trimmed to
    ``2 * audio_len`` rows and resampled to ``audio_len`` rows; rows past ``num_frames`` are dropped (audio longer
    than the video is ignored) and missing rows are zeros (audio shorter than the video).

    Args:
        features_50hz: ``[T50, G, C]``.
        num_samples: audio length in samples at 16 kHz.
        num_frames: video frames wanted.

    Returns:
        ``[num_frames, G, C]`` float32.
    """
    audio_len = num_samples // SAMPLES_PER_VIDEO_FRAME
    trimmed = features_50hz[: 2 * audio_len]
    rows = interpolate_rows(trimmed, trimmed.shape[0] // 2)  # upstream: int(T50 / 2)
    out = rows.new_zeros(num_frames, *rows.shape[1:])
    keep = min(num_frames, rows.shape[0])
    out[:keep] = rows[:keep]
    return out


def _check_audio(audio: np.ndarray, num_frames: int) -> np.ndarray:
    audio = np.asarray(audio)
    if audio.ndim != 1:
        raise ValueError(
            f"audio must be mono samples of shape (S,) at {AUDIO_SAMPLE_RATE} Hz, got shape {audio.shape}; "
            "average the channels (audio.mean(axis=0) for (channels, S)) or read it with humo.data.media.read_audio"
        )
    if not np.issubdtype(audio.dtype, np.floating):
        raise ValueError(f"audio must be float samples in [-1, 1], got dtype {audio.dtype}; divide int16 by 32768")
    if int(num_frames) != num_frames or num_frames < 1:
        raise ValueError(f"num_frames must be a positive int, got {num_frames!r}")
    return audio.astype(np.float32, copy=False)


class AudioEncoder(ABC):
    """Audio -> one feature row per 25 fps video frame.

    Attributes:
        groups: feature groups per row (1 for log-mel, 5 for Whisper).
        channels: channels per group (80 for log-mel, 1280 for Whisper-large-v3).
        kind: ``"logmel"`` or ``"whisper"``.
    """

    kind: str = ""
    groups: int = 1
    channels: int = 1

    def features(self, audio: np.ndarray, num_frames: int) -> torch.Tensor:
        """Features of mono 16 kHz audio for a clip of ``num_frames`` video frames.

        Args:
            audio: ``(S,)`` float32 samples at 16 kHz.
            num_frames: video frames at 25 fps.

        Returns:
            ``[num_frames, groups, channels]`` float32 on the CPU; zero rows past the audio's end.

        Raises:
            ValueError: audio is not 1-D float, or num_frames is not a positive int.
        """
        audio = _check_audio(audio, num_frames)
        if audio.shape[0] < SAMPLES_PER_VIDEO_FRAME:  # not one whole video frame of audio: all rows are zeros
            return torch.zeros(int(num_frames), self.groups, self.channels)
        return rows_per_video_frame(self.features_50hz(audio), audio.shape[0], int(num_frames))

    @abstractmethod
    def features_50hz(self, audio: np.ndarray) -> torch.Tensor:
        """``(S,)`` -> ``[T50, groups, channels]`` at 50 Hz, covering at least ``2 * (S // 640)`` rows."""


class LogMelAudioEncoder(AudioEncoder):
    """The embedded default: Whisper-style log-mel frames from librosa, no network (``[num_frames, 1, 80]``)."""

    kind = "logmel"

    def __init__(self, num_mels: int = LOGMEL_BINS) -> None:
        self.groups = 1
        self.channels = num_mels

    def features_50hz(self, audio: np.ndarray) -> torch.Tensor:
        import librosa

        # center=True: frame k is centred on sample 320 k, i.e. time k / 50 s, as 25 fps row j is at j / 25 s.
        mel = librosa.feature.melspectrogram(
            y=audio, sr=AUDIO_SAMPLE_RATE, n_fft=LOGMEL_WINDOW, hop_length=LOGMEL_HOP, n_mels=self.channels
        )  # (n_mels, T50), power
        log_mel = np.log10(np.maximum(mel, LOG_FLOOR))
        log_mel = np.maximum(log_mel, log_mel.max() - LOG_DYNAMIC_RANGE)
        log_mel = (log_mel + 4.0) / 4.0
        return torch.from_numpy(np.ascontiguousarray(log_mel.T, dtype=np.float32))[:, None, :]


def group_hidden_states(hidden_states: torch.Tensor) -> torch.Tensor:
    """Upstream's reduction of Whisper's hidden states to 5 groups.

    With ``L`` encoder layers there are ``L + 1`` hidden states (embeddings, then each layer; the last is after
    the final LayerNorm). The first ``L`` are averaged in 4 contiguous groups of ``L / 4`` and the last is kept
    alone: for large-v3 (L = 32) that is 0-7, 8-15, 16-23, 24-31 and 32, exactly upstream's grouping.

    Args:
        hidden_states: ``[T, L + 1, C]``.

    Returns:
        ``[T, 5, C]``.

    Raises:
        ValueError: ``L`` is not a positive multiple of 4.
    """
    layers = hidden_states.shape[1] - 1
    if layers < WHISPER_LAYER_GROUPS or layers % WHISPER_LAYER_GROUPS:
        raise ValueError(
            f"Whisper hidden states {tuple(hidden_states.shape)} come from {layers} layers; upstream's grouping needs "
            f"a multiple of {WHISPER_LAYER_GROUPS} (large-v3 has 32)"
        )
    size = layers // WHISPER_LAYER_GROUPS
    grouped = hidden_states[:, :layers].unflatten(1, (WHISPER_LAYER_GROUPS, size)).mean(dim=2)  # [T, 4, C]
    return torch.cat([grouped, hidden_states[:, layers:]], dim=1)


class WhisperAudioEncoder(AudioEncoder):
    """The real path: Whisper's encoder (transformers ``WhisperModel``) with upstream's layer groups.

    Args:
        feature_extractor: a ``WhisperFeatureExtractor`` (log-mel, padded to 30 s).
        encoder: the ``WhisperEncoder`` (``WhisperModel.encoder``).
    """

    kind = "whisper"

    def __init__(self, feature_extractor, encoder: torch.nn.Module) -> None:
        self.feature_extractor = feature_extractor
        self.encoder = encoder.eval().requires_grad_(False)
        self.groups = WHISPER_LAYER_GROUPS + 1
        self.channels = int(encoder.config.d_model)
        group_hidden_states(torch.zeros(1, encoder.config.encoder_layers + 1, 1))  # fail early on odd layer counts

    def to(self, device: str | torch.device) -> WhisperAudioEncoder:
        self.encoder.to(device)
        return self

    @torch.no_grad()
    def features_50hz(self, audio: np.ndarray) -> torch.Tensor:
        chunk = WHISPER_CHUNK_SECONDS * AUDIO_SAMPLE_RATE
        chunks = [audio[start : start + chunk] for start in range(0, len(audio), chunk)]
        inputs = self.feature_extractor(chunks, sampling_rate=AUDIO_SAMPLE_RATE, return_tensors="pt")
        parameter = next(self.encoder.parameters())
        mel = inputs["input_features"].to(device=parameter.device, dtype=parameter.dtype)  # [chunks, mels, 3000]
        states = self.encoder(mel, output_hidden_states=True).hidden_states  # L+1 x [chunks, 1500, C]
        stacked = torch.stack(states, dim=2)  # [chunks, 1500, L+1, C]
        stacked = stacked.flatten(0, 1)  # chunks concatenated in time: [chunks*1500, L+1, C]
        return group_hidden_states(stacked.float()).cpu()


def load_audio_encoder(cfg: AudioEncoderConfig, device: str | torch.device = "cpu") -> AudioEncoder:
    """Build the configured audio encoder (no download).

    Args:
        cfg: ``encoders.audio``: ``kind`` (``logmel`` or ``whisper``) and ``path`` (a local Whisper folder holding
            ``config.json``, the weights and ``preprocessor_config.json``).
        device: where Whisper runs (log-mel always runs on the CPU).

    Raises:
        FileNotFoundError: the Whisper folder or one of its files is missing.
    """
    if cfg.kind == "logmel":
        return LogMelAudioEncoder()
    from transformers import WhisperFeatureExtractor, WhisperModel

    folder = Path(cfg.path)
    for name in ("config.json", "preprocessor_config.json"):
        if not (folder / name).is_file():
            raise FileNotFoundError(
                f"Whisper folder {folder} has no {name}; point encoders.audio.path at a local copy of "
                "whisper-large-v3 (config.json, model.safetensors, preprocessor_config.json)"
            )
    extractor = WhisperFeatureExtractor.from_pretrained(folder)
    encoder = WhisperModel.from_pretrained(folder).encoder
    logger.info("audio encoder whisper from %s: %d layers, %d channels", folder, encoder.config.encoder_layers,
                encoder.config.d_model)
    return WhisperAudioEncoder(extractor, encoder).to(device)
