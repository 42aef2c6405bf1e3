"""The ``synth`` stage: write SynthTalk to a folder in the HuMoSet layout, deterministically and safely.

Layout of ``out_dir``::

    video/st_000000.mp4              H.264 (yuv420p) + AAC mono, muxed by humo.data.media.write_video
    reference_image/st_000000.png    the same person, other shirt, wall and framing, mouth closed
    annotations/st_000000.json       ground truth (see :func:`annotation`)
    video_caption.parquet            one row per clip (columns: CAPTION_COLUMNS)
    synthtalk.json                   marker: dataset name, version, params, counts, layout, identity pool

Safety: a folder holding files but no ``synthtalk.json`` is never touched (:class:`FileExistsError`), nor
is a SynthTalk folder holding files SynthTalk did not write. A folder whose marker records the same version
and params, with all its files present, is left as it is ("up to date"). Otherwise the dataset is built in
a hidden sibling folder (``.raw.synthtalk-tmp-<pid>``) and swapped in at the end, so an interrupted run never
leaves a half-written dataset under ``out_dir``.

Determinism: every clip is a pure function of (seed, clip index) (:mod:`humo.data.synthtalk.world`), the
encoder runs single-threaded and bit-exact (:func:`humo.data.media.write_video`), the parquet file is written
from pyarrow without pandas metadata, and no file records a time or a host; the same params give
byte-identical files on the same machine whatever the number of workers.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import re
import shutil
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from humo.config import SynthConfig
from humo.data.media import write_video
from humo.data.synthtalk.render import head_offsets, render_frames, render_reference
from humo.data.synthtalk.speech import clip_num_samples, frame_envelope, synthesize_speech
from humo.data.synthtalk.world import (
    CLIP_ID_FORMAT,
    ClipSpec,
    Identity,
    Motion,
    Pose,
    allocate_clips,
    build_identity_pool,
    sample_clip_spec,
)

logger = logging.getLogger(__name__)

DATASET_NAME = "synthtalk"
SYNTHTALK_VERSION = "1.0.0"
"""Bump when the generator's output changes: a marker of another version makes the stage regenerate."""
MARKER_NAME = "synthtalk.json"
CAPTIONS_NAME = "video_caption.parquet"
LAYOUT: dict[str, str] = {
    "video": "video/{clip_id}.mp4",
    "reference_image": "reference_image/{clip_id}.png",
    "annotation": "annotations/{clip_id}.json",
}
CAPTION_COLUMNS: dict[str, str] = {
    "video_id": "clip id, e.g. st_000123",
    "video": "mp4 path relative to the dataset folder",
    "caption": "the sentence naming shirt, wall and head motion (never face or hair)",
    "reference_image": "png path relative to the dataset folder",
    "annotation": "ground-truth json path relative to the dataset folder",
    "identity_id": "who speaks, e.g. id_007",
    "split": "'train' or 'heldout' (held-out identities are for evaluation only)",
}
UNREPRODUCIBLE_PARAMS = ("workers",)
"""Params that do not change the files; they are left out of the marker's comparison."""
CHUNK_SIZE = 4
"""Clips handed to a worker process at a time."""


@dataclass(frozen=True)
class SynthSummary:
    """What a run of the stage did."""

    out_dir: Path
    num_clips: int
    num_train_clips: int
    num_heldout_clips: int
    num_identities: int
    seconds: float
    up_to_date: bool
    """True when the folder already held this dataset and nothing was written."""

    def __str__(self) -> str:
        state = "up to date" if self.up_to_date else f"written in {self.seconds:.1f} s"
        return (
            f"SynthTalk in {self.out_dir}: {self.num_clips} clips ({self.num_train_clips} train, "
            f"{self.num_heldout_clips} held-out) over {self.num_identities} identities, {state}"
        )


# =====================================================================================================
# One clip
# =====================================================================================================


def _rounded(values: np.ndarray, decimals: int) -> list:
    """Plain Python numbers (nested lists) rounded for compact, stable JSON."""
    return np.round(np.asarray(values, dtype=np.float64), decimals).tolist()


def _rounded_fields(record: Motion | Pose) -> dict[str, Any]:
    """A small record as a dict, its floats rounded to 4 decimals."""
    return {key: round(value, 4) if isinstance(value, float) else value for key, value in asdict(record).items()}


_NUMBER_LIST = re.compile(r"\[\s+([-0-9.e,\s]+?)\s+\]")


def _to_json(data: dict[str, Any]) -> str:
    """Indented JSON with every list of plain numbers kept on one line (per-frame series stay readable)."""
    text = json.dumps(data, indent=1)
    return _NUMBER_LIST.sub(lambda match: "[" + " ".join(match.group(1).split()) + "]", text) + "\n"


def annotation(
    spec: ClipSpec,
    cfg: SynthConfig,
    envelope: np.ndarray,
    face_boxes: np.ndarray,
    mouth_boxes: np.ndarray,
    offsets: np.ndarray,
    reference_face_box: np.ndarray,
) -> dict[str, Any]:
    """The ground truth of one clip, as written to ``annotations/{clip_id}.json``.

    Keys: ``clip_id``, ``identity_id``, ``split``, ``identity`` (the five identity attributes), ``caption``,
    ``shirt_colour``, ``background_colour``, ``background_pattern``, ``motion`` (kind and parameters),
    ``pose`` (the clip's head placement), ``reference`` (shirt, wall, pose and face box of the reference),
    ``seed`` (dataset), ``clip_seed``, ``fps``, ``num_frames``, ``height``, ``width``, ``sample_rate``,
    ``syllables`` (start/end sample, pitch glide, vowel, peak), and per frame: ``audio_envelope`` (mean
    amplitude envelope over the frame, [0, 1], 0 in silence), ``mouth_opening`` (equal to the envelope),
    ``face_box`` and ``mouth_box`` (``[x0, y0, x1, y1]`` pixels), ``head_offset`` (dx, dy, roll degrees on
    top of ``pose``).
    """
    return {
        "clip_id": spec.clip_id,
        "identity_id": spec.identity.identity_id,
        "split": spec.identity.split,
        "identity": spec.identity.attributes(),
        "caption": spec.caption,
        "shirt_colour": spec.appearance.shirt_colour,
        "background_colour": spec.appearance.background_colour,
        "background_pattern": spec.appearance.background_pattern,
        "motion": _rounded_fields(spec.motion),
        "pose": _rounded_fields(spec.pose),
        "reference": {
            "shirt_colour": spec.reference_appearance.shirt_colour,
            "background_colour": spec.reference_appearance.background_colour,
            "background_pattern": spec.reference_appearance.background_pattern,
            "pose": _rounded_fields(spec.reference_pose),
            "face_box": _rounded(reference_face_box, 2),
        },
        "seed": cfg.seed,
        "clip_seed": spec.clip_seed,
        "fps": cfg.fps,
        "num_frames": cfg.num_frames,
        "height": cfg.height,
        "width": cfg.width,
        "sample_rate": cfg.sample_rate,
        "syllables": [
            {
                "start": s.start,
                "end": s.end,
                "f0_start": round(s.f0_start, 2),
                "f0_end": round(s.f0_end, 2),
                "vowel": s.vowel,
                "peak": round(s.peak, 4),
            }
            for s in spec.syllables
        ],
        "audio_envelope": _rounded(envelope, 4),
        "mouth_opening": _rounded(envelope, 4),
        "face_box": _rounded(face_boxes, 2),
        "mouth_box": _rounded(mouth_boxes, 2),
        "head_offset": _rounded(offsets, 3),
    }


def render_clip(spec: ClipSpec, cfg: SynthConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """Render one clip in memory.

    Returns:
        ``(frames, audio, reference, annotation)``: ``(F, H, W, 3)`` uint8, ``(S,)`` float32 mono,
        ``(H, W, 3)`` uint8 and the ground-truth dict of :func:`annotation`.
    """
    num_samples = clip_num_samples(cfg.num_frames, cfg.fps, cfg.sample_rate)
    audio, sample_envelope = synthesize_speech(spec.syllables, num_samples, cfg.sample_rate, spec.clip_seed)
    envelope = frame_envelope(sample_envelope, cfg.num_frames, cfg.fps, cfg.sample_rate)
    offsets = head_offsets(spec.motion, cfg.num_frames, cfg.fps)
    frames, face_boxes, mouth_boxes = render_frames(
        spec.identity, spec.appearance, spec.pose, offsets, envelope, cfg.height, cfg.width
    )
    reference, reference_face_box = render_reference(
        spec.identity, spec.reference_appearance, spec.reference_pose, cfg.height, cfg.width
    )
    truth = annotation(spec, cfg, envelope, face_boxes, mouth_boxes, offsets, reference_face_box)
    return frames, audio, reference, truth


def _write_clip(job: tuple[ClipSpec, SynthConfig, str]) -> str:
    """Render clip ``spec`` and write its mp4, png and json under ``folder`` (runs in a worker process)."""
    from PIL import Image

    spec, cfg, folder = job
    frames, audio, reference, truth = render_clip(spec, cfg)
    paths = {kind: Path(folder) / pattern.format(clip_id=spec.clip_id) for kind, pattern in LAYOUT.items()}
    write_video(paths["video"], frames, cfg.fps, audio, cfg.sample_rate, faststart=False)  # data.dvc's bytes
    Image.fromarray(reference).save(paths["reference_image"], format="PNG")
    paths["annotation"].write_text(_to_json(truth), encoding="utf-8")
    return spec.clip_id


# =====================================================================================================
# The dataset
# =====================================================================================================


def plan_dataset(cfg: SynthConfig) -> tuple[list[Identity], list[ClipSpec]]:
    """The identity pool and every clip's spec; cheap (no rendering) and a pure function of ``cfg``.

    Raises:
        ValueError: a negative seed, or a pool that cannot be built (see :func:`build_identity_pool`).
    """
    if cfg.seed < 0:
        raise ValueError(f"synth.seed={cfg.seed} must be >= 0 (numpy seed sequences take non-negative integers)")
    identities = build_identity_pool(cfg.seed, cfg.num_train_identities, cfg.num_heldout_identities)
    owners = allocate_clips(cfg.seed, cfg.num_clips, identities, cfg.heldout_fraction)
    num_samples = clip_num_samples(cfg.num_frames, cfg.fps, cfg.sample_rate)
    specs = [
        sample_clip_spec(cfg.seed, index, owner, num_samples, cfg.sample_rate) for index, owner in enumerate(owners)
    ]
    return identities, specs


def _marker_params(cfg: SynthConfig) -> dict[str, Any]:
    return cfg.model_dump(mode="json", exclude=set(UNREPRODUCIBLE_PARAMS))


def _marker(cfg: SynthConfig, identities: list[Identity], specs: list[ClipSpec]) -> dict[str, Any]:
    clips_per_identity = Counter(spec.identity.identity_id for spec in specs)
    splits = Counter(spec.identity.split for spec in specs)
    return {
        "dataset": DATASET_NAME,
        "version": SYNTHTALK_VERSION,
        "params": _marker_params(cfg),
        "counts": {
            "clips": len(specs),
            "train_clips": splits["train"],
            "heldout_clips": splits["heldout"],
            "train_identities": cfg.num_train_identities,
            "heldout_identities": cfg.num_heldout_identities,
        },
        "clip_id_format": CLIP_ID_FORMAT,
        "layout": {**LAYOUT, "captions": CAPTIONS_NAME},
        "caption_columns": CAPTION_COLUMNS,
        "identities": [
            {
                "identity_id": identity.identity_id,
                "split": identity.split,
                **identity.attributes(),
                "num_clips": clips_per_identity[identity.identity_id],
            }
            for identity in identities
        ],
    }


def _write_captions(path: Path, specs: list[ClipSpec]) -> None:
    """``video_caption.parquet``: one row per clip, all columns strings (CAPTION_COLUMNS)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    def relative(kind: str) -> list[str]:
        return [LAYOUT[kind].format(clip_id=spec.clip_id) for spec in specs]

    columns = {
        "video_id": [spec.clip_id for spec in specs],
        "video": relative("video"),
        "caption": [spec.caption for spec in specs],
        "reference_image": relative("reference_image"),
        "annotation": relative("annotation"),
        "identity_id": [spec.identity.identity_id for spec in specs],
        "split": [spec.identity.split for spec in specs],
    }
    assert list(columns) == list(CAPTION_COLUMNS)  # the documented columns are the written ones
    table = pa.table({name: pa.array(values, type=pa.string()) for name, values in columns.items()})
    # built from pyarrow (not pandas) so no library metadata is embedded; the file depends on the rows only
    pq.write_table(table, path, compression="zstd")


def _expected_files(marker: dict[str, Any]) -> set[str]:
    """Relative paths of every file a marker's dataset consists of."""
    clip_ids = [marker["clip_id_format"].format(index=index) for index in range(marker["counts"]["clips"])]
    layout = dict(marker["layout"])
    files = {MARKER_NAME, layout.pop("captions")}
    for pattern in layout.values():
        files.update(pattern.format(clip_id=clip_id) for clip_id in clip_ids)
    return files


def _read_marker(out_dir: Path) -> dict[str, Any] | None:
    """The marker of ``out_dir``, ``None`` when absent.

    Raises:
        FileExistsError: a ``synthtalk.json`` that is not a SynthTalk marker.
    """
    path = out_dir / MARKER_NAME
    if not path.is_file():
        return None
    try:
        marker = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise FileExistsError(
            f"{path} is not a SynthTalk marker ({err}); choose another output folder or empty {out_dir}"
        ) from None
    required = ("dataset", "version", "params", "counts", "clip_id_format", "layout")
    if not isinstance(marker, dict) or marker.get("dataset") != DATASET_NAME or any(k not in marker for k in required):
        raise FileExistsError(f"{path} is not a SynthTalk marker; choose another output folder or empty {out_dir}")
    return marker


def _present_files(out_dir: Path) -> set[str]:
    """Relative paths of everything in ``out_dir`` that is not a folder (links count as files)."""
    return {
        path.relative_to(out_dir).as_posix() for path in out_dir.rglob("*") if path.is_symlink() or not path.is_dir()
    }


def _check_out_dir(out_dir: Path) -> dict[str, Any] | None:
    """Decide whether ``out_dir`` may be (re)written; return its marker when it already holds this dataset.

    Raises:
        FileExistsError: ``out_dir`` is a file, or holds files that SynthTalk did not write.
    """
    if not out_dir.exists():
        return None
    if not out_dir.is_dir():
        raise FileExistsError(f"{out_dir} exists and is not a folder; choose another output folder for SynthTalk")
    present = _present_files(out_dir)
    if not present:
        return None
    marker = _read_marker(out_dir)
    if marker is None:
        shown = ", ".join(sorted(present)[:3]) + (", ..." if len(present) > 3 else "")
        raise FileExistsError(
            f"{out_dir} holds {len(present)} file(s) ({shown}) but no {MARKER_NAME}: it is not a SynthTalk folder. "
            f"Choose another output folder (paths.raw) or empty this one; nothing was changed"
        )
    foreign = present - _expected_files(marker)
    if foreign:
        shown = ", ".join(sorted(foreign)[:3]) + (", ..." if len(foreign) > 3 else "")
        raise FileExistsError(
            f"{out_dir} holds SynthTalk but also {len(foreign)} other file(s) ({shown}); move them away or choose "
            f"another output folder, so that regenerating cannot delete them; nothing was changed"
        )
    return marker


def _is_up_to_date(marker: dict[str, Any] | None, cfg: SynthConfig, out_dir: Path) -> bool:
    if marker is None or marker["version"] != SYNTHTALK_VERSION or marker["params"] != _marker_params(cfg):
        return False
    missing = _expected_files(marker) - _present_files(out_dir)
    if missing:
        logger.warning(
            "%s: %d file(s) of the dataset are missing (e.g. %s); regenerating", out_dir, len(missing), min(missing)
        )
    return not missing


def _render_all(specs: list[ClipSpec], cfg: SynthConfig, folder: Path) -> None:
    """Write every clip's files under ``folder``, over ``cfg.workers`` processes, with a progress bar."""
    from tqdm import tqdm

    for pattern in LAYOUT.values():
        (folder / pattern).parent.mkdir(parents=True, exist_ok=True)
    jobs = [(spec, cfg, str(folder)) for spec in specs]
    workers = min(cfg.workers, len(jobs))
    with tqdm(total=len(jobs), desc="synthtalk", unit="clip", disable=None) as bar:
        if workers == 1:
            for job in jobs:
                _write_clip(job)
                bar.update()
            return
        # spawn: workers start clean (no inherited threads or locks) on every platform; a script that calls
        # run() needs the usual `if __name__ == "__main__":` guard. The executor raises BrokenProcessPool if
        # a worker dies instead of waiting for it forever.
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            for _ in pool.map(_write_clip, jobs, chunksize=CHUNK_SIZE):
                bar.update()


def _sibling(out_dir: Path, role: str) -> Path:
    """A hidden folder beside ``out_dir`` for this process: ``.raw.synthtalk-tmp-1234``."""
    return out_dir.parent / f".{out_dir.name}.synthtalk-{role}-{os.getpid()}"


def _swap_in(built: Path, out_dir: Path) -> None:
    """Replace ``out_dir`` (absent, empty, or an old SynthTalk) by the folder ``built``.

    Two renames on the same file system; only a crash between them leaves ``out_dir`` missing (with the old
    dataset intact in its ``-old-`` sibling).
    """
    if not out_dir.exists():
        os.replace(built, out_dir)
        return
    old = _sibling(out_dir, "old")
    os.replace(out_dir, old)
    os.replace(built, out_dir)
    shutil.rmtree(old)


def run(cfg: SynthConfig, out_dir: Path) -> SynthSummary:
    """Write the SynthTalk dataset into ``out_dir`` (HuMoSet layout plus annotations and a marker).

    Args:
        cfg: the ``synth`` section of params.yaml.
        out_dir: the dataset folder (``paths.raw``); created if missing.

    Returns:
        A :class:`SynthSummary` (counts, seconds, whether the folder was already up to date).

    Raises:
        FileExistsError: ``out_dir`` holds files SynthTalk did not write (nothing is changed then).
        ValueError: settings that cannot make a dataset (negative seed, too many identities).
    """
    started = time.perf_counter()
    out_dir = Path(out_dir)
    identities, specs = plan_dataset(cfg)
    splits = Counter(spec.identity.split for spec in specs)

    def summary(up_to_date: bool) -> SynthSummary:
        return SynthSummary(
            out_dir=out_dir,
            num_clips=len(specs),
            num_train_clips=splits["train"],
            num_heldout_clips=splits["heldout"],
            num_identities=len(identities),
            seconds=time.perf_counter() - started,
            up_to_date=up_to_date,
        )

    marker = _check_out_dir(out_dir)
    if _is_up_to_date(marker, cfg, out_dir):
        logger.info("%s: SynthTalk %s with these params is up to date; nothing to do", out_dir, SYNTHTALK_VERSION)
        return summary(up_to_date=True)
    if marker is not None:
        logger.info("%s: holds SynthTalk made with other params or version; regenerating", out_dir)

    logger.info(
        "rendering SynthTalk: %d clips of %d frames at %dx%d over %d identities with %d worker(s)",
        len(specs), cfg.num_frames, cfg.width, cfg.height, len(identities), cfg.workers,
    )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    stale = sorted(out_dir.parent.glob(f".{out_dir.name}.synthtalk-*"))
    if stale:
        logger.warning("left over from interrupted runs (safe to delete): %s", ", ".join(map(str, stale)))
    building = _sibling(out_dir, "tmp")
    building.mkdir()
    finished = False
    try:
        _render_all(specs, cfg, building)
        _write_captions(building / CAPTIONS_NAME, specs)
        # the marker comes last: a folder with a marker is a complete dataset
        (building / MARKER_NAME).write_text(_to_json(_marker(cfg, identities, specs)), encoding="utf-8")
        _swap_in(building, out_dir)
        finished = True
    finally:
        if not finished:
            shutil.rmtree(building, ignore_errors=True)
    return summary(up_to_date=False)
