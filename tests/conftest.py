"""Shared fixtures: the project's real params.yaml (shrunk per test) and the real media in ../shared."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
REAL_DATA = PROJECT_ROOT.parent / "shared" / "data" / "real"

# No test may reach a hub or phone home.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")


@pytest.fixture(scope="session")
def project_root() -> Path:
    return PROJECT_ROOT


@pytest.fixture(scope="session")
def params_path() -> Path:
    return PROJECT_ROOT / "params.yaml"


@pytest.fixture(scope="session")
def real_data() -> Path:
    """The folder of real media beside the project; tests that need it skip with a reason when absent."""
    if not REAL_DATA.is_dir():
        pytest.skip(f"real media folder {REAL_DATA} not found (it lives in ../shared/data/real beside the repo)")
    return REAL_DATA
