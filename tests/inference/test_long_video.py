"""Long videos: window plan, prefix conditioning carried across windows, continuing audio, seams measured."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from humo.diffusion.flow_matching import sampling_sigmas
from humo.inference.long_video import (
    first_step_below,
    generate_long,
    plan_windows,
    seam_frames,
    seam_statistics,
    seam_weights,
)


def test_window_plan_covers_everything_with_overlap() -> None:
    assert plan_windows(3, 3, 1) == [(0, 3)]
    assert plan_windows(7, 3, 1) == [(0, 3), (2, 5), (4, 7)]
    assert plan_windows(8, 3, 1) == [(0, 3), (2, 5), (4, 7), (5, 8)]  # the last one is aligned to the end
    assert plan_windows(25, 9, 2)[-1][1] == 25
    assert seam_frames([(0, 3), (2, 5)]) == [9]  # latent 3 starts at pixel frame 4*3-3
    with pytest.raises(ValueError, match="overlap"):
        plan_windows(9, 3, 3)


def test_seam_statistics_by_hand() -> None:
    frames = np.zeros((6, 2, 2, 3), np.uint8)
    frames[1:] = 10
    frames[3:] = 40  # a jump of 30 at frame 3, of 10 at frame 1 (a latent boundary), 6 at frame 5 (another one)
    frames[5:] = 46
    stats = seam_statistics(frames, [3])
    assert stats.seam_mean == 30 and stats.inside_mean == pytest.approx(16 / 4) and stats.ratio == pytest.approx(7.5)
    assert stats.boundary_mean == pytest.approx(8) and stats.boundary_ratio == pytest.approx(3.75)


def test_seam_weights_fall_linearly_from_the_seam() -> None:
    weights = seam_weights(4, 12, seam=8, radius=2)  # latents 4..11, the seam between latents 7 and 8
    assert weights.tolist() == pytest.approx([0, 0, 0.25, 0.75, 0.75, 0.25, 0, 0])
    assert first_step_below(20, 5.0, 0.7) == int((sampling_sigmas(20, 5.0)[:-1] > 0.7).sum())
    assert sampling_sigmas(20, 5.0)[first_step_below(20, 5.0, 0.7)] <= 0.7


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
    assert len(windows_out) == 3 + 2  # 3 windows, then the second pass over each of the 2 seams
    (first, audio0), (second, audio1), (third, _) = windows_out[:3]
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


def test_prefix_hold_clean_or_noised() -> None:
    from humo.inference.pipeline import HumoPipeline, KnownPrefix

    state = torch.zeros(1, 2, 4, 1, 1)
    known, noise = torch.full((1, 2, 2, 1, 1), 3.0), torch.full((1, 2, 2, 1, 1), -1.0)
    clean = HumoPipeline._apply_prefix(state, KnownPrefix(known, noise, hold="clean"), 0.75)
    noised = HumoPipeline._apply_prefix(state, KnownPrefix(known, noise, hold="noised"), 0.75)
    assert torch.equal(clean[:, :, :2], known) and torch.equal(clean[:, :, 2:], state[:, :, 2:])
    assert torch.allclose(noised[:, :, :2], torch.full_like(known, 0.25 * 3.0 - 0.75))  # (1 - s) x0 + s noise
    final = HumoPipeline._apply_prefix(state, KnownPrefix(known, noise, hold="noised"), 0.0)
    assert torch.equal(final[:, :, :2], known)


@pytest.mark.parametrize("conditioned", [True, False])
def test_windows_join_at_the_same_frames_with_and_without_conditioning(pipeline, speech, portrait, conditioned) -> None:
    """Both forms keep window 1's overlap frames; the clean hold feeds them unchanged to every DiT call."""
    outputs: list[torch.Tensor] = []
    calls: list[torch.Tensor] = []
    denoise = pipeline.denoise

    def recording(latents, inputs, *args, **kwargs):
        outputs.append(denoise(latents, inputs, *args, **kwargs))
        return outputs[-1]

    hook = pipeline.transformer.register_forward_pre_hook(lambda module, args: calls.append(args[0].clone()))
    pipeline.denoise = recording
    try:
        out, seams = generate_long(
            pipeline, "a man talks", speech, image=portrait, height=32, width=32, num_inference_steps=3,
            generator=torch.Generator().manual_seed(0), window_frames=9, overlap_latent_frames=1,
            max_total_frames=17, progress=False, output_type="latent", condition_on_previous=conditioned,
            seam_strength=0.0,
        )
    finally:
        del pipeline.denoise
        hook.remove()
    first, second = outputs
    assert out.frames.shape[1] == 5 and seams == [9]  # latents (0, 3) and (2, 5): new content from latent 3
    assert torch.equal(out.frames[:, :3], first[0, :, :3]) and torch.equal(out.frames[:, 3:], second[0, :, 1:3])
    window2_calls = calls[len(calls) // 2 :]
    held = [torch.equal(c[:, :, 0], first[:, :, 2].expand_as(c[:, :, 0])) for c in window2_calls]
    assert all(held) if conditioned else not any(held)


def test_seam_pass_changes_only_the_latents_around_each_seam(pipeline, speech, portrait) -> None:
    def run(strength: float) -> torch.Tensor:
        out, _ = generate_long(
            pipeline, "a man talks", speech, image=portrait, height=32, width=32, num_inference_steps=4,
            generator=torch.Generator().manual_seed(0), window_frames=9, overlap_latent_frames=1,
            max_total_frames=17, progress=False, output_type="latent", seam_strength=strength, seam_radius=1,
        )
        return out.frames

    plain, smoothed = run(0.0), run(0.7)
    changed = [not torch.equal(plain[:, p], smoothed[:, p]) for p in range(plain.shape[1])]
    assert changed == [False, False, True, True, False]  # the seam lies between latents 2 and 3
    with pytest.raises(ValueError, match="seam_strength"):
        run(1.0)
