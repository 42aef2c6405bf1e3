"""Audio windows per latent frame: the one function that turns 25 fps feature rows into HuMo's audio input.

Upstream (``get_audio_emb_window`` with ``audio_shift=2``, humo-reference.md 1.4 step 6) gives every latent
frame a window of 8 feature rows (one row per 25 fps video frame):

* latent 0 covers video frame 0: 3 zero rows, then rows -2..+2 (rows -2 and -1 do not exist, so zeros);
* latent i >= 1 covers video frames 4i-3..4i: rows 4i-5..4i+2, i.e. 2 rows before, the 4 it covers, 2 after;
* a row before 0 or past the last row is zeros.

Upstream builds the windows with a Python loop over latent frames and rows. Here one index tensor gathers
them all at once. Note that latent 0's layout is the general rule at i = 0: rows 4*0-5..4*0+2 = -5..2, where
rows -5..-1 are out of range and hence zero, which is exactly "3 zero rows, then rows -2..+2".
"""

from __future__ import annotations

import torch

from humo.constants import AUDIO_WINDOW_CONTEXT, AUDIO_WINDOW_ROWS, VAE_TEMPORAL_STRIDE

WINDOW_START_OFFSET = -(VAE_TEMPORAL_STRIDE - 1) - AUDIO_WINDOW_CONTEXT
"""First row of latent i's window is ``4 * i - 5``: the first covered frame (4i - 3) minus 2 rows of context."""


def window_starts(num_latent_frames: int) -> torch.Tensor:
    """First feature row of each latent frame's window: ``4 * i - 5`` for ``i = 0..T-1`` (int64, ``(T,)``)."""
    return torch.arange(num_latent_frames, dtype=torch.int64) * VAE_TEMPORAL_STRIDE + WINDOW_START_OFFSET


def window_audio_features(rows: torch.Tensor, num_frames: int) -> torch.Tensor:
    """Cut 25 fps audio feature rows into HuMo's per-latent-frame windows.

    Args:
        rows: ``[N, G, C]`` features, one row per video frame (``N == num_frames``), ``G`` feature groups
            (5 Whisper layer groups, 1 for log-mel) of ``C`` channels.
        num_frames: video frames of the clip, of the form ``4k + 1``.

    Returns:
        ``[(num_frames - 1) // 4 + 1, 8, G, C]`` windows, same dtype and device as ``rows``; rows outside
        ``0..N-1`` are zeros.

    Raises:
        ValueError: ``rows`` is not 3-D, ``num_frames`` is not ``4k + 1``, or ``N != num_frames``.
    """
    if num_frames < 1 or (num_frames - 1) % VAE_TEMPORAL_STRIDE:
        raise ValueError(
            f"num_frames={num_frames} must be of the form 4k+1 (e.g. 33 or 97) so the frames map to whole latent "
            f"frames; round it down to {max(1, (num_frames - 1) // VAE_TEMPORAL_STRIDE * VAE_TEMPORAL_STRIDE + 1)}"
        )
    if rows.ndim != 3:
        raise ValueError(
            f"audio feature rows must be [num_frames, groups, channels], got shape {tuple(rows.shape)}; "
            "add a groups axis (e.g. rows[:, None, :]) for single-group features"
        )
    if rows.shape[0] != num_frames:
        raise ValueError(
            f"audio feature rows {tuple(rows.shape)} have {rows.shape[0]} rows but the clip has num_frames="
            f"{num_frames}; the audio encoder must return one row per video frame (zeros past the audio's end)"
        )
    num_latent = (num_frames - 1) // VAE_TEMPORAL_STRIDE + 1
    index = window_starts(num_latent)[:, None] + torch.arange(AUDIO_WINDOW_ROWS)  # [T, 8]
    index = index.to(rows.device)
    valid = (index >= 0) & (index < num_frames)
    # Gather from the rows with out-of-range positions pointing at row 0, then zero those positions.
    windows = rows[index.clamp(0, num_frames - 1)]  # [T, 8, G, C]
    return torch.where(valid[:, :, None, None], windows, rows.new_zeros(()))
