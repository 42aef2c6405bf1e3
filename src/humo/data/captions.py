"""Captions: sidecar caption files and the pluggable captioner hook.

A clip gets the dataset's caption or its sidecar ``name.txt``; without either it gets none, and the manifest
says so (``has_caption = False``): curation never invents text. A captioner (``curate.captioner``) may fill
the gap; the only one registered is ``none``. A real one (e.g. a VLM run offline) implements
:class:`Captioner` and is added to :data:`CAPTIONERS`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np


class CaptionError(ValueError):
    """A caption file that cannot be used (e.g. not valid UTF-8)."""


def read_caption_file(path: str | Path) -> str | None:
    """The stripped text of a UTF-8 caption file, or ``None`` when it is empty.

    Raises:
        CaptionError: the file is not valid UTF-8; the message names the byte offset.
    """
    data = Path(path).read_bytes()
    try:
        text = data.decode("utf-8").strip()
    except UnicodeDecodeError as err:
        raise CaptionError(f"{path}: not valid UTF-8 at byte {err.start}; re-save it as UTF-8") from err
    return text or None


class Captioner(Protocol):
    """Writes a caption for a clip that has none."""

    def __call__(self, frames: np.ndarray) -> str | None:
        """``frames`` ``(F, H, W, 3)`` uint8 -> a caption, or ``None`` to leave the clip without one."""
        ...


def no_captioner(frames: np.ndarray) -> str | None:
    """The default: no caption is invented."""
    return None


CAPTIONERS: dict[str, Captioner] = {"none": no_captioner}
"""``curate.captioner`` -> captioner."""
