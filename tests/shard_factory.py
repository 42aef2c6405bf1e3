"""Small shard folders written with the real shard writer, for the training tests.

The features are random tensors of the shapes the tiny preset takes (9 video frames at 32x32 -> 3 latent frames
of 4x4), plus a learnable structure (the latents depend on the text and reference) so that losses can fall.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch
from safetensors.torch import save_file

from humo.features.shards import EXTRAS_NAME, NULL_TEXT_KEY, SHARD_PATTERN, ShardIndex, file_sha256, write_shard

LATENT_FRAMES, GRID, TEXT_LEN, TEXT_DIM = 3, 4, 8, 384


def make_shards(
    artifacts: Path, num_train: int = 16, num_heldout: int = 4, seed: int = 0, shard_size: int = 8,
    keep_manifest: bool = False,
) -> Path:
    """Write ``artifacts/curate/manifest.parquet`` and ``artifacts/precompute`` with random tiny features
    (``keep_manifest``: the shards record the manifest already there instead)."""
    generator = torch.Generator().manual_seed(seed)
    ids = [f"clip_{i:03d}" for i in range(num_train + num_heldout)]
    splits = ["train"] * num_train + ["heldout"] * num_heldout
    (artifacts / "curate").mkdir(parents=True, exist_ok=True)
    manifest = artifacts / "curate" / "manifest.parquet"
    if not keep_manifest:
        pd.DataFrame({"clip_id": ids, "split": splits, "num_frames": 9}).to_parquet(manifest)
    out = artifacts / "precompute"
    out.mkdir(parents=True, exist_ok=True)
    index = ShardIndex(splits=dict(zip(ids, splits)), provenance={"manifest_sha256": file_sha256(manifest)})
    for n, start in enumerate(range(0, len(ids), shard_size)):
        items = {}
        for cid in ids[start : start + shard_size]:
            ref = torch.randn(16, 1, GRID, GRID, generator=generator)
            items[cid] = {
                "video_latents": ref.expand(16, LATENT_FRAMES, GRID, GRID) * 0.8
                + 0.2 * torch.randn(16, LATENT_FRAMES, GRID, GRID, generator=generator),
                "ref_latents": ref,
                "text_embeds": torch.randn(TEXT_LEN, TEXT_DIM, generator=generator),
                "audio_features": torch.randn(LATENT_FRAMES, 8, 1, 80, generator=generator),
                "face_mask": (torch.rand(LATENT_FRAMES, GRID, GRID, generator=generator) > 0.5).float(),
            }
        name = SHARD_PATTERN.format(n)
        write_shard(out, name, items)
        index.clips.update({cid: name for cid in items})
    save_file({NULL_TEXT_KEY: torch.zeros(TEXT_LEN, TEXT_DIM)}, str(out / EXTRAS_NAME))
    index.complete = True
    index.save(out)
    return out


