"""The promotion gate: bounds from params decide, and the decision says why."""

from __future__ import annotations

import math

import pytest

from humo.config import EvaluateGateConfig
from humo.evaluation.gates import passes

GATE = EvaluateGateConfig(minimum={"identity_similarity": 0.5, "text_alignment": 0.5}, maximum={"flicker": 2.0})


def test_gate_passes_when_every_bound_holds() -> None:
    decision = passes({"identity_similarity": 0.5, "text_alignment": 0.9, "flicker": 2.0}, GATE)
    assert decision.passed
    assert [check.passed for check in decision.checks] == [True, True, True]
    assert decision.to_dict()["passed"] is True and "3 thresholds" in decision.reason


def test_gate_fails_and_names_each_missed_bound() -> None:
    decision = passes({"identity_similarity": 0.49, "text_alignment": 0.9, "flicker": 2.5}, GATE)
    assert not decision.passed
    assert "identity_similarity=0.49 < 0.5" in decision.reason and "flicker=2.5 > 2" in decision.reason
    assert "text_alignment" not in decision.reason


@pytest.mark.parametrize("value", [math.nan, None])
def test_gate_fails_on_missing_or_nan_figures(value) -> None:
    figures = {"identity_similarity": 0.9, "flicker": 0.0}
    if value is not None:
        figures["text_alignment"] = value
    decision = passes(figures, GATE)
    assert not decision.passed and "text_alignment not measured" in decision.reason


def test_gate_rejects_unknown_figure_names() -> None:
    with pytest.raises(ValueError, match="unknown figure 'identiy_similarity'"):
        passes({}, EvaluateGateConfig(minimum={"identiy_similarity": 0.5}, maximum={}))
