"""Flow-matching maths and guidance combinations, checked on hand-computed numbers."""

from __future__ import annotations

import pytest
import torch

from humo.diffusion.flow_matching import (
    add_noise,
    euler_step,
    predict_x0,
    sample_training_sigmas,
    sampling_sigmas,
    shift_sigmas,
    sigmas_to_timesteps,
    velocity_target,
)
from humo.diffusion.guidance import (
    PiecewiseScale,
    guidance_nested,
    guidance_ta,
    guidance_tia_1_7b,
    guidance_tia_17b,
)


def test_upstream_timesteps_for_50_steps_at_shift_5() -> None:
    timesteps = sigmas_to_timesteps(sampling_sigmas(50, 5.0))
    assert timesteps[:6].tolist() == [999, 995, 991, 987, 982, 978]
    assert timesteps[-1] == 0
    # exactly 5 of 50 steps lie above the 17B switch (4 of 40, 3 of 30)
    for steps, above in [(50, 5), (40, 4), (30, 3)]:
        assert int((sigmas_to_timesteps(sampling_sigmas(steps, 5.0))[:-1] > 980).sum()) == above


def test_shift_by_hand() -> None:
    assert shift_sigmas(torch.tensor(0.5), 5.0).item() == pytest.approx(2.5 / 3.0)
    assert shift_sigmas(torch.tensor(0.5), 1.0).item() == pytest.approx(0.5)
    with pytest.raises(ValueError):
        shift_sigmas(torch.tensor(0.5), 0.0)


def test_noise_target_and_recovery_round_trip() -> None:
    x0 = torch.tensor([[1.0, -2.0], [0.5, 0.0]])
    noise = torch.tensor([[0.0, 1.0], [2.0, -1.0]])
    sigma = torch.tensor([0.25, 0.5])
    x_t = add_noise(x0, noise, sigma)
    assert x_t[0].tolist() == pytest.approx([0.75, -1.25])
    assert x_t[1].tolist() == pytest.approx([1.25, -0.5])
    v = velocity_target(x0, noise)
    assert torch.allclose(predict_x0(x_t, v, sigma), x0)
    # an exact velocity carries x_t to the data in one Euler step
    assert torch.allclose(euler_step(x_t, v, sigma, torch.zeros(2)), x0)


def test_training_sigmas_are_seeded_and_in_range() -> None:
    a = sample_training_sigmas(256, torch.Generator().manual_seed(0))
    b = sample_training_sigmas(256, torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and 0 < a.min() and a.max() < 1
    with pytest.raises(ValueError, match="unknown timestep distribution"):
        sample_training_sigmas(2, distribution="beta")  # type: ignore[arg-type]


T = torch.tensor


def test_guidance_ta_by_hand() -> None:
    # 2*(3-2) + 4*(2-1) + 1 = 7
    assert guidance_ta(T(3.0), T(2.0), T(1.0), scale_audio=2.0, scale_text=4.0).item() == 7.0


def test_guidance_tia_17b_switches_at_980() -> None:
    v_tia, v_ti, v_i, v_null = T(5.0), T(3.0), T(2.0), T(1.0)
    # early: 5.5*(5-3) + 5*(3-2) + 2 = 18
    assert guidance_tia_17b(v_tia, v_ti, v_i, v_null, 981, 5.5, 5.0).item() == pytest.approx(18.0)
    # late (t <= 980): 5.5*(5-3) + 3*(3-1) + 1 = 18
    assert guidance_tia_17b(v_tia, v_ti, v_i, v_null, 980, 5.5, 5.0).item() == pytest.approx(18.0)
    # the two phases differ when v_i != v_null moves differently
    early = guidance_tia_17b(v_tia, v_ti, T(0.0), v_null, 999, 5.5, 5.0).item()
    late = guidance_tia_17b(v_tia, v_ti, T(0.0), v_null, 500, 5.5, 5.0).item()
    assert early == pytest.approx(11 + 15) and late == pytest.approx(11 + 6 + 1)


def test_guidance_tia_1_7b_and_nested_by_hand() -> None:
    # 4*(4-3) + 7.5*(3-2) + 7*(2-1) + 1 = 19.5
    assert guidance_tia_1_7b(T(4.0), T(3.0), T(2.0), T(1.0), 4.0, 7.5, 7.0).item() == pytest.approx(19.5)
    # 2*(4-3) + 3*(3-2) + 5*(2-1) + 1 = 11
    assert guidance_nested(T(4.0), T(3.0), T(2.0), T(1.0), 2.0, 3.0, 5.0).item() == pytest.approx(11.0)


def test_all_scales_one_gives_the_full_condition() -> None:
    v = [torch.randn(3) for _ in range(4)]
    assert torch.allclose(guidance_nested(*v, 1.0, 1.0, 1.0), v[0])
    assert torch.allclose(guidance_tia_1_7b(*v, 1.0, 1.0, 1.0), v[0])


def test_piecewise_scale() -> None:
    scale = PiecewiseScale(values=(5.0, 3.0, 1.0), switch_points=(980, 500))
    assert [scale(t) for t in (999, 981, 980, 600, 500, 0)] == [5.0, 5.0, 3.0, 3.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="one more value"):
        PiecewiseScale(values=(1.0,), switch_points=(5,))
    with pytest.raises(ValueError, match="decreasing"):
        PiecewiseScale(values=(1.0, 2.0, 3.0), switch_points=(5, 10))


# ---------------------------------------------------------------------------------------------------------------------
# the general time-adaptive schedule (chain of branches with piecewise link scales)
# ---------------------------------------------------------------------------------------------------------------------

from humo.diffusion.guidance import Branch, GuidanceSchedule, build_guidance  # noqa: E402

B = Branch.parse


def test_branch_names_round_trip() -> None:
    assert [B(n).name for n in ("TIA", "ti", "A", "∅", "null")] == ["TIA", "TI", "A", "∅", "∅"]
    with pytest.raises(ValueError, match="letters"):
        B("TX")


def test_17b_schedule_coefficients_by_hand() -> None:
    schedule = build_guidance("humo-17b", "TIA", scale_text=5.0, scale_image=4.0, scale_audio=5.5)
    # early: 5.5*TIA + (5-5.5)*TI + (1-5)*I ; the null branch is idle
    assert schedule.coefficients(981) == {B("TIA"): 5.5, B("TI"): -0.5, B("I"): -4.0}
    # late (t <= 980): 5.5*TIA + (3-5.5)*TI + (1-3)*∅ ; the image-only branch is idle
    assert schedule.coefficients(980) == {B("TIA"): 5.5, B("TI"): -2.5, B("∅"): -2.0}


def test_17b_schedule_equals_upstream_formula() -> None:
    v = {b: torch.randn(5, generator=torch.Generator().manual_seed(i)) for i, b in enumerate(map(B, ["TIA", "TI", "I", "∅"]))}
    schedule = build_guidance("humo-17b", "TIA", scale_text=5.0, scale_image=0.0, scale_audio=5.5)
    for t in (999, 982, 981, 980, 500, 0):
        expected = guidance_tia_17b(v[B("TIA")], v[B("TI")], v[B("I")], v[B("∅")], t, 5.5, 5.0)
        assert torch.allclose(schedule.combine(v, t), expected, atol=1e-5)


def test_1_7b_and_ta_and_custom_equal_their_formulas() -> None:
    names = ["TIA", "TA", "TI", "T", "I", "∅"]
    v = {B(n): torch.tensor(float(k + 1) ** 2) for k, n in enumerate(names)}  # 1, 4, 9, 16, 25, 36
    s17 = build_guidance("humo-1.7b", "TIA", scale_text=7.0, scale_image=4.0, scale_audio=7.5)
    # 4*(1-4) + 7.5*(4-16) + 7*(16-36) + 36 = -12 - 90 - 140 + 36 = -206
    assert s17.combine(v, 500).item() == pytest.approx(-206.0)
    assert len(s17.coefficients(500)) == 4
    ta = build_guidance("humo-17b", "TA", scale_text=5.0, scale_image=4.0, scale_audio=5.5)
    # 5.5*(4-16) + 5*(16-36) + 36 = -66 - 100 + 36 = -130
    assert ta.combine(v, 999).item() == pytest.approx(-130.0)
    custom = build_guidance(
        "custom", "TIA", 0, 0, 0,
        custom={"audio": PiecewiseScale((2.0,)), "image": PiecewiseScale((3.0, 1.0), (500,)), "text": PiecewiseScale((5.0,))},
    )
    # t=900: 2*(1-9) + 3*(9-16) + 5*(16-36) + 36 = -16 - 21 - 100 + 36 = -101 ; t=100: image link 1 -> -16 -7 -100 +36 = -87
    assert custom.combine(v, 900).item() == pytest.approx(-101.0)
    assert custom.combine(v, 100).item() == pytest.approx(-87.0)
    with pytest.raises(ValueError, match="needs scales"):
        build_guidance("custom", "TA", 1, 1, 1, custom={"text": PiecewiseScale((1.0,))})


def test_scales_of_one_use_a_single_branch_and_bad_chains_fail() -> None:
    schedule = build_guidance("humo-1.7b", "TIA", 1.0, 1.0, 1.0)
    assert schedule.coefficients(700) == {B("TIA"): 1.0}
    with pytest.raises(KeyError, match="TA"):
        build_guidance("humo-1.7b", "TIA", 1.0, 2.0, 1.0).combine({B("TIA"): torch.zeros(1)}, 10)
    with pytest.raises(ValueError, match="link scales"):
        GuidanceSchedule((B("T"), B("∅")), ())
    with pytest.raises(ValueError, match="unknown mode"):
        build_guidance("humo-17b", "IA", 1, 1, 1)
