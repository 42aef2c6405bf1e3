"""The ``eval_set`` stage: a fixed evaluation set of held-out identities and unseen audio, as a DVC output.

Cases are curated clips of the ``heldout`` split (identities never trained on, so their speech is unseen too),
chosen deterministically from ``evaluate.seed``: distinct identities first, then round-robin. Each case folder
holds everything the evaluation needs, so the set is versioned in full by DVC and does not depend on the raw
dataset staying in place::

    artifacts/eval_set/cases.json            one record per case (see :class:`EvalCase`)
    artifacts/eval_set/<case_id>/reference.png
    artifacts/eval_set/<case_id>/audio.wav    16 kHz mono, exactly num_frames / fps seconds
    artifacts/eval_set/<case_id>/truth.mp4    the ground-truth clip (the "ground truth" row of the report)

Ground truth comes from the SynthTalk annotation of each clip (face and mouth boxes, identity attributes,
caption attributes); clips without an annotation are skipped with a warning (the exact metrics need it).
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from humo.config import EvaluateConfig, PathsConfig
from humo.data.media import read_clip, write_wav

logger = logging.getLogger(__name__)

CASES_FILE = "cases.json"


@dataclass(frozen=True)
class EvalCase:
    """One evaluation request and its ground truth. Paths are relative to the evaluation-set folder."""

    case_id: str
    clip_id: str
    identity_id: str
    caption: str
    reference: str
    audio: str
    truth_video: str
    num_frames: int
    fps: float
    height: int
    width: int
    face_boxes: list[list[float]]
    """``(F, 4)`` where the face is in the ground-truth clip, per frame."""
    mouth_boxes: list[list[float]]
    """``(F, 4)`` mouth boxes of the ground-truth clip (the metrics use only their union)."""
    reference_face_box: list[float]
    identity: dict[str, str]
    scene: dict[str, str]
    """Caption attributes: shirt_colour, background_colour, background_pattern, motion."""


def _resolve(path: str, root: Path) -> Path:
    candidate = Path(path)
    return candidate if candidate.is_absolute() else root / candidate


def choose_clips(manifest: Any, num_cases: int, seed: int) -> list[int]:
    """Row positions of ``manifest`` to evaluate: held-out rows with an annotation, distinct identities first.

    Raises:
        ValueError: the manifest has no held-out clip with an annotation.
    """
    heldout = manifest[(manifest["split"] == "heldout") & manifest["annotation"].notna()]
    if heldout.empty:
        raise ValueError(
            "the curated manifest has no held-out clip with a SynthTalk annotation; check synth.num_heldout_identities "
            "and that curate keeps held-out clips"
        )
    order = np.random.default_rng(seed).permutation(len(heldout))
    rows = heldout.iloc[order]
    by_identity: dict[str, list[int]] = {}
    for position, identity in zip(rows.index, rows["identity_id"].fillna(""), strict=True):
        by_identity.setdefault(str(identity), []).append(int(position))
    chosen: list[int] = []
    while len(chosen) < num_cases and any(by_identity.values()):
        for queue in by_identity.values():
            if queue and len(chosen) < num_cases:
                chosen.append(queue.pop(0))
    if len(chosen) < num_cases:
        logger.warning("only %d held-out clips available; evaluation set has %d cases, not %d", len(chosen), len(chosen), num_cases)
    return chosen


def run(cfg: EvaluateConfig, paths: PathsConfig, project_root: Path | None = None) -> list[EvalCase]:
    """Build the evaluation set under ``<artifacts>/eval_set`` from the curated manifest.

    Args:
        cfg: the ``evaluate`` section (``num_cases``, ``seed``).
        paths: the ``paths`` section.
        project_root: where relative manifest paths start (default: the working directory).

    Returns:
        The cases written.

    Raises:
        FileNotFoundError: no curated manifest (run ``humo curate``).
    """
    import pandas as pd

    root = Path(project_root or Path.cwd())
    manifest_path = root / paths.manifest
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{manifest_path} not found; run `humo curate` (dvc repro curate) first")
    manifest = pd.read_parquet(manifest_path)
    out_dir = root / paths.eval_set_dir
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    cases = []
    for number, position in enumerate(choose_clips(manifest, cfg.num_cases, cfg.seed)):
        row = manifest.loc[position]
        truth = json.loads(_resolve(row["annotation"], root).read_text(encoding="utf-8"))
        case_id = f"case_{number:02d}_{row['clip_id']}"
        folder = out_dir / case_id
        folder.mkdir()
        clip = read_clip(_resolve(row["video"], root))
        if clip.audio is None:
            raise ValueError(f"curated clip {row['video']} has no audio; curate must mux the audio into clips")
        start, count = int(row["start_frame"]), int(row["num_frames"])
        frames_window = slice(start, start + count) if len(truth["face_box"]) > count else slice(0, count)
        shutil.copyfile(_resolve(row["reference_image"], root), folder / "reference.png")
        shutil.copyfile(_resolve(row["video"], root), folder / "truth.mp4")
        write_wav(folder / "audio.wav", clip.audio, clip.sample_rate)
        cases.append(
            EvalCase(
                case_id=case_id,
                clip_id=str(row["clip_id"]),
                identity_id=str(row["identity_id"]),
                caption=str(row["caption"]),
                reference=f"{case_id}/reference.png",
                audio=f"{case_id}/audio.wav",
                truth_video=f"{case_id}/truth.mp4",
                num_frames=count,
                fps=float(row["fps"]),
                height=int(row["height"]),
                width=int(row["width"]),
                face_boxes=truth["face_box"][frames_window],
                mouth_boxes=truth["mouth_box"][frames_window],
                reference_face_box=truth["reference"]["face_box"],
                identity=truth["identity"],
                scene={
                    "shirt_colour": truth["shirt_colour"],
                    "background_colour": truth["background_colour"],
                    "background_pattern": truth["background_pattern"],
                    "motion": truth["motion"]["kind"],
                },
            )
        )
    (out_dir / CASES_FILE).write_text(json.dumps([asdict(case) for case in cases], indent=1) + "\n", encoding="utf-8")
    logger.info("evaluation set: %d cases over %d identities in %s", len(cases), len({c.identity_id for c in cases}), out_dir)
    return cases


def load_cases(eval_dir: Path) -> list[EvalCase]:
    """The cases of an evaluation-set folder.

    Raises:
        FileNotFoundError: no ``cases.json`` there (run ``humo eval-set``).
    """
    path = Path(eval_dir) / CASES_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; run `humo eval-set` (dvc repro eval_set) first")
    return [EvalCase(**record) for record in json.loads(path.read_text(encoding="utf-8"))]
