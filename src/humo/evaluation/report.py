"""Write the evaluate stage's outputs: DVC metrics and plots, the gate decision, and a Markdown report.

Layout of ``reports/evaluate``::

    metrics.json          DVC metrics: the gate mode's means at the top level, then one object per row
                          (ground_truth, TA, TI, TIA)
    gate.json             the promotion gate's decision and every check behind it
    plots/summary.csv     DVC plot data: one line per row, headline figures as columns
    plots/sync_curve.csv  DVC plot data: exact-sync distance per audio offset, one column per row
    figures.png           headline figures per row (bar chart)
    sync_curve.png        the same curve as sync_curve.csv
    strips.png            reference image, ground truth and each mode's frames for a few cases
    report.md             what a person reads: tables, expectations, gate, glossary with provenance
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from humo.evaluation.metrics import METRICS

if TYPE_CHECKING:
    from humo.config import EvaluateConfig
    from humo.evaluation.evalset import EvalCase
    from humo.evaluation.metrics import ScoredClip
    from humo.evaluation.gates import GateDecision

logger = logging.getLogger(__name__)

HEADLINE = (
    "sync_confidence_at_zero",
    "sync_distance_at_zero",
    "identity_similarity",
    "text_alignment",
    "face_presence",
    "sharpness",
    "flicker",
    "motion",
)
"""Figures shown in the report's main table and in summary.csv."""
CHART_FIGURES = ("sync_confidence_at_zero", "identity_similarity", "text_alignment", "face_presence")
"""Figures in [0, 1]-ish scale drawn side by side in figures.png."""
STRIP_CASES = 2
"""Cases shown in the frame strips."""
TEXT_ALIGNMENT_CLOSE = 0.15
"""Text alignment counts as "close across modes" when its spread over the generated modes is at most this."""


def _rows(document: dict[str, Any]) -> dict[str, dict[str, float]]:
    return {name: value for name, value in document.items() if isinstance(value, dict)}


def _format(value: float | None) -> str:
    if value is None or not np.isfinite(value):
        return "-"
    return f"{value:.3f}" if abs(value) < 100 else f"{value:.0f}"


def expectations(rows: dict[str, dict[str, float]]) -> list[tuple[str, bool | None, str]]:
    """The paper's expectations that must hold, checked honestly: ``(statement, holds or None if n/a, figures)``."""
    checks: list[tuple[str, bool | None, str]] = []

    def get(row: str, name: str) -> float | None:
        value = rows.get(row, {}).get(name)
        return value if value is not None and np.isfinite(value) else None

    ta, tia = get("TA", "identity_similarity"), get("TIA", "identity_similarity")
    checks.append((
        "TIA beats TA on identity",
        None if ta is None or tia is None else tia > ta,
        f"TIA {_format(tia)} vs TA {_format(ta)}",
    ))
    text = {mode: get(mode, "text_alignment") for mode in ("TA", "TI", "TIA")}
    values = [value for value in text.values() if value is not None]
    checks.append((
        f"text alignment stays close across modes (spread <= {TEXT_ALIGNMENT_CLOSE})",
        None if len(values) < 2 else max(values) - min(values) <= TEXT_ALIGNMENT_CLOSE,
        ", ".join(f"{mode} {_format(value)}" for mode, value in text.items()),
    ))
    ti, tia_sync = get("TI", "sync_confidence_at_zero"), get("TIA", "sync_confidence_at_zero")
    checks.append((
        "audio drives the mouth: TIA sync beats TI (which never hears the audio)",
        None if ti is None or tia_sync is None else tia_sync > ti,
        f"TIA {_format(tia_sync)} vs TI {_format(ti)}",
    ))
    return checks


def _write_plots(report_dir: Path, rows: dict[str, dict[str, float]], scored: list[ScoredClip], max_offset: int) -> None:
    plots = report_dir / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    with (plots / "summary.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["row", *HEADLINE])
        for name, figures in rows.items():
            writer.writerow([name, *(round(figures.get(key, float("nan")), 6) for key in HEADLINE)])
    offsets = np.arange(-max_offset, max_offset + 1)
    curves = {
        name: np.mean([clip.sync_scores for clip in scored if clip.mode == name], axis=0) for name in rows
    }
    with (plots / "sync_curve.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["offset", *curves])
        for index, offset in enumerate(offsets):
            writer.writerow([int(offset), *(round(float(curve[index]), 6) for curve in curves.values())])

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.5))
    width = 0.8 / max(len(rows), 1)
    for k, (name, figures) in enumerate(rows.items()):
        xs = np.arange(len(CHART_FIGURES)) + k * width
        ax.bar(xs, [figures.get(key, np.nan) for key in CHART_FIGURES], width, label=name)
    ax.set_xticks(np.arange(len(CHART_FIGURES)) + width * (len(rows) - 1) / 2, CHART_FIGURES, fontsize=8)
    ax.axhline(0, color="black", linewidth=0.5)
    ax.legend(fontsize=8)
    ax.set_title("Evaluation set: mean figures per row")
    fig.tight_layout()
    fig.savefig(report_dir / "figures.png", dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, curve in curves.items():
        ax.plot(offsets, curve, marker=".", label=name)
    ax.set_xlabel("audio offset (frames, > 0: audio lags video)")
    ax.set_ylabel("exact-sync distance (1 - corr)")
    ax.legend(fontsize=8)
    ax.set_title("Sync distance per offset (lower at 0 = in sync)")
    fig.tight_layout()
    fig.savefig(report_dir / "sync_curve.png", dpi=100)
    plt.close(fig)


def _write_strips(
    report_dir: Path, scored: list[ScoredClip], cases: list[EvalCase], eval_dir: Path, num_frames: int
) -> None:
    """One block per case: a row per video (ground truth, then each mode), the reference image first."""
    from PIL import Image, ImageDraw

    blocks = []
    for case in cases[:STRIP_CASES]:
        reference = np.asarray(Image.open(eval_dir / case.reference).convert("RGB"))
        lines = []
        for clip in (c for c in scored if c.case_id == case.case_id):
            picks = np.linspace(0, len(clip.frames) - 1, num_frames).round().astype(int)
            line = np.concatenate([reference, *clip.frames[picks]], axis=1)
            label = Image.fromarray(np.full((line.shape[0], 48, 3), 255, np.uint8))
            name = {"ground_truth": "truth", "vae_round_trip": "VAE"}.get(clip.mode, clip.mode)
            ImageDraw.Draw(label).text((2, line.shape[0] // 2 - 5), name[:8], fill=(0, 0, 0))
            lines.append(np.concatenate([np.asarray(label), line], axis=1))
        blocks.append(np.concatenate(lines, axis=0))
        blocks.append(np.full((8, blocks[-1].shape[1], 3), 255, np.uint8))
    if blocks:
        strip = np.concatenate(blocks[:-1], axis=0)
        Image.fromarray(strip).resize((strip.shape[1] * 2, strip.shape[0] * 2), Image.NEAREST).save(
            report_dir / "strips.png"
        )


def write_report(
    report_dir: Path,
    scored: list[ScoredClip],
    document: dict[str, Any],
    decision: GateDecision,
    cases: list[EvalCase],
    eval_dir: Path,
    candidate: str,
    cfg: EvaluateConfig,
    seconds: float,
    cpu_seconds: float | None = None,
    speed_table: str | None = None,
) -> Path:
    """Write every output of the evaluate stage under ``report_dir``; returns the Markdown report's path.

    ``speed_table``: the speed study's quality-speed table (``reports/speed/table.md``), shown as its own section.
    """
    report_dir = Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    (report_dir / "metrics.json").write_text(json.dumps(document, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    (report_dir / "gate.json").write_text(json.dumps(decision.to_dict(), indent=1) + "\n", encoding="utf-8")
    rows = _rows(document)
    _write_plots(report_dir, rows, scored, cfg.sync_max_offset)
    _write_strips(report_dir, scored, cases, eval_dir, cfg.strip_frames)

    lines = [
        "# Evaluation report",
        "",
        f"Candidate: `{candidate}`. Evaluation set: {len(cases)} held-out cases "
        f"({len({c.identity_id for c in cases})} identities never trained on, their unseen speech), "
        f"modes {', '.join(cfg.modes)}, {cfg.steps} denoising steps, seed {cfg.seed}. Took {seconds:.0f} s"
        + (f" ({cpu_seconds:.0f} CPU-seconds in this process)." if cpu_seconds is not None else "."),
        "",
        "Provenance of each figure: **exact** = measured from pixels against SynthTalk's ground truth with the "
        "renderer's own palette and geometry (no learned model); **proxy** = a model-free stand-in whose scale is "
        "not the paper's; **model** = a real evaluator model (none configured in this run).",
        "",
        "## Mean figures",
        "",
        "| row | " + " | ".join(f"{name} ({METRICS[name].provenance})" for name in HEADLINE) + " |",
        "|---|" + "---|" * len(HEADLINE),
    ]
    for name, figures in rows.items():
        lines.append(f"| {name} | " + " | ".join(_format(figures.get(key)) for key in HEADLINE) + " |")
    lines += [
        "",
        "`ground_truth` scores the evaluation set's own clips: the ceiling of each figure; `vae_round_trip` scores "
        "them after the VAE's encode-decode, the best any generator decoding through this VAE can do. Sync is "
        "measured against the case's audio in every mode, so TI (which never hears it) shows what an "
        "unsynchronised video scores.",
        "",
        "![figures](figures.png)",
        "",
        "## Expectations",
        "",
        "| expectation | holds | figures |",
        "|---|---|---|",
    ]
    for statement, holds, detail in expectations(rows):
        lines.append(f"| {statement} | {'n/a' if holds is None else ('yes' if holds else '**no**')} | {detail} |")
    lines += [
        "",
        f"## Promotion gate ({decision.mode}): {'PASSED' if decision.passed else 'FAILED'}",
        "",
        f"{decision.reason}",
        "",
        "| figure | bound | value | ok |",
        "|---|---|---|---|",
    ]
    for check in decision.checks:
        sign = ">=" if check.kind == "minimum" else "<="
        lines.append(f"| {check.metric} | {sign} {check.bound:g} | {_format(check.value)} | {'yes' if check.passed else '**no**'} |")
    lines += [
        "",
        "## Sync per audio offset",
        "",
        "![sync curve](sync_curve.png)",
        "",
        "## Frame strips",
        "",
        "Each block: one case; each line: reference image, then evenly spaced frames of the ground truth and of "
        "each mode.",
        "",
        "![strips](strips.png)",
        "",
    ]
    if speed_table is not None:
        lines += [
            "## Fewer forwards: step caching and guidance truncation (stage speed_study)",
            "",
            speed_table.rstrip("\n"),
            "",
            "![speed](../speed/speed.png)",
            "",
        ]
    lines += [
        "## Glossary",
        "",
        "| figure | family | provenance | better | paper counterpart | meaning |",
        "|---|---|---|---|---|---|",
    ]
    for name, info in METRICS.items():
        better = "-" if info.higher_is_better is None else ("higher" if info.higher_is_better else "lower")
        lines.append(f"| {name} | {info.family} | {info.provenance} | {better} | {info.paper} | {info.description} |")
    path = report_dir / "report.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
