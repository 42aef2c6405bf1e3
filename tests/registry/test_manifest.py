"""Weights by reference: the manifest records sizes and sha256 and refuses files that changed."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from humo.registry.manifest import (
    ManifestError,
    build_manifest,
    describe_component,
    resolve_uri,
    verify_manifest,
    write_manifest,
)


@pytest.fixture()
def weights(tmp_path: Path) -> Path:
    folder = tmp_path / "weights"
    (folder / "sub").mkdir(parents=True)
    (folder / "ema.safetensors").write_bytes(bytes(range(256)) * 40)
    (folder / "sub" / "config.json").write_text('{"dim": 128}')
    return folder


def test_manifest_round_trip(weights: Path, tmp_path: Path) -> None:
    component = describe_component(weights)
    assert [f["path"] for f in component["files"]] == ["ema.safetensors", "sub/config.json"]
    expected = hashlib.sha256((weights / "ema.safetensors").read_bytes()).hexdigest()
    assert component["files"][0] == {"path": "ema.safetensors", "size": 10240, "sha256": expected}
    path = write_manifest(build_manifest({"transformer": component}), tmp_path / "manifest.json")
    assert verify_manifest(path) == {"transformer": weights.resolve()}
    assert json.loads(path.read_text())["components"]["transformer"]["root"].startswith("file://")


def test_checksum_mismatch_names_the_file(weights: Path) -> None:
    manifest = build_manifest({"transformer": describe_component(weights)})
    data = bytearray((weights / "ema.safetensors").read_bytes())
    data[100] ^= 0xFF  # same size, one byte different
    (weights / "ema.safetensors").write_bytes(bytes(data))
    with pytest.raises(ManifestError, match=r"transformer file .*ema\.safetensors has sha256 [0-9a-f]{64}, registered"):
        verify_manifest(manifest)


def test_size_change_and_missing_file(weights: Path) -> None:
    manifest = build_manifest({"vae": describe_component(weights)})
    (weights / "sub" / "config.json").write_text('{"dim": 1280}')
    with pytest.raises(ManifestError, match=r"vae file .*config\.json has 13 bytes, registered with 12"):
        verify_manifest(manifest)
    (weights / "sub" / "config.json").unlink()
    with pytest.raises(ManifestError, match=r"config\.json is missing"):
        verify_manifest(manifest)


def test_selected_files_and_uris(weights: Path) -> None:
    component = describe_component(weights, [Path("ema.safetensors")])
    assert [f["path"] for f in component["files"]] == ["ema.safetensors"]
    assert resolve_uri(component["root"]) == weights.resolve()
    with pytest.raises(ValueError, match="scheme 's3'"):
        resolve_uri("s3://bucket/weights")
    with pytest.raises(FileNotFoundError, match="not found"):
        describe_component(weights / "nope")
