"""The curated manifest (contract 2 of the project brief) and the rejects log.

``artifacts/curate/manifest.parquet`` holds one row per accepted clip with the columns of
:data:`MANIFEST_SCHEMA`; ``artifacts/curate/rejects.jsonl`` one json object per rejected source or clip
(``source``, ``clip`` or null for a whole source, ``reason``, ``detail``). Paths are stored relative to the
project root when they lie inside it, absolute otherwise (:func:`portable_path`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

MANIFEST_SCHEMA = pa.schema(
    [
        ("clip_id", pa.string()),
        ("source", pa.string()),
        ("video", pa.string()),
        ("start_frame", pa.int64()),
        ("num_frames", pa.int64()),
        ("fps", pa.float64()),
        ("width", pa.int64()),
        ("height", pa.int64()),
        ("caption", pa.string()),
        ("has_caption", pa.bool_()),
        ("reference_image", pa.string()),
        ("reference_source", pa.string()),
        ("face_boxes", pa.list_(pa.list_(pa.float64(), 4))),
        ("speech_ratio", pa.float64()),
        ("sync_offset", pa.int64()),
        ("sync_confidence", pa.float64()),
        ("sync_distance", pa.float64()),
        ("split", pa.string()),
        ("identity_id", pa.string()),
        ("annotation", pa.string()),
        ("source_id", pa.string()),
        ("shot_index", pa.int64()),
        ("brightness", pa.float64()),
        ("sharpness", pa.float64()),
        ("face_size", pa.float64()),
        ("face_detector", pa.string()),
        ("linked", pa.bool_()),
        ("sync_scorer", pa.string()),
        ("sync_frames", pa.int64()),
        ("clip_sync_offset", pa.int64()),
        ("clip_sync_confidence", pa.float64()),
        ("reference_similarity", pa.float64()),
    ]
)
"""Columns of ``manifest.parquet``: the contract's columns first, then curation's quality figures."""
MANIFEST_COLUMNS = tuple(MANIFEST_SCHEMA.names)
REJECT_FIELDS = ("source", "clip", "reason", "detail")


def portable_path(path: str | Path, root: str | Path) -> str:
    """``path`` relative to ``root`` when inside it, else absolute (as a POSIX string)."""
    path = Path(path).absolute()
    root = Path(root).absolute()
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def resolve_path(path: str, root: str | Path) -> Path:
    """Inverse of :func:`portable_path`: a manifest path as a usable :class:`Path`."""
    candidate = Path(path)
    return candidate if candidate.is_absolute() else Path(root) / candidate


def write_manifest(rows: Iterable[Mapping[str, Any]], path: str | Path) -> Path:
    """Write manifest rows (dicts with every column of :data:`MANIFEST_SCHEMA`) as parquet, sorted by clip id.

    Raises:
        ValueError: a row lacks a column or has an unknown one.
    """
    rows = sorted(rows, key=lambda row: row["clip_id"])
    for row in rows:
        missing = set(MANIFEST_COLUMNS) - set(row)
        extra = set(row) - set(MANIFEST_COLUMNS)
        if missing or extra:
            raise ValueError(f"manifest row {row.get('clip_id')!r}: missing {sorted(missing)}, unknown {sorted(extra)}")
    table = pa.Table.from_pylist(list(rows), schema=MANIFEST_SCHEMA)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path


def read_manifest(path: str | Path):
    """The manifest as a pandas DataFrame.

    Raises:
        FileNotFoundError: no manifest at ``path`` (run ``humo curate`` first).
    """
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest {path} not found; run `humo curate` first")
    return pd.read_parquet(path)


def write_rejects(rejects: Iterable[Mapping[str, Any]], path: str | Path) -> Path:
    """Write rejects as JSON lines with the fields :data:`REJECT_FIELDS`, sorted by source then clip."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ordered = sorted(rejects, key=lambda r: (r["source"], r["clip"] or ""))
    with path.open("w", encoding="utf-8") as handle:
        for reject in ordered:
            handle.write(json.dumps({field: reject[field] for field in REJECT_FIELDS}, sort_keys=False) + "\n")
    return path


def read_rejects(path: str | Path) -> list[dict[str, Any]]:
    """The rejects log as a list of dicts."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]
