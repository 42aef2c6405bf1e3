"""Content hashes of files: the one sha256 every layer records (shard manifests, adapter bases, the registry)."""

from __future__ import annotations

import hashlib
from pathlib import Path

HASH_CHUNK_BYTES = 1 << 20
"""Bytes read at a time while hashing (files may be tens of GB)."""


def file_sha256(path: Path | str) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        while chunk := handle.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()
