"""The ``precompute`` stage: encode every manifest clip once into safetensors shards.

Reads ``artifacts/curate/manifest.parquet`` (one row per clip, contract (2)), runs the configured frozen
encoders (``humo.models.encoders``: VAE, text encoder, audio encoder) and writes the shards described in
:mod:`humo.features.shards` to ``artifacts/precompute``. Training never runs a frozen encoder.

Per clip:

1. video frames ``(F, H, W, 3)`` -> VAE latents ``(16, (F-1)/4+1, H/8, W/8)``;
2. reference image, letterboxed to ``H x W`` with white as upstream (humo-reference.md 1.5) -> ``(16, 1, h, w)``;
3. caption -> text token states ``(L, D)``; a clip without a caption gets the null text (the negative prompt);
4. audio -> one feature row per video frame -> windows per latent frame ``(F_lat, 8, G, C)`` (ref 1.4 step 6);
5. per-frame face boxes -> a face mask on the latent grid ``(F_lat, h, w)``, the target of the mask predictor.

Resumable: shards are written in a fixed order (clips sorted by id, ``shard_size`` per shard), each atomically,
and the index is saved after each one with ``complete=False``. A killed run started again with the same
manifest and encoder settings keeps the shards already written and continues; the encoders are deterministic
and safetensors files hold no time, so the result is byte-identical to an uninterrupted run.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from humo.config import EncodersConfig, PathsConfig, PrecomputeConfig
from humo.constants import VAE_SPATIAL_STRIDE, VAE_TEMPORAL_STRIDE
from humo.features.shards import (
    EXTRAS_NAME,
    INDEX_NAME,
    NULL_TEXT_KEY,
    SHARD_PATTERN,
    ShardIndex,
    file_sha256,
    write_shard,
)

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
"""Bumped when the shard layout changes, so old shards read as stale."""
FACE_MASK_COVERAGE = 0.5
"""A latent cell belongs to the face when the face box covers at least this share of it (averaged over the
pixel frames the latent frame covers)."""
REQUIRED_COLUMNS = ("clip_id", "video", "num_frames", "width", "height", "caption", "reference_image", "face_boxes", "split")
VAE_WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")


@dataclass(frozen=True)
class PrecomputeSummary:
    """What the stage did."""

    out_dir: Path
    num_clips: int
    num_shards: int
    encoded: int
    """Clips encoded in this call (0 when everything was up to date)."""
    seconds: float

    @property
    def clips_per_second(self) -> float:
        return self.encoded / self.seconds if self.seconds > 0 else 0.0


# =====================================================================================================
# Pure helpers
# =====================================================================================================


def latent_frame_ranges(num_frames: int) -> list[tuple[int, int]]:
    """Pixel frames ``[start, end)`` each latent frame covers: latent 0 -> frame 0, latent i -> 4i-3..4i."""
    num_latent = (num_frames - 1) // VAE_TEMPORAL_STRIDE + 1
    return [(0, 1)] + [(4 * i - 3, 4 * i + 1) for i in range(1, num_latent)]


def latent_face_mask(boxes: np.ndarray, height: int, width: int) -> torch.Tensor:
    """Face boxes per pixel frame -> a binary face mask per latent frame on the latent grid.

    Args:
        boxes: ``(F, 4)`` float ``[x0, y0, x1, y1]`` in pixels, one per video frame (F = 4k+1).
        height, width: pixel size of the frames (multiples of 8).

    Returns:
        ``((F-1)//4+1, height/8, width/8)`` float32 in {0, 1}: 1 where the box covers at least
        :data:`FACE_MASK_COVERAGE` of the cell, averaged over the pixel frames of that latent frame.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    stride = VAE_SPATIAL_STRIDE
    cells_y, cells_x = height // stride, width // stride
    edges_x = np.arange(cells_x) * stride
    edges_y = np.arange(cells_y) * stride
    # Overlap of each box with each cell along x and y, as a share of the cell side: (F, cells)
    over_x = np.clip(np.minimum(boxes[:, 2:3], edges_x + stride) - np.maximum(boxes[:, 0:1], edges_x), 0, stride) / stride
    over_y = np.clip(np.minimum(boxes[:, 3:4], edges_y + stride) - np.maximum(boxes[:, 1:2], edges_y), 0, stride) / stride
    coverage = over_y[:, :, None] * over_x[:, None, :]  # (F, h, w)
    per_latent = np.stack([coverage[start:end].mean(axis=0) for start, end in latent_frame_ranges(len(boxes))])
    return torch.from_numpy((per_latent >= FACE_MASK_COVERAGE).astype(np.float32))


def read_manifest(path: Path) -> pd.DataFrame:
    """Read and check the curation manifest: the columns precompute needs, unique ids, at least one clip.

    Raises:
        FileNotFoundError: no manifest (run curation first).
        ValueError: missing columns, duplicate clip ids or no rows.
    """
    if not Path(path).is_file():
        raise FileNotFoundError(f"manifest {path} not found; run the curate stage first (humo curate)")
    manifest = pd.read_parquet(path)
    missing = [column for column in REQUIRED_COLUMNS if column not in manifest.columns]
    if missing:
        raise ValueError(f"manifest {path} lacks columns {missing}; it has {list(manifest.columns)} (re-run curate)")
    if manifest.empty:
        raise ValueError(f"manifest {path} has no clips (empty dataset after filtering); check curate's rejects.jsonl")
    duplicated = manifest["clip_id"][manifest["clip_id"].duplicated()].tolist()
    if duplicated:
        raise ValueError(f"manifest {path} repeats clip ids {duplicated[:5]}; clip_id must be unique")
    return manifest.sort_values("clip_id").reset_index(drop=True)


def _vae_fingerprint(encoders: EncodersConfig, vae_dir: Path) -> str | None:
    """SHA-256 of the tiny VAE's weights (they change when train_vae re-runs); None for a user's Wan folder."""
    if encoders.vae.kind != "tiny":
        return None
    folder = Path(encoders.vae.path) if encoders.vae.path is not None else vae_dir
    for name in VAE_WEIGHT_FILES:
        if (folder / name).is_file():
            return file_sha256(folder / name)
    return None


def provenance(manifest_path: Path, encoders: EncodersConfig, cfg: PrecomputeConfig, vae_dir: Path) -> dict[str, Any]:
    """What the shards are made from; any difference makes existing shards stale."""
    return {
        "format_version": FORMAT_VERSION,
        "manifest_sha256": file_sha256(manifest_path),
        "encoders": encoders.model_dump(mode="json"),
        "vae_weights_sha256": _vae_fingerprint(encoders, vae_dir),
        "shard_size": cfg.shard_size,
    }


# =====================================================================================================
# Encoding
# =====================================================================================================


class ClipEncoder:
    """The three frozen encoders behind one call that turns manifest rows into per-clip feature tensors."""

    def __init__(self, encoders: EncodersConfig, vae_dir: Path, root: Path) -> None:
        from humo.models.encoders import load_audio_encoder, load_text_encoder, load_vae

        self.root = root
        self.vae = load_vae(encoders.vae, trained_dir=vae_dir)
        self.text = load_text_encoder(encoders.text)
        self.audio = load_audio_encoder(encoders.audio)

    def _path(self, value: str) -> Path:
        path = Path(value)
        return path if path.is_absolute() else self.root / path

    def null_text(self) -> torch.Tensor:
        """``(L, D)`` embedding of the encoder's negative prompt (the "no text" condition)."""
        return self.text.encode([self.text.negative_prompt])[0]

    @torch.no_grad()
    def encode_rows(self, rows: pd.DataFrame) -> dict[str, dict[str, torch.Tensor]]:
        """Encode a batch of manifest rows (same size and frame count); returns clip id -> tensors."""
        from PIL import Image

        from humo.data.media import read_clip
        from humo.features.audio import window_audio_features
        from humo.models.encoders import frames_to_tensor, letterbox_image

        videos, images, windows, masks = [], [], [], []
        for row in rows.itertuples(index=False):
            clip = read_clip(self._path(row.video))
            num_frames, height, width = int(row.num_frames), int(row.height), int(row.width)
            if clip.frames.shape[:3] != (num_frames, height, width):
                raise ValueError(
                    f"clip {row.clip_id}: {row.video} has frames {clip.frames.shape[:3]} but the manifest says "
                    f"({num_frames}, {height}, {width}); re-run curate"
                )
            videos.append(frames_to_tensor(clip.frames))
            with Image.open(self._path(row.reference_image)) as image:
                images.append(frames_to_tensor(letterbox_image(image, height, width)))
            audio = clip.audio if clip.audio is not None else np.zeros(0, dtype=np.float32)
            windows.append(window_audio_features(self.audio.features(audio.astype(np.float32), num_frames), num_frames))
            masks.append(latent_face_mask(np.stack(list(row.face_boxes)), height, width))
        latents = self.vae.encode(torch.stack(videos))  # [B, 16, F_lat, h, w]
        refs = self.vae.encode_image(torch.stack(images))  # [B, 16, 1, h, w]
        captions = [row.caption if isinstance(row.caption, str) and row.caption.strip() else None for row in rows.itertuples()]
        text = self.text.encode([c if c is not None else self.text.negative_prompt for c in captions])
        return {
            row.clip_id: {
                "video_latents": latents[i].float().cpu(),
                "ref_latents": refs[i].float().cpu(),
                "text_embeds": text[i].float().cpu(),
                "audio_features": windows[i].float(),
                "face_mask": masks[i],
            }
            for i, row in enumerate(rows.itertuples(index=False))
        }


# =====================================================================================================
# The stage
# =====================================================================================================


def _resumable_index(out_dir: Path, prov: dict[str, Any]) -> ShardIndex | None:
    """The existing index if it was made from the same inputs, else None (start over)."""
    if not (out_dir / INDEX_NAME).is_file():
        return None
    index = ShardIndex.load(out_dir)
    if index.provenance != prov:
        logger.info("existing shards in %s were made from other inputs: starting over", out_dir)
        return None
    return index


def _clear(out_dir: Path) -> None:
    """Remove the files this stage writes (never anything else)."""
    for path in [*out_dir.glob("shard_*.safetensors"), *out_dir.glob("*.tmp"), out_dir / EXTRAS_NAME, out_dir / INDEX_NAME]:
        path.unlink(missing_ok=True)


def run(
    cfg: PrecomputeConfig,
    encoders: EncodersConfig,
    paths: PathsConfig,
    root: Path = Path("."),
) -> PrecomputeSummary:
    """Encode every manifest clip once and write shards + index to ``paths.artifacts / "precompute"``.

    Args:
        cfg: shard size and encoder batch size.
        encoders: which VAE, text and audio encoders to run.
        paths: ``artifacts`` holds ``curate/manifest.parquet`` (input), ``train_vae/vae`` (the tiny VAE) and
            ``precompute/`` (output).
        root: the project root, against which relative manifest paths are resolved.

    Returns:
        A :class:`PrecomputeSummary` (clips, shards, clips encoded in this call, seconds).

    Raises:
        FileNotFoundError: no manifest, VAE or media file.
        ValueError: an empty or malformed manifest, or a clip that does not match its manifest row.
    """
    from safetensors.torch import save_file

    root = Path(root)
    # relative paths resolve against root; an absolute one stays as it is
    manifest_path, vae_dir, out_dir = root / paths.manifest, root / paths.vae_dir, root / paths.features_dir
    manifest = read_manifest(manifest_path)
    out_dir.mkdir(parents=True, exist_ok=True)
    prov = provenance(manifest_path, encoders, cfg, vae_dir)

    index = _resumable_index(out_dir, prov)
    if index is None:
        _clear(out_dir)
        index = ShardIndex(provenance=prov)
    index.splits = dict(zip(manifest["clip_id"], manifest["split"].astype(str), strict=True))
    chunks = [manifest.iloc[i : i + cfg.shard_size] for i in range(0, len(manifest), cfg.shard_size)]
    names = [SHARD_PATTERN.format(n) for n in range(len(chunks))]
    todo = [
        (name, chunk)
        for name, chunk in zip(names, chunks, strict=True)
        if not (out_dir / name).is_file() or any(index.clips.get(cid) != name for cid in chunk["clip_id"])
    ]
    start = time.perf_counter()
    if not todo and index.complete and (out_dir / EXTRAS_NAME).is_file():
        logger.info("precompute: %d clips in %d shards are up to date in %s", len(manifest), len(chunks), out_dir)
        return PrecomputeSummary(out_dir, len(manifest), len(chunks), 0, 0.0)
    if len(todo) < len(chunks):
        logger.info("precompute: resuming, %d of %d shards already written", len(chunks) - len(todo), len(chunks))

    encoder = ClipEncoder(encoders, vae_dir, root)
    if not (out_dir / EXTRAS_NAME).is_file():
        save_file({NULL_TEXT_KEY: encoder.null_text().contiguous()}, str(out_dir / (EXTRAS_NAME + ".tmp")))
        (out_dir / (EXTRAS_NAME + ".tmp")).replace(out_dir / EXTRAS_NAME)
    index.complete = False
    index.save(out_dir)
    encoded = 0
    with tqdm(total=sum(len(chunk) for _, chunk in todo), desc="precompute", unit="clip", disable=None) as bar:
        for name, chunk in todo:
            items: dict[str, dict[str, torch.Tensor]] = {}
            for i in range(0, len(chunk), cfg.batch_size):
                batch = chunk.iloc[i : i + cfg.batch_size]
                # One VAE batch needs one frame count and size; mixed batches are encoded group by group.
                for _, group in batch.groupby(["num_frames", "height", "width"], sort=False):
                    items.update(encoder.encode_rows(group))
                bar.update(len(batch))
            write_shard(out_dir, name, {cid: items[cid] for cid in chunk["clip_id"]})
            index.clips.update({cid: name for cid in chunk["clip_id"]})
            index.save(out_dir)
            encoded += len(chunk)
            elapsed = time.perf_counter() - start
            logger.info("precompute: %s written (%d clips, %.1f clips/s)", name, encoded, encoded / max(elapsed, 1e-9))
    index.clips = {cid: index.clips[cid] for cid in manifest["clip_id"]}
    index.complete = True
    index.save(out_dir)
    seconds = time.perf_counter() - start
    logger.info(
        "precompute: %d clips in %d shards -> %s (%d encoded in %.1f s, %.1f clips/s)",
        len(manifest), len(chunks), out_dir, encoded, seconds, encoded / max(seconds, 1e-9),
    )
    return PrecomputeSummary(out_dir, len(manifest), len(chunks), encoded, seconds)
