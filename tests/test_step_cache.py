"""Step caching plans and guidance truncation: pure functions of the schedule (humo.diffusion)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from humo.diffusion.flow_matching import sampling_sigmas, sigmas_to_timesteps
from humo.diffusion.guidance import Branch, Truncation, build_guidance
from humo.diffusion.step_cache import (
    BranchCalibration,
    CacheCalibration,
    CachePolicy,
    consecutive_changes,
    fit_branch,
    plan_steps,
    relative_l1,
)

STEPS = 20
TIMESTEPS = sigmas_to_timesteps(sampling_sigmas(STEPS, 5.0))[:-1].tolist()


def calibration(poly=(0.0, 0.0, 0.0, 0.0, 0.04), log_ratio_per_step=0.0, names=("TIA", "TI", "I", "∅")):
    fits = {
        name: BranchCalibration(poly=poly, timesteps=tuple(TIMESTEPS), log_ratios=(0.0, *[log_ratio_per_step] * (STEPS - 1)))
        for name in names
    }
    return CacheCalibration(model="test", steps=STEPS, shift=5.0, branches=fits)


def active_17b(steps=STEPS):
    guidance = build_guidance("humo-17b", "TIA", 5.0, 4.0, 5.5)
    return [[b.name for b in guidance.chain if b in guidance.coefficients(t)] for t in TIMESTEPS[:steps]]


def test_relative_l1_and_changes():
    a, b = np.ones(4), np.full(4, 1.5)
    assert relative_l1(b, a) == pytest.approx(0.5)
    changes = consecutive_changes([a, b, b])
    assert math.isinf(changes[0]) and changes[1] == pytest.approx(0.5) and changes[2] == 0.0


def test_no_policy_plans_every_forward():
    active = active_17b()
    plan = plan_steps(active, TIMESTEPS, None)
    assert plan.forwards == plan.full_forwards == sum(map(len, active)) == 3 * STEPS
    assert all(not reuse for reuse in plan.reuse)


def test_teacache_accumulates_until_the_threshold():
    # a constant estimated change of 0.04 per step: 0.04, 0.08 < 0.1 reuse; 0.12 computes and resets
    policy = CachePolicy("teacache", 0.1, calibration(), max_skips=5, retain_fraction=0.2)
    plan = plan_steps(active_17b(), TIMESTEPS, policy, modulation_change=np.full(STEPS, 0.3))
    retained = math.ceil(0.2 * STEPS)
    tia = ["compute" if "TIA" in plan.compute[s] else "reuse" for s in range(STEPS)]
    assert tia[:retained] == ["compute"] * retained
    expected_tail = []
    for step in range(retained, STEPS - 1):
        expected_tail.append("reuse" if (step - retained + 1) % 3 else "compute")
    assert tia[retained:-1] == expected_tail
    assert tia[-1] == "compute"  # the last step always computes
    assert plan.forwards < plan.full_forwards
    # every active branch is either computed or reused, never both
    for step, names in enumerate(active_17b()):
        assert sorted(plan.compute[step] + plan.reuse[step]) == sorted(names)


def test_a_branch_computes_on_its_first_active_step_and_after_max_skips():
    active = active_17b()
    first_null = next(s for s, names in enumerate(active) if "∅" in names)
    policy = CachePolicy("teacache", 10.0, calibration(), max_skips=2, retain_fraction=0.0)
    plan = plan_steps(active, TIMESTEPS, policy, modulation_change=np.full(STEPS, 0.3))
    assert "∅" in plan.compute[first_null]
    runs = 0
    for step in range(first_null, STEPS):
        runs = runs + 1 if "∅" in plan.reuse[step] else 0
        assert runs <= 2
    # a re-noised pass that starts later computes its first step
    later = plan_steps(active, TIMESTEPS, policy, modulation_change=np.full(STEPS, 0.3), start_step=12)
    assert set(later.compute[12]) == set(active[12]) and not any(later.compute[:12])


def test_magcache_reads_the_calibrated_ratio():
    # log ratio 0.05 per step: product error |1 - e^{0.05 k}| accumulates 0.051, 0.156 -> one reuse per compute at 0.1
    policy = CachePolicy("magcache", 0.1, calibration(log_ratio_per_step=0.05), max_skips=5, retain_fraction=0.0)
    plan = plan_steps(active_17b(), TIMESTEPS, policy)
    tia = ["c" if "TIA" in plan.compute[s] else "r" for s in range(STEPS)]
    assert tia[:5] == ["c", "r", "c", "r", "c"]
    # a ratio of exactly 1 costs nothing: every step but the first and last reuses, in runs of max_skips
    flat = CachePolicy("magcache", 0.1, calibration(log_ratio_per_step=0.0), max_skips=3, retain_fraction=0.0)
    flat_plan = plan_steps(active_17b(), TIMESTEPS, flat)
    tia = ["c" if "TIA" in flat_plan.compute[s] else "r" for s in range(STEPS)]
    assert tia[:9] == ["c", "r", "r", "r", "c", "r", "r", "r", "c"]


def test_log_ratio_interpolates_over_timesteps():
    fit = BranchCalibration(poly=(0.0,), timesteps=(1000.0, 500.0, 0.0), log_ratios=(0.0, 0.2, 0.4))
    assert fit.log_ratio(1000.0, 500.0) == pytest.approx(0.2)
    assert fit.log_ratio(500.0, 250.0) == pytest.approx(0.2)  # half of the 500 -> 0 interval
    assert fit.log_ratio(1000.0, 0.0) == pytest.approx(0.6)


def test_fit_branch_recovers_a_polynomial():
    x = np.linspace(0.01, 0.5, STEPS)
    x[0] = np.inf
    truth = np.poly1d([0.0, 0.0, 2.0, 0.5, 0.01])
    prediction = np.stack([truth(np.where(np.isfinite(x), x, 0.0)) * (1 + 0.01 * k) for k in range(3)])
    prediction[:, 0] = np.nan
    ratio = np.full((3, STEPS), 1.1)
    ratio[:, 0] = np.nan
    fit, r2 = fit_branch(TIMESTEPS, x, prediction, ratio)
    assert r2 > 0.999
    assert fit.predicted_change(0.3) == pytest.approx(truth(0.3) * 1.01, rel=0.02)
    assert fit.log_ratios[0] == 0.0 and fit.log_ratios[5] == pytest.approx(math.log(1.1))
    assert fit.samples == 3 * (STEPS - 1)


def test_calibration_round_trips_and_names_missing_branches(tmp_path):
    cal = calibration()
    path = cal.save(tmp_path / "c.json")
    again = CacheCalibration.load(path)
    assert again == cal
    with pytest.raises(KeyError, match="calibrate-cache"):
        again.branch("TA")
    with pytest.raises(FileNotFoundError, match="calibrate-cache"):
        CacheCalibration.load(tmp_path / "missing.json")


def test_policy_checks_its_settings():
    with pytest.raises(ValueError, match="criterion"):
        CachePolicy("fastcache", 0.1, calibration())
    with pytest.raises(ValueError, match="positive"):
        CachePolicy("teacache", 0.0, calibration())


# ---------------------------------------------------------------------------------------------------------------------
# Guidance truncation
# ---------------------------------------------------------------------------------------------------------------------


def predictions(chain):
    g = torch.Generator().manual_seed(0)
    return {branch: torch.randn(4, generator=g) for branch in chain}


def test_truncation_off_is_the_same_schedule():
    guidance = build_guidance("humo-17b", "TIA", 5.0, 4.0, 5.5)
    same = guidance.with_truncation(None)
    for t in TIMESTEPS:
        assert same.coefficients(t) == guidance.coefficients(t)
    assert "truncation" not in same.describe()


def test_dropping_the_text_negatives_leaves_audio_guidance_only():
    guidance = build_guidance("humo-17b", "TIA", 5.0, 4.0, 5.5)
    cut = TIMESTEPS[10]
    truncated = guidance.with_truncation(Truncation(cut, (Branch.parse("I"), Branch.parse("∅"))))
    preds = predictions(guidance.chain)
    B = Branch.parse
    for t in TIMESTEPS:
        if t > cut:
            assert truncated.coefficients(t) == guidance.coefficients(t)
        else:
            assert set(truncated.coefficients(t)) == {B("TIA"), B("TI")}
            expected = preds[B("TI")] + 5.5 * (preds[B("TIA")] - preds[B("TI")])
            assert torch.allclose(truncated.combine(preds, t), expected)
    assert truncated.describe()["truncation"] == {"at_or_below": cut, "drop": ["I", "∅"]}


def test_folding_a_middle_branch_guides_the_conditions_jointly():
    guidance = build_guidance("humo-17b", "TIA", 5.0, 4.0, 5.5)
    truncated = guidance.with_truncation(Truncation(TIMESTEPS[10], (Branch.parse("TI"),)))
    B = Branch.parse
    preds = predictions(guidance.chain)
    late = TIMESTEPS[12]
    assert set(truncated.coefficients(late)) == {B("TIA"), B("∅")}
    expected = preds[B("∅")] + 3.0 * (preds[B("TIA")] - preds[B("∅")])  # s_t - 2 for all three conditions
    assert torch.allclose(truncated.combine(preds, late), expected)


def test_truncation_respects_the_switch_and_the_chain():
    guidance = build_guidance("humo-17b", "TIA", 5.0, 4.0, 5.5)
    with pytest.raises(ValueError, match="before the guidance switch"):
        guidance.with_truncation(Truncation(990.0, (Branch.parse("∅"),)))
    with pytest.raises(ValueError, match="fully conditioned"):
        guidance.with_truncation(Truncation(500.0, (Branch.parse("TIA"),)))
    ta = build_guidance("humo-17b", "TA", 5.0, 4.0, 5.5)
    assert ta.with_truncation(Truncation(500.0, (Branch.parse("I"),))).truncation is None  # not in this chain
