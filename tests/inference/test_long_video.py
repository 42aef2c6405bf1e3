"""Long videos: window plan, prefix conditioning carried across windows, continuing audio, seams measured."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from humo.inference.long_video import generate_long, plan_windows, seam_frames, seam_statistics


def test_window_plan_covers_everything_with_overlap() -> None:
    assert plan_windows(3, 3, 1) == [(0, 3)]
    assert plan_windows(7, 3, 1) == [(0, 3), (2, 5), (4, 7)]
    assert plan_windows(8, 3, 1) == [(0, 3), (2, 5), (4, 7), (5, 8)]  # the last one is aligned to the end
    assert plan_windows(25, 9, 2)[-1][1] == 25
    assert seam_frames([(0, 3), (2, 5)]) == [9]  # latent 3 starts at pixel frame 4*3-3
    with pytest.raises(ValueError, match="overlap"):
        plan_windows(9, 3, 3)


def test_seam_statistics_by_hand() -> None:
    frames = np.zeros((5, 2, 2, 3), np.uint8)
    frames[1:] = 10
    frames[3:] = 40  # a jump of 30 at frame 3, of 10 at frame 1, none elsewhere
    stats = seam_statistics(frames, [3])
    assert stats.seam_mean == 30 and stats.inside_mean == pytest.approx(10 / 3) and stats.ratio == pytest.approx(9)


def test_long_video_windows_are_conditioned_on_the_previous_one(pipeline, speech, portrait) -> None:
    windows_out: list[tuple[torch.Tensor, torch.Tensor]] = []
    denoise = pipeline.denoise

    def recording(latents, inputs, *args, **kwargs):
        result = denoise(latents, inputs, *args, **kwargs)
        windows_out.append((result, inputs.audio))
        return result

    pipeline.denoise = recording
    try:
        out, seams = generate_long(
            pipeline, "a man talks", speech, image=portrait, height=32, width=32, num_inference_steps=2,
            generator=torch.Generator().manual_seed(0), window_frames=9, overlap_latent_frames=1,
            max_total_frames=25, progress=False,
        )
    finally:
        del pipeline.denoise
    assert out.frames.shape == (25, 32, 32, 3) and out.num_frames == 25 and seams == [9, 17]
    (first, audio0), (second, audio1), (third, _) = windows_out
    # window 2 covers latents 2..4: its first frame is held to window 1's latent 2 (clean, after the last step)
    assert torch.equal(second[:, :, 0], first[:, :, 2]) and torch.equal(third[:, :, 0], second[:, :, 2])
    # the audio continues: window 2's first audio window is window 1's third (global rows, not restarted)
    tia = 0  # branch 0 of the chain is TIA
    assert torch.equal(audio1[tia, 0], audio0[tia, 2]) and audio1[tia, 1].abs().sum() > 0
    # seams measured against inside-window differences (random tiny model: reported, loosely bounded)
    stats = seam_statistics(out.frames, seams)
    print(f"long video seams (random tiny model): seam {stats.seam_mean:.2f} inside {stats.inside_mean:.2f} "
          f"ratio {stats.ratio:.2f}")
    assert stats.ratio < 1.5
