"""Precomputed-feature shards: safetensors files of per-clip tensors plus a JSON index.

Training reads only these (design.md section 5): no frozen encoder runs in a training step. A shard holds
many clips; every tensor is stored under ``"{clip_id}/{name}"``. The index maps clip ids to shards and
records what the features were made from (the manifest's hash and the encoder settings), so training can
refuse stale shards.

Per-clip tensors (``F`` latent video frames, ``h x w`` latent grid):

======================  ===========================  ===========================================
name                    shape                        meaning
======================  ===========================  ===========================================
``video_latents``       ``(16, F, h, w)`` float32     normalised VAE latents of the clip
``ref_latents``         ``(16, 1, h, w)`` float32     normalised VAE latent of the reference image
``text_embeds``         ``(L, D)`` float32            text encoder states, zero past the real tokens
``audio_features``      ``(F, 8, G, C)`` float32      audio features windowed per latent frame
``face_mask``           ``(F, h, w)`` float32         1 inside the face box on the latent grid
======================  ===========================  ===========================================
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

logger = logging.getLogger(__name__)

INDEX_NAME = "index.json"
FEATURE_NAMES = ("video_latents", "ref_latents", "text_embeds", "audio_features", "face_mask")
NULL_TEXT_KEY = "null_text_embeds"
"""Stored once in ``extras.safetensors``: the embedding of the negative prompt, used as "no text"."""


@dataclass
class ShardIndex:
    """The index of a shard folder: clip id -> shard file, plus provenance."""

    clips: dict[str, str] = field(default_factory=dict)
    """clip id -> shard file name."""
    provenance: dict[str, Any] = field(default_factory=dict)
    """What the shards were made from: manifest hash, encoder kinds, preset, ..."""
    complete: bool = False
    """True once every manifest clip was written (a killed precompute leaves it False)."""

    def save(self, folder: Path) -> None:
        tmp = folder / (INDEX_NAME + ".tmp")
        tmp.write_text(json.dumps(self.__dict__, indent=1, sort_keys=True))
        tmp.replace(folder / INDEX_NAME)

    @classmethod
    def load(cls, folder: Path) -> ShardIndex:
        path = Path(folder) / INDEX_NAME
        if not path.is_file():
            raise FileNotFoundError(f"no shard index at {path}; run the precompute stage (humo precompute)")
        return cls(**json.loads(path.read_text()))


def write_shard(folder: Path, name: str, items: dict[str, dict[str, torch.Tensor]]) -> Path:
    """Write one shard file holding ``items`` (clip id -> tensors) atomically; returns its path."""
    tensors = {f"{clip_id}/{key}": value.contiguous() for clip_id, feats in items.items() for key, value in feats.items()}
    path = Path(folder) / name
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp))
    tmp.replace(path)
    return path


def read_clip_features(folder: Path, shard: str, clip_id: str, names: tuple[str, ...] = FEATURE_NAMES) -> dict[str, torch.Tensor]:
    """Read the tensors of one clip from its shard."""
    with safe_open(str(Path(folder) / shard), framework="pt") as handle:
        return {name: handle.get_tensor(f"{clip_id}/{name}") for name in names}
