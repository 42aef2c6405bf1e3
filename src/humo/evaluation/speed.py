"""The ``speed_study`` stage: DiT forwards, seconds and quality of each speed setting against the full sampler.

Steps of :func:`run`:

1. load the candidate and the evaluation set once;
2. for each row (a ``speed`` choice of ``generate.speed_presets``, ``off`` = the full sampler, and the full
   sampler at fewer steps as the baseline any shortcut has to beat) and each of ``seeds`` seeds, generate every
   case in ``mode`` at ``steps`` through :func:`humo.evaluation.evaluate.generate_and_score`;
3. per row: mean DiT forwards and seconds per video, the PSNR of its videos against the full run's (same case and
   seed: how far the shortcut moves the video itself), and each figure's mean over the seeds; the full run's
   standard deviation over its seeds is the evaluation's own noise, and a row is *within noise* on a figure when
   its mean differs from the full run's by at most ``2 * sd * sqrt(2 / seeds)`` (two standard errors of a
   difference of two means);
4. write ``reports/speed/speed.json`` (DVC metrics), ``table.md`` (also shown in the evaluation report and the
   README) and ``speed.png``.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from humo.config import EncodersConfig, EvaluateConfig, GenerateConfig, PathsConfig, RequestLimitsConfig
from humo.evaluation.evalset import EvalCase, load_cases
from humo.evaluation.evaluate import SPEED_REPORT_DIR as REPORT_DIR
from humo.evaluation.evaluate import SPEED_TABLE_FILE as TABLE_FILE
from humo.evaluation.evaluate import generate_and_score
from humo.inference.generate import build_pipeline, load_model

logger = logging.getLogger(__name__)

FULL_ROW = "off"
FIGURES = ("sync_confidence_at_zero", "identity_similarity", "text_alignment")
"""The three figures the study holds every row to (sync, identity, text)."""
NOISE_SIGMAS = 2.0
"""A difference is called noise while it is within this many standard errors of a difference of two means."""


@dataclass
class Row:
    """One setting of the study: what ran, what it cost, what it scored (per seed)."""

    name: str
    speed: str
    steps: int
    forwards: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    figures: dict[str, list[float]] = field(default_factory=dict)
    psnr: list[float] = field(default_factory=list)
    """Per seed: mean PSNR (dB) of the row's videos against the full run's videos of the same case and seed."""

    def mean(self, name: str) -> float:
        return float(np.mean(self.figures[name]))

    def summary(self, full: Row | None, noise: dict[str, float], seeds: int) -> dict[str, Any]:
        out: dict[str, Any] = {
            "speed": self.speed, "steps": self.steps,
            "dit_forwards_per_video": float(np.mean(self.forwards)),
            "seconds_per_video": float(np.mean(self.seconds)),
        }
        if self.psnr:
            out["psnr_vs_full_db"] = float(np.mean(self.psnr))
        if full is not None:
            out["forward_reduction"] = float(np.mean(full.forwards) / np.mean(self.forwards))
            out["speedup"] = float(np.mean(full.seconds) / np.mean(self.seconds))
        within = True
        for name in FIGURES:
            values = self.figures[name]
            out[name] = float(np.mean(values))
            out[f"{name}_seeds"] = [float(v) for v in values]
            if full is not None:
                delta = out[name] - full.mean(name)
                band = NOISE_SIGMAS * noise[name] * math.sqrt(2.0 / seeds)
                out[f"{name}_delta"] = delta
                out[f"{name}_within_noise"] = bool(abs(delta) <= band)
                within = within and abs(delta) <= band
        out["within_noise"] = within
        return out


def psnr(frames: np.ndarray, reference: np.ndarray) -> float:
    """PSNR in dB of uint8 ``frames`` against ``reference`` (what caching papers report against the full model);
    identical videos give infinity."""
    error = np.mean((frames.astype(np.float64) - reference.astype(np.float64)) ** 2)
    return float("inf") if error == 0 else float(10 * np.log10(255.0**2 / error))


def study_rows(cfg: EvaluateConfig, settings: GenerateConfig) -> list[Row]:
    """The rows: the full sampler, its fewer-step baselines, then every configured speed choice."""
    study = cfg.speed
    rows = [Row(FULL_ROW, FULL_ROW, study.steps)]
    rows += [Row(f"{FULL_ROW}, {steps} steps", FULL_ROW, steps) for steps in study.step_baselines]
    for name in study.rows:
        speed, _, steps = name.partition("@")
        if name != FULL_ROW:
            rows.append(Row(name, speed, int(steps) if steps else study.steps))
    return rows


def measure(
    pipe: Any,
    rows: list[Row],
    cases: list[EvalCase],
    eval_dir: Path,
    cfg: EvaluateConfig,
    settings: GenerateConfig,
    limits: RequestLimitsConfig,
) -> None:
    """Fill every row's per-seed costs and figures (step 2); rows of one seed run next to each other, so that
    a slower stretch of the machine hits every row alike."""
    study = cfg.speed
    for seed_index in range(study.seeds):
        seed = study.seed + seed_index * len(cases)
        full_frames: dict[str, np.ndarray] = {}
        for row in rows:
            run_cfg = cfg.model_copy(update={"modes": (study.mode,), "steps": row.steps, "seed": seed})
            tick = time.perf_counter()
            scored = generate_and_score(pipe, cases, eval_dir, run_cfg, settings, limits, speed=row.speed)
            logger.info("speed study: %s seed %d in %.1f s", row.name, seed_index, time.perf_counter() - tick)
            row.forwards.append(float(np.mean([clip.generation["dit_forwards"] for clip in scored])))
            row.seconds.append(float(np.mean([clip.generation["seconds"] for clip in scored])))
            for name in FIGURES:
                row.figures.setdefault(name, []).append(float(np.nanmean([clip.figures[name] for clip in scored])))
            if row.name == FULL_ROW:
                full_frames = {clip.case_id: clip.frames for clip in scored}
            else:
                row.psnr.append(float(np.mean([psnr(clip.frames, full_frames[clip.case_id]) for clip in scored])))


def summarise(rows: list[Row], seeds: int) -> dict[str, Any]:
    """Step 3: the DVC metrics document (rows by name, the noise, and the best row within noise)."""
    full = rows[0]
    noise = {name: float(np.std(full.figures[name], ddof=1)) if seeds > 1 else 0.0 for name in FIGURES}
    summaries = {row.name: row.summary(full if row is not full else None, noise, seeds) for row in rows}
    within = [name for name, s in summaries.items() if name != full.name and s["within_noise"]]
    best = max(within, key=lambda name: summaries[name]["forward_reduction"], default=None)
    return {"seeds": seeds, "noise_sd": noise, "noise_sigmas": NOISE_SIGMAS, "rows": summaries, "best_within_noise": best}


def table_markdown(document: dict[str, Any], mode: str, cases: int) -> str:
    """The quality-speed table (Markdown), with how to read it."""
    rows = document["rows"]
    lines = [
        f"Mode {mode}, {cases} evaluation cases, {document['seeds']} seeds per row. Figures are means over the "
        "seeds; in brackets the difference from the full run, marked `~` when within the evaluation's own seed "
        f"noise ({document['noise_sigmas']:g} standard errors of a difference; the full run's seed sd is "
        + ", ".join(f"{name} {sd:.3f}" for name, sd in document["noise_sd"].items()) + ") and `!` when not.",
        "",
        "| setting | steps | DiT forwards / video | forwards cut | s / video | speed-up | PSNR vs full (dB) | "
        + " | ".join(FIGURES) + " |",
        "|---|---:|---:|---:|---:|---:|---:|" + "---:|" * len(FIGURES),
    ]
    for name, row in rows.items():
        cells = [
            f"`{name}`", str(row["steps"]), f"{row['dit_forwards_per_video']:.0f}",
            f"{row.get('forward_reduction', 1.0):.2f}x", f"{row['seconds_per_video']:.2f}", f"{row.get('speedup', 1.0):.2f}x",
            f"{row['psnr_vs_full_db']:.1f}" if "psnr_vs_full_db" in row else "-",
        ]
        for figure in FIGURES:
            value = f"{row[figure]:.3f}"
            if f"{figure}_delta" in row:
                mark = "~" if row[f"{figure}_within_noise"] else "!"
                value += f" ({row[f'{figure}_delta']:+.3f}{mark})"
            cells.append(value)
        lines.append("| " + " | ".join(cells) + " |")
    best = document["best_within_noise"]
    lines += ["", f"Largest cut of DiT forwards with every figure within noise: `{best}`." if best else
              "No setting kept every figure within noise."]
    return "\n".join(lines) + "\n"


def _plot(document: dict[str, Any], path: Path) -> None:
    """Each figure against DiT forwards per video, with the full run's noise band, and the PSNR against the full
    run: the panel that separates fewer steps from caching."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = document["rows"]
    full = rows[FULL_ROW]
    fig, axes = plt.subplots(1, len(FIGURES) + 1, figsize=(4.2 * (len(FIGURES) + 1), 3.8))
    for ax, figure in zip(axes, FIGURES):
        band = document["noise_sigmas"] * document["noise_sd"][figure] * math.sqrt(2.0 / document["seeds"])
        ax.axhspan(full[figure] - band, full[figure] + band, color="0.88", label="full run +- noise")
        ax.set_title(figure, fontsize=9)
    axes[-1].set_title("PSNR vs the full run (dB)", fontsize=9)
    for name, row in rows.items():
        fewer_steps = row["speed"] == FULL_ROW
        style = dict(marker="s" if fewer_steps else "o", s=30, color="0.3" if fewer_steps else None)
        for ax, figure in zip(axes, (*FIGURES, "psnr_vs_full_db")):
            if figure in row:
                ax.scatter(row["dit_forwards_per_video"], row[figure], **style)
                ax.annotate(name, (row["dit_forwards_per_video"], row[figure]), fontsize=6, xytext=(3, 3),
                            textcoords="offset points")
    for ax in axes:
        ax.set_xlabel("DiT forwards per video (squares: the full sampler)")
        ax.xaxis.label.set_size(8)
    axes[0].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(
    cfg: EvaluateConfig,
    settings: GenerateConfig,
    limits: RequestLimitsConfig,
    encoders: EncodersConfig,
    paths: PathsConfig,
    candidate: Path | None = None,
) -> dict[str, Any]:
    """The ``speed_study`` stage (see the module docstring); returns the metrics document."""
    cases = load_cases(paths.eval_set_dir)
    transformer, info = load_model(Path(candidate or paths.candidate_dir))
    pipe = build_pipeline(transformer, settings.model_copy(update={"progress_bar": False}), encoders, paths.vae_dir,
                          limits)
    rows = study_rows(cfg, settings)
    measure(pipe, rows, cases, paths.eval_set_dir, cfg, settings, limits)
    document = summarise(rows, cfg.speed.seeds)
    document["model"] = f"{info.name}@{info.version}"
    out_dir = paths.report_dir(REPORT_DIR)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "speed.json").write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")
    (out_dir / TABLE_FILE).write_text(table_markdown(document, cfg.speed.mode, len(cases)), encoding="utf-8")
    _plot(document, out_dir / "speed.png")
    logger.info("speed study: best within noise %s; table in %s", document["best_within_noise"], out_dir / TABLE_FILE)
    return document
