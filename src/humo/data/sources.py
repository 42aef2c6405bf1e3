"""Source readers: one interface over the datasets curation reads.

A reader turns a folder into a sorted list of :class:`SourceItem` (one per source video) without opening any
video; everything that can fail on a bad file happens later, per source, inside the curation worker, where a
failure becomes a reject instead of a dead stage.

Readers (``curate.source_format``):

* ``humoset``: the HuMoSet layout (``video/``, ``reference_image/``, ``video_caption.parquet`` with columns
  ``video_id, video, caption, reference_image`` and optionally ``annotation, identity_id, split``). SynthTalk
  and the real HuMoSet are read this way; paths in the parquet are relative to the folder.
* ``folder``: any folder of videos (every container decord reads) with optional sidecars of the same stem:
  ``name.txt`` (caption, UTF-8) and ``name.wav``/``name.mp3``/... (audio used instead of the container's).
  Every entry named like a video, and every link, becomes a source: one that cannot be one (a dangling or
  looping link, a folder named like a video, a name that is not valid UTF-8) carries its :attr:`SourceItem.problem`
  and ends in the rejects with that reason, never silently out of both the manifest and the rejects.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v")
"""File endings the folder reader treats as videos."""
SIDECAR_AUDIO_SUFFIXES = (".wav", ".mp3", ".flac", ".m4a", ".ogg")
SIDECAR_SUFFIXES = (*SIDECAR_AUDIO_SUFFIXES, ".txt")
"""Files read as a video's sidecars (never sources themselves)."""
HUMOSET_CAPTIONS = "video_caption.parquet"
HUMOSET_REQUIRED_COLUMNS = ("video_id", "video")
SYNTHETIC_MARKERS = ("synthtalk.json",)
"""Files whose presence marks a dataset as synthetic (recorded per source, shown in the report)."""


@dataclass(frozen=True)
class SourceItem:
    """One source video and what the dataset says about it (nothing here has been opened yet).

    Attributes:
        source_id: unique name of the source inside the dataset (video id or file stem).
        video: the video file.
        audio: sidecar audio to use instead of the container's audio stream, if any.
        caption: the dataset's caption, if it has one.
        caption_file: a sidecar caption to read (UTF-8) in the worker.
        reference_image: the dataset's reference image, if any.
        annotation: ground-truth json (SynthTalk), if any.
        identity_id: the person's identity, if known.
        split: ``train`` or ``heldout`` when the dataset says so.
        synthetic: whether the dataset is procedurally generated.
        problem: ``(reason, detail)`` when the scan already knows this entry cannot be a source (curation
            rejects it with that reason without opening it).
    """

    source_id: str
    video: Path
    audio: Path | None = None
    caption: str | None = None
    caption_file: Path | None = None
    reference_image: Path | None = None
    annotation: Path | None = None
    identity_id: str | None = None
    split: str | None = None
    synthetic: bool = False
    problem: tuple[str, str] | None = None


def _optional(value: object) -> str | None:
    """A parquet cell as a string, or None for null/NaN/empty."""
    if value is None:
        return None
    if isinstance(value, float) and value != value:  # NaN
        return None
    text = str(value)
    return text if text else None


def read_humoset(root: str | Path) -> list[SourceItem]:
    """Read a folder in the HuMoSet layout.

    Raises:
        FileNotFoundError: ``root`` or its ``video_caption.parquet`` is missing.
        ValueError: the parquet lacks ``video_id``/``video`` or repeats a video id.
    """
    import pandas as pd

    root = Path(root)
    table_path = root / HUMOSET_CAPTIONS
    if not table_path.is_file():
        raise FileNotFoundError(
            f"{table_path} not found: a HuMoSet folder needs {HUMOSET_CAPTIONS}; "
            "for a plain folder of videos set curate.source_format=folder"
        )
    table = pd.read_parquet(table_path)
    missing = [column for column in HUMOSET_REQUIRED_COLUMNS if column not in table.columns]
    if missing:
        raise ValueError(f"{table_path} lacks column(s) {missing}; it has {list(table.columns)}")
    duplicated = table["video_id"][table["video_id"].duplicated()].tolist()
    if duplicated:
        raise ValueError(f"{table_path} repeats video_id {duplicated[:5]}; ids must be unique")
    synthetic = any((root / marker).is_file() for marker in SYNTHETIC_MARKERS)

    def path_of(value: object) -> Path | None:
        text = _optional(value)
        return None if text is None else root / text

    items = []
    for row in table.to_dict("records"):
        items.append(
            SourceItem(
                source_id=str(row["video_id"]),
                video=root / str(row["video"]),
                caption=_optional(row.get("caption")),
                reference_image=path_of(row.get("reference_image")),
                annotation=path_of(row.get("annotation")),
                identity_id=_optional(row.get("identity_id")),
                split=_optional(row.get("split")),
                synthetic=synthetic,
            )
        )
    return sorted(items, key=lambda item: item.source_id)


def _entry_problem(entry: Path) -> tuple[str, str] | None:
    """Why a folder entry named like a video (or any link) cannot be a source, or None when it is a video file."""
    try:
        entry.name.encode("utf-8")
    except UnicodeEncodeError:
        return "unreadable_name", f"the file name {entry.name!r} is not valid UTF-8; rename it"
    if entry.is_symlink():
        try:
            target = entry.resolve(strict=True)
        except FileNotFoundError:
            return "dangling_link", f"{entry.name} links to {os.readlink(entry)}, which does not exist"
        except (RuntimeError, OSError) as err:  # RuntimeError on Python < 3.13, OSError (ELOOP) after
            return "link_loop", f"{entry.name} is a link that loops ({err})"
        if not target.is_file():
            return "not_a_file", f"{entry.name} links to {target}, which is not a file"
        return None
    if entry.is_dir():
        return "not_a_file", f"{entry.name} is a folder named like a video; folders are not read (not recursive)"
    if not entry.is_file():
        return "not_a_file", f"{entry.name} is not a regular file"
    return None


def read_folder(root: str | Path) -> list[SourceItem]:
    """Read a plain folder of videos (not recursive) with optional sidecar captions and audio.

    Every entry with a video suffix and every link to one becomes an item; those that cannot be videos carry
    their ``problem`` (see the module docstring).

    Raises:
        FileNotFoundError: ``root`` is not a folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"source folder {root} not found; set curate.source_dir or paths.raw")
    entries = sorted(
        p for p in root.iterdir()
        if p.suffix.lower() in VIDEO_SUFFIXES or (p.is_symlink() and p.suffix.lower() not in SIDECAR_SUFFIXES)
    )
    stems = Counter(p.stem for p in entries)
    items = []
    for video in entries:
        audio = next(
            (video.with_suffix(s) for s in SIDECAR_AUDIO_SUFFIXES if video.with_suffix(s).is_file()), None
        )
        caption_file = video.with_suffix(".txt")
        items.append(
            SourceItem(
                # two videos with one stem (a.mp4, a.mov) keep their suffix so ids stay unique
                source_id=video.stem if stems[video.stem] == 1 else video.name,
                video=video,
                audio=audio,
                caption_file=caption_file if caption_file.is_file() else None,
                problem=_entry_problem(video),
            )
        )
    return items


READERS = {"humoset": read_humoset, "folder": read_folder}
"""``curate.source_format`` -> reader."""


def read_sources(source_format: str, root: str | Path, limit: int | None = None) -> list[SourceItem]:
    """The sources of ``root`` read by the reader named ``source_format``, sorted by id, at most ``limit``.

    Raises:
        ValueError: unknown reader name.
    """
    if source_format not in READERS:
        raise ValueError(f"unknown source_format {source_format!r}; choose one of {', '.join(READERS)}")
    items = READERS[source_format](root)
    logger.info("read %d source(s) from %s (%s)", len(items), root, source_format)
    return items[:limit] if limit is not None else items
