"""Weights registered by reference: a manifest of files with sha256 checksums, verified when a model loads.

Real HuMo weights are tens of GB. Uploading them through a tracking server for every version is wasteful, so with
``registry.weights: reference`` the registered model holds only ``manifest.json``: for each named component
(``transformer``, ``vae``, ``text_encoder``...) the files it consists of, where they live (a local path or a
``file://`` URI) and their size and sha256. Loading checks every file against the manifest before any weight is
read; a moved, truncated or replaced file stops the load with a message that names it.

Manifest format (``MANIFEST_VERSION`` 1)::

    {"version": 1, "components": {"transformer": {"root": "/models/HuMo-17B",
        "files": [{"path": "ema.safetensors", "size": 123, "sha256": "..."}]}}}
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from humo.hashing import file_sha256 as sha256_file

logger = logging.getLogger(__name__)

MANIFEST_VERSION = 1


class ManifestError(ValueError):
    """A file named in a weights manifest is missing or differs from what was registered."""


def resolve_uri(uri: str | Path) -> Path:
    """A local path from a plain path or a ``file://`` URI.

    Raises:
        ValueError: another scheme (``s3://``...): fetch the files to a local folder and register that.
    """
    text = str(uri)
    parsed = urlparse(text)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme == "":
        return Path(text)
    raise ValueError(
        f"weights URI {text!r} has scheme {parsed.scheme!r}; only local paths and file:// URIs are read. "
        "Copy or mount the weights locally and register that path"
    )


def describe_component(root: Path, files: list[Path] | None = None) -> dict[str, Any]:
    """Manifest entry of one component: every file under ``root`` (or the given ones) with size and sha256.

    Args:
        root: a folder, or a single file (its parent becomes the root).
        files: paths under ``root`` to list; None = every regular file below it.

    Raises:
        FileNotFoundError: ``root`` or a listed file does not exist.
    """
    root = root.resolve()
    if not root.exists():
        raise FileNotFoundError(f"weights {root} not found; check the path given for this component")
    if root.is_file():
        files, root = [root], root.parent
    elif files is None:
        files = sorted(p for p in root.rglob("*") if p.is_file())
    entries = []
    for file in files:
        file = (root / file).resolve() if not Path(file).is_absolute() else Path(file)
        if not file.is_file():
            raise FileNotFoundError(f"weights file {file} not found")
        entries.append({"path": file.relative_to(root).as_posix(), "size": file.stat().st_size, "sha256": sha256_file(file)})
    logger.info("manifest: %d file(s) under %s (%.1f MB)", len(entries), root, sum(e["size"] for e in entries) / 1e6)
    return {"root": root.as_uri(), "files": entries}


def build_manifest(components: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The whole manifest from ``{name: describe_component(...)}``."""
    return {"version": MANIFEST_VERSION, "components": dict(sorted(components.items()))}


def write_manifest(manifest: dict[str, Any], path: Path) -> Path:
    """Write ``manifest`` as indented JSON; returns ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path


def verify_manifest(manifest: dict[str, Any] | Path) -> dict[str, Path]:
    """Check every file of a manifest (existence, size, sha256) and return each component's local root.

    Args:
        manifest: the manifest dict or the path of ``manifest.json``.

    Returns:
        ``{component: root folder}``.

    Raises:
        ManifestError: unknown version, a missing file, a size or checksum mismatch; the message names the file,
            the expected and the found value.
    """
    if isinstance(manifest, Path):
        manifest = json.loads(manifest.read_text(encoding="utf-8"))
    if manifest.get("version") != MANIFEST_VERSION:
        raise ManifestError(f"weights manifest version {manifest.get('version')!r} unknown; expected {MANIFEST_VERSION}")
    roots: dict[str, Path] = {}
    for name, component in manifest["components"].items():
        root = resolve_uri(component["root"])
        for entry in component["files"]:
            file = root / entry["path"]
            if not file.is_file():
                raise ManifestError(
                    f"weights manifest: {name} file {file} is missing; restore it or register the model again"
                )
            size = file.stat().st_size
            if size != entry["size"]:
                raise ManifestError(
                    f"weights manifest: {name} file {file} has {size} bytes, registered with {entry['size']}; "
                    "the file changed since registration"
                )
            found = sha256_file(file)
            if found != entry["sha256"]:
                raise ManifestError(
                    f"weights manifest: {name} file {file} has sha256 {found}, registered with {entry['sha256']}; "
                    "the file changed since registration"
                )
        roots[name] = root
        logger.info("verified %s: %d file(s) under %s", name, len(component["files"]), root)
    return roots
