"""The speed study's bookkeeping: rows, noise bands, the best row, the table (humo.evaluation.speed)."""

from __future__ import annotations

import numpy as np
import pytest

from humo.config import load_params
from humo.evaluation.speed import FIGURES, Row, psnr, study_rows, summarise, table_markdown


def _row(name, speed, steps, forwards, shift, psnr_db=None):
    row = Row(name, speed, steps, forwards=[forwards] * 3, seconds=[forwards / 100] * 3)
    base = {"sync_confidence_at_zero": [0.30, 0.32, 0.34], "identity_similarity": [0.28, 0.30, 0.32],
            "text_alignment": [0.50, 0.52, 0.54]}
    row.figures = {name: [v + shift for v in values] for name, values in base.items()}
    row.psnr = [] if psnr_db is None else [psnr_db] * 3
    return row


def test_rows_follow_the_config(params_path):
    params = load_params(params_path, ["evaluate.speed.rows=[config, mag-fast@25]", "evaluate.speed.step_baselines=[20]"])
    rows = study_rows(params.evaluate, params.generate)
    assert [(r.name, r.speed, r.steps) for r in rows] == [
        ("off", "off", 50), ("off, 20 steps", "off", 20), ("config", "config", 50), ("mag-fast@25", "mag-fast", 25)
    ]
    with pytest.raises(Exception, match="warp"):
        load_params(params_path, ["evaluate.speed.rows=[warp]"])


def test_a_shift_inside_the_noise_band_is_noise_and_one_outside_is_not():
    # seed sd 0.02 for every figure: band = 2 * 0.02 * sqrt(2/3) = 0.0327
    rows = [_row("off", "off", 50, 150, 0.0), _row("close", "a", 50, 60, 0.03, 40.0), _row("far", "b", 50, 40, 0.04, 30.0)]
    document = summarise(rows, seeds=3)
    assert document["noise_sd"]["sync_confidence_at_zero"] == pytest.approx(0.02)
    close, far = document["rows"]["close"], document["rows"]["far"]
    assert close["within_noise"] and not far["within_noise"]
    assert close["forward_reduction"] == pytest.approx(2.5) and close["psnr_vs_full_db"] == 40.0
    assert document["best_within_noise"] == "close"  # 'far' cuts more but leaves the band
    table = table_markdown(document, "TIA", 6)
    assert "| `far` |" in table and "(+0.040!)" in table and "(+0.030~)" in table
    assert all(figure in table for figure in FIGURES)


def test_psnr_of_identical_and_shifted_videos():
    video = np.full((2, 4, 4, 3), 100, dtype=np.uint8)
    assert psnr(video, video) == float("inf")
    assert psnr(video + 1, video) == pytest.approx(10 * np.log10(255.0**2))
