"""LightningDataModule over precomputed shards (``humo.features.shards``).

Items are read lazily from safetensors shards; the split (train / validation) comes from the index, which
precompute fills from the manifest. Data order is drawn from a seeded generator so a resumed run sees the
same order.
"""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from humo.features.shards import FEATURE_NAMES, NULL_TEXT_KEY, ShardIndex, read_clip_features

logger = logging.getLogger(__name__)


class ShardDataset(Dataset):
    """The clips of a shard folder, one dict of tensors per item (see the shard table in shards.py)."""

    def __init__(self, folder: Path, clip_ids: list[str], index: ShardIndex) -> None:
        self.folder = Path(folder)
        self.clip_ids = clip_ids
        self.index = index

    def __len__(self) -> int:
        return len(self.clip_ids)

    def __getitem__(self, item: int) -> dict[str, torch.Tensor]:
        clip_id = self.clip_ids[item]
        return read_clip_features(self.folder, self.index.clips[clip_id], clip_id, FEATURE_NAMES)


class ShardDataModule(L.LightningDataModule):
    """Train and validation loaders over a shard folder.

    Args:
        folder: the precompute output (shards + ``index.json``).
        batch_size: clips per batch.
        num_workers: loader processes (0 on small CPUs).
        seed: seeds the shuffling generator.
        expected_provenance: values the index's provenance must hold (e.g. the manifest hash); a mismatch
            means the shards are stale and raises before any step runs.
    """

    def __init__(
        self,
        folder: Path,
        batch_size: int,
        num_workers: int = 0,
        seed: int = 0,
        expected_provenance: dict[str, object] | None = None,
    ) -> None:
        super().__init__()
        self.folder = Path(folder)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.index = ShardIndex.load(self.folder)
        check_index(self.index, self.folder, expected_provenance or {})
        splits = self.index.provenance.get("splits", {})
        self.train_ids = sorted(cid for cid in self.index.clips if splits.get(cid, "train") == "train")
        self.val_ids = sorted(cid for cid in self.index.clips if splits.get(cid) == "val")
        if not self.train_ids:
            raise ValueError(f"{self.folder}: no training clips in the shard index (empty dataset after filtering?)")

    def null_text_embeds(self) -> torch.Tensor:
        """``(L, D)`` embedding of the negative prompt, the "no text" condition."""
        from safetensors.torch import load_file

        return load_file(str(self.folder / "extras.safetensors"))[NULL_TEXT_KEY]

    def train_dataloader(self) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed)
        return DataLoader(
            ShardDataset(self.folder, self.train_ids, self.index),
            batch_size=self.batch_size,
            shuffle=True,
            drop_last=len(self.train_ids) >= self.batch_size,
            generator=generator,
            num_workers=self.num_workers,
        )

    def val_dataloader(self) -> DataLoader:
        ids = self.val_ids or self.train_ids[: self.batch_size]
        return DataLoader(ShardDataset(self.folder, ids, self.index), batch_size=self.batch_size, num_workers=self.num_workers)


def check_index(index: ShardIndex, folder: Path, expected: dict[str, object]) -> None:
    """Refuse incomplete or stale shards with a message saying what differs and how to fix it."""
    if not index.complete:
        raise ValueError(f"{folder}: the shards are incomplete (precompute was interrupted); re-run `humo precompute`")
    stale = {key: (index.provenance.get(key), value) for key, value in expected.items() if index.provenance.get(key) != value}
    if stale:
        details = ", ".join(f"{key}: shards have {have!r}, expected {want!r}" for key, (have, want) in stale.items())
        raise ValueError(f"{folder}: stale shards ({details}); re-run `humo precompute`")
    missing = sorted({shard for shard in index.clips.values() if not (folder / shard).is_file()})
    if missing:
        raise FileNotFoundError(f"{folder}: shard files listed in the index are missing: {missing[:5]}")
