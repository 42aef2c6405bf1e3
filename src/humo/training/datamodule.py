"""LightningDataModule over precomputed shards (``humo.features.shards``).

Items are read lazily from safetensors shards; the split comes from the index, which precompute fills from
the manifest (``train`` clips train, ``heldout`` clips give the validation loss). Data order is a pure
function of ``(seed, step)``: :class:`StepBatchSampler` yields the global batch of optimizer step ``k`` from
the permutation of data epoch ``k // batches_per_epoch``, and each process takes its slice of it. A run resumed
at step ``k`` therefore sees exactly the batches an uninterrupted run sees, and 1, 2 or N processes see the same
global batches (so DDP/FSDP and single-process runs are comparable).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from humo.features.shards import FEATURE_NAMES, ShardIndex, check_index, read_clip_features, read_null_text

logger = logging.getLogger(__name__)

TRAIN_SPLIT = "train"


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


class StepBatchSampler(Sampler[list[int]]):
    """Batches indexed by optimizer step: step ``k`` always gets the same global batch.

    Args:
        num_items: clips in the dataset.
        batch_size: clips per process.
        num_steps: batches to yield in total (the whole run is one Lightning epoch).
        seed: seeds the per-data-epoch permutations.
        rank, world_size: this process's slice of each global batch of ``batch_size * world_size`` clips.
        start_step: first step to yield (set when resuming).
    """

    def __init__(
        self,
        num_items: int,
        batch_size: int,
        num_steps: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        start_step: int = 0,
    ) -> None:
        self.global_batch = batch_size * world_size
        if num_items < self.global_batch:
            raise ValueError(
                f"{num_items} training clips are fewer than one global batch of {self.global_batch} "
                f"(batch_size); lower train.batch_size or curate more clips"
            )
        self.num_items = num_items
        self.batch_size = batch_size
        self.num_steps = num_steps
        self.seed = seed
        self.rank = rank
        self.start_step = start_step
        self.batches_per_epoch = num_items // self.global_batch

    def __len__(self) -> int:
        return self.num_steps

    def batch_for_step(self, step: int) -> list[int]:
        """Indices of this process's part of the global batch of ``step``."""
        data_epoch, position = divmod(step, self.batches_per_epoch)
        order = torch.randperm(self.num_items, generator=torch.Generator().manual_seed(self.seed * 100_003 + data_epoch))
        start = position * self.global_batch + self.rank * self.batch_size
        return order[start : start + self.batch_size].tolist()

    def __iter__(self) -> Iterator[list[int]]:
        start, self.start_step = self.start_step, 0  # a resume offset applies to the first pass only
        for step in range(start, self.num_steps):
            yield self.batch_for_step(step)


class ShardDataModule(L.LightningDataModule):
    """Train and validation loaders over a shard folder.

    Args:
        folder: the precompute output (shards + ``index.json`` + ``extras.safetensors``).
        batch_size: global clips per step, split evenly over the processes.
        num_steps: optimizer steps of the run.
        num_workers: loader processes (0 on small CPUs).
        seed: seeds the data order.
        val_batches: validation batches (of ``batch_size`` clips) per evaluation.
        expected_provenance: values the index's provenance must hold (e.g. the manifest hash); a mismatch
            means the shards are stale and raises before any step runs.

    Raises:
        FileNotFoundError: no index or a missing shard file.
        ValueError: incomplete or stale shards, or no training clip.
    """

    def __init__(
        self,
        folder: Path,
        batch_size: int,
        num_steps: int,
        num_workers: int = 0,
        seed: int = 0,
        val_batches: int = 4,
        expected_provenance: dict[str, object] | None = None,
    ) -> None:
        super().__init__()
        self.folder = Path(folder)
        self.batch_size = batch_size
        self.num_steps = num_steps
        self.num_workers = num_workers
        self.seed = seed
        self.val_batches = val_batches
        self.index = ShardIndex.load(self.folder)
        check_index(self.index, self.folder, expected_provenance or {})
        ids = sorted(self.index.clips)
        self.train_ids = [cid for cid in ids if self.index.splits.get(cid, TRAIN_SPLIT) == TRAIN_SPLIT]
        if not self.train_ids:
            raise ValueError(
                f"{self.folder}: no training clips in the shard index ({len(ids)} clips, none with split "
                f"'{TRAIN_SPLIT}'): the dataset is empty after filtering; check curate's rejects.jsonl"
            )
        heldout = [cid for cid in ids if cid not in set(self.train_ids)]
        # Validation: held-out clips when there are any, else a fixed slice of the training clips.
        self.val_ids = (heldout or self.train_ids)[: batch_size * val_batches]

    def null_text_embeds(self) -> torch.Tensor:
        """``(L, D)`` embedding of the negative prompt, the "no text" condition."""
        return read_null_text(self.folder)

    def example(self) -> dict[str, torch.Tensor]:
        """The features of the first training clip (to check shapes against the model before training)."""
        return ShardDataset(self.folder, self.train_ids[:1], self.index)[0]

    def _rank_world(self) -> tuple[int, int, int]:
        trainer = self.trainer
        if trainer is None:
            return 0, 1, 0
        return trainer.global_rank, trainer.world_size, trainer.global_step

    def train_dataloader(self) -> DataLoader:
        rank, world_size, start_step = self._rank_world()  # global_step is restored before this is called
        sampler = StepBatchSampler(
            len(self.train_ids), self.batch_size // world_size, self.num_steps, self.seed, rank, world_size, start_step
        )
        if start_step:
            logger.info("data order resumes at step %d", start_step)
        return DataLoader(
            ShardDataset(self.folder, self.train_ids, self.index),
            batch_sampler=sampler,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def val_dataloader(self) -> DataLoader:
        # Every process evaluates the same whole batches: the validation loss does not depend on the world size.
        return DataLoader(
            ShardDataset(self.folder, self.val_ids, self.index), batch_size=self.batch_size, num_workers=self.num_workers
        )
