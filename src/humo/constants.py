"""Fixed facts of the HuMo / Wan2.1 family that do not change between presets.

Anything a user may want to change lives in ``params.yaml`` (see :mod:`humo.config`); what is here is
dictated by the released models (humo-reference.md sections 1-2) and is shared by every part of the code.
"""

from __future__ import annotations

# --- media ------------------------------------------------------------------------------------------
VIDEO_FPS = 25
"""Frame rate HuMo is trained and sampled at (paper section 4)."""
AUDIO_SAMPLE_RATE = 16_000
"""Sample rate of the audio given to the audio encoder (Whisper and our log-mel default)."""
SAMPLES_PER_VIDEO_FRAME = AUDIO_SAMPLE_RATE // VIDEO_FPS  # 640
AUDIO_FEATURE_RATE = 50
"""Whisper's encoder (and our log-mel default) emit 50 feature frames per second before resampling."""

# --- VAE --------------------------------------------------------------------------------------------
VAE_TEMPORAL_STRIDE = 4
VAE_SPATIAL_STRIDE = 8
LATENT_CHANNELS = 16

# --- audio conditioning (humo-reference.md 1.4) -----------------------------------------------------
AUDIO_WINDOW_ROWS = 8
"""Rows (25 fps feature frames) in the audio window of one latent frame."""
AUDIO_WINDOW_CONTEXT = 2
"""Rows of context taken on each side of the 4 video frames a latent frame covers (upstream audio_shift)."""
AUDIO_TOKENS_PER_FRAME = 16
"""Context tokens the audio projection makes for each latent frame."""

# --- text ---------------------------------------------------------------------------------------------
TEXT_CONTEXT_LEN = 512
"""Text tokens given to the DiT by the real umT5 path (padded/truncated)."""

# --- reference image ------------------------------------------------------------------------------
NUM_REF_FRAMES = 1
"""Reference latent frames appended after the video (one reference image, as upstream's examples)."""

# --- diffusion --------------------------------------------------------------------------------------
NUM_TRAIN_TIMESTEPS = 1000
