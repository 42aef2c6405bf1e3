"""Content hashes of files (the one sha256 every layer records: shard manifests, adapter bases, the registry) and the
git commit a result was made with."""

from __future__ import annotations

import hashlib
import subprocess
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


def git_commit(root: Path) -> str:
    """``HEAD`` of the repository at ``root``, suffixed ``-dirty`` with uncommitted changes; ``unknown`` outside git."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{commit}-dirty" if dirty else commit
