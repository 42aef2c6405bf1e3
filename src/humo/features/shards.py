"""Precomputed-feature shards: safetensors files of per-clip tensors plus a JSON index.

Training reads only these (design.md section 5): no frozen encoder runs in a training step. A shard holds
up to ``shard_size`` clips; every tensor is stored under ``"{clip_id}/{name}"``. The index maps clip ids to
shards and records what the features were made from (the manifest's hash and the encoder settings), so
training can refuse stale shards.

Layout of a shard folder (``artifacts/precompute``)::

    shard_00000.safetensors ...   per-clip tensors (table below)
    extras.safetensors            null_text_embeds (L, D): the negative prompt, the "no text" condition
    index.json                    ShardIndex: clip -> shard, clip -> split, provenance, complete

Per-clip tensors (``F`` latent video frames, ``h x w`` latent grid):

======================  ===========================  ===========================================
name                    shape                        meaning
======================  ===========================  ===========================================
``video_latents``       ``(16, F, h, w)`` float32     normalised VAE latents of the clip
``ref_latents``         ``(16, 1, h, w)`` float32     normalised VAE latent of the reference image
``text_embeds``         ``(L, D)`` float32            text encoder states, zero past the real tokens
``audio_features``      ``(F, 8, G, C)`` float32      audio features windowed per latent frame
``face_mask``           ``(F, h, w)`` float32         1 where the face box covers most of a latent cell
======================  ===========================  ===========================================
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from humo.hashing import file_sha256  # noqa: F401 (re-exported: the shard manifests' hash)

logger = logging.getLogger(__name__)

INDEX_NAME = "index.json"
EXTRAS_NAME = "extras.safetensors"
FEATURE_NAMES = ("video_latents", "ref_latents", "text_embeds", "audio_features", "face_mask")
NULL_TEXT_KEY = "null_text_embeds"
"""Stored once in ``extras.safetensors``: the embedding of the negative prompt, used as "no text"."""
SHARD_PATTERN = "shard_{:05d}.safetensors"


@dataclass
class ShardIndex:
    """The index of a shard folder: clip id -> shard file, clip id -> split, plus provenance."""

    clips: dict[str, str] = field(default_factory=dict)
    """clip id -> shard file name."""
    splits: dict[str, str] = field(default_factory=dict)
    """clip id -> ``"train"`` or ``"heldout"`` (from the manifest)."""
    provenance: dict[str, Any] = field(default_factory=dict)
    """What the shards were made from: manifest hash, encoder settings, feature shapes."""
    complete: bool = False
    """True once every manifest clip was written (a killed precompute leaves it False)."""

    def save(self, folder: Path) -> None:
        """Write ``index.json`` atomically (a temporary file renamed over the old one)."""
        tmp = Path(folder) / (INDEX_NAME + ".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1, sort_keys=True))
        tmp.replace(Path(folder) / INDEX_NAME)

    @classmethod
    def load(cls, folder: Path) -> ShardIndex:
        """Read ``index.json``; FileNotFoundError naming the stage to run when it is missing."""
        path = Path(folder) / INDEX_NAME
        if not path.is_file():
            raise FileNotFoundError(f"no shard index at {path}; run the precompute stage (humo precompute)")
        return cls(**json.loads(path.read_text()))


def write_shard(folder: Path, name: str, items: dict[str, dict[str, torch.Tensor]]) -> Path:
    """Write one shard file holding ``items`` (clip id -> tensors) atomically; returns its path.

    The same tensors give byte-identical files (safetensors sorts keys and stores no time).
    """
    tensors = {f"{clip_id}/{key}": value.contiguous() for clip_id, feats in items.items() for key, value in feats.items()}
    path = Path(folder) / name
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp))
    tmp.replace(path)
    return path


def read_clip_features(
    folder: Path, shard: str, clip_id: str, names: tuple[str, ...] = FEATURE_NAMES
) -> dict[str, torch.Tensor]:
    """Read the tensors of one clip from its shard (see the table in the module docstring)."""
    with safe_open(str(Path(folder) / shard), framework="pt") as handle:
        return {name: handle.get_tensor(f"{clip_id}/{name}") for name in names}


def read_null_text(folder: Path) -> torch.Tensor:
    """``(L, D)`` embedding of the negative prompt stored once per shard folder."""
    path = Path(folder) / EXTRAS_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (it holds the null-text embedding); re-run `humo precompute`")
    with safe_open(str(path), framework="pt") as handle:
        return handle.get_tensor(NULL_TEXT_KEY)


def check_index(index: ShardIndex, folder: Path, expected: dict[str, object]) -> None:
    """Refuse incomplete or stale shards with a message saying what differs and how to fix it.

    Args:
        index: the loaded index.
        folder: the shard folder (for the messages and the file checks).
        expected: provenance entries that must match, e.g. ``{"manifest_sha256": ...}``.

    Raises:
        ValueError: the index is incomplete or a provenance entry differs (stale shards).
        FileNotFoundError: a shard file listed in the index is missing.
    """
    if not index.complete:
        raise ValueError(f"{folder}: the shards are incomplete (precompute was interrupted); re-run `humo precompute`")
    stale = {
        key: (index.provenance.get(key), value) for key, value in expected.items() if index.provenance.get(key) != value
    }
    if stale:
        details = ", ".join(f"{key}: shards have {have!r}, expected {want!r}" for key, (have, want) in stale.items())
        raise ValueError(f"{folder}: stale shards ({details}); re-run `humo precompute` (dvc repro precompute)")
    missing = sorted({shard for shard in index.clips.values() if not (Path(folder) / shard).is_file()})
    if missing:
        raise FileNotFoundError(f"{folder}: shard files listed in the index are missing: {missing[:5]}; re-run precompute")
