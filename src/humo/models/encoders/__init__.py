"""Frozen encoders around the HuMo DiT, each behind one small interface with a real and an embedded kind.

============  ==========================================  ==============================================
encoder       embedded default (CPU, offline)             real (local folders, no download)
============  ==========================================  ==============================================
text          all-MiniLM-L6-v2 from its wheel, 384-d       umT5-XXL (``<wan>/text_encoder``), 4096-d, 512
audio         librosa log-mel ``[F, 1, 80]``              Whisper-large-v3 encoder, 5 groups ``[F, 5, 1280]``
VAE           tiny AutoencoderKLWan trained by train_vae  Wan2.1 VAE (``<wan>/vae``)
============  ==========================================  ==============================================

Switching kinds is a ``params.yaml`` change (``encoders.*.kind`` and ``path``)::

    text = load_text_encoder(params.encoders.text)          # .encode(prompts) -> [B, L, dim]
    audio = load_audio_encoder(params.encoders.audio)       # .features(wave, num_frames) -> [F, G, C]
    vae = load_vae(params.encoders.vae, trained_dir=Path("artifacts/train_vae/vae"))
    windows = humo.features.audio.window_audio_features(audio.features(wave, 33), 33)  # [9, 8, G, C]
"""

from __future__ import annotations

from humo.models.encoders.audio import (
    AudioEncoder,
    LogMelAudioEncoder,
    WhisperAudioEncoder,
    group_hidden_states,
    interpolate_rows,
    load_audio_encoder,
    rows_per_video_frame,
)
from humo.models.encoders.text import (
    NEGATIVE_PROMPT,
    WAN_NEGATIVE_PROMPT,
    TextEncoder,
    clean_prompt,
    load_text_encoder,
    minilm_folder,
)
from humo.models.encoders.vae import (
    VideoVAE,
    build_tiny_vae,
    frames_to_tensor,
    letterbox_image,
    load_vae,
    tensor_to_frames,
)

__all__ = [
    "NEGATIVE_PROMPT",
    "WAN_NEGATIVE_PROMPT",
    "AudioEncoder",
    "LogMelAudioEncoder",
    "TextEncoder",
    "VideoVAE",
    "WhisperAudioEncoder",
    "build_tiny_vae",
    "clean_prompt",
    "frames_to_tensor",
    "group_hidden_states",
    "interpolate_rows",
    "letterbox_image",
    "load_audio_encoder",
    "load_text_encoder",
    "load_vae",
    "minilm_folder",
    "rows_per_video_frame",
    "tensor_to_frames",
]
