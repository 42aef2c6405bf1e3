"""The one audio windowing function against upstream's layout, written out from the spec with hand-built rows."""

from __future__ import annotations

import pytest
import torch

from humo.features.audio import window_audio_features


def _rows(num_frames: int, groups: int = 2, channels: int = 3) -> torch.Tensor:
    """Row r holds the value r + 1 everywhere (so 0 means "zero row"), group g adds 1000 g, channel c adds 0.01 c."""
    index = torch.arange(num_frames, dtype=torch.float32)[:, None, None] + 1
    return index + 1000 * torch.arange(groups)[None, :, None] + 0.01 * torch.arange(channels)[None, None, :]


def _upstream_windows(rows: torch.Tensor, num_frames: int) -> torch.Tensor:
    """Upstream's get_audio_emb_window (audio_shift 2, frame0_idx 0), restated as a plain loop for the test."""
    zero = torch.zeros_like(rows[0])
    pick = lambda i: rows[i] if 0 <= i < rows.shape[0] else zero  # noqa: E731
    windows = []
    for latent in range(1 + (num_frames - 1) // 4):
        if latent == 0:
            window = [zero] * 3 + [pick(i) for i in range(-2, 3)]
        else:
            window = [pick(i) for i in range(1 + 4 * (latent - 1) - 2, 1 + 4 * latent + 2)]
        windows.append(torch.stack(window))
    return torch.stack(windows)


@pytest.mark.parametrize("num_frames", [1, 5, 9, 33, 97])
def test_windows_match_upstream_layout(num_frames: int) -> None:
    rows = _rows(num_frames)
    windows = window_audio_features(rows, num_frames)
    assert windows.shape == ((num_frames - 1) // 4 + 1, 8, 2, 3)
    torch.testing.assert_close(windows, _upstream_windows(rows, num_frames), rtol=0, atol=0)


def test_first_and_middle_windows_by_hand() -> None:
    windows = window_audio_features(_rows(33, groups=1, channels=1), 33)[..., 0, 0]  # [9, 8] row numbers + 1
    # latent 0: 3 zero rows, rows -2, -1 (missing -> 0), then rows 0, 1, 2
    assert windows[0].tolist() == [0, 0, 0, 0, 0, 1, 2, 3]
    # latent 1 covers frames 1..4: rows -1..6
    assert windows[1].tolist() == [0, 1, 2, 3, 4, 5, 6, 7]
    # latent 2 covers frames 5..8: rows 3..10
    assert windows[2].tolist() == [4, 5, 6, 7, 8, 9, 10, 11]
    # last latent covers frames 29..32: rows 27..34, rows 33 and 34 lie past the end
    assert windows[8].tolist() == [28, 29, 30, 31, 32, 33, 0, 0]


def test_groups_and_channels_stay_in_place() -> None:
    rows = _rows(9, groups=3, channels=4)
    windows = window_audio_features(rows, 9)
    assert torch.equal(windows[1, 3], rows[2])  # latent 1, slot 3 = row 4*1-5+3 = 2


def test_keeps_dtype_and_gradient() -> None:
    rows = _rows(9).double().requires_grad_()
    windows = window_audio_features(rows, 9)
    assert windows.dtype == torch.float64
    windows.sum().backward()
    # every row of a 9-frame clip is used: row 0 in latents 0 and 1, rows 1..8 in one or two windows
    assert (rows.grad[:, 0, 0] > 0).all()


@pytest.mark.parametrize("num_frames", [0, 8, 32, 34])
def test_rejects_frames_not_4k_plus_1(num_frames: int) -> None:
    with pytest.raises(ValueError, match=f"num_frames={num_frames} must be of the form 4k\\+1"):
        window_audio_features(_rows(max(num_frames, 1)), num_frames)


def test_rejects_row_count_mismatch() -> None:
    with pytest.raises(ValueError, match=r"\(32, 2, 3\) have 32 rows but the clip has num_frames=33"):
        window_audio_features(_rows(32), 33)


def test_rejects_rows_without_groups_axis() -> None:
    with pytest.raises(ValueError, match=r"\[num_frames, groups, channels\], got shape \(33, 80\)"):
        window_audio_features(torch.zeros(33, 80), 33)
