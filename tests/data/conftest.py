"""Fixtures shared by the curation tests: a small SynthTalk written once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from humo.config import SynthConfig
from humo.data import synthtalk

SMALL_SYNTHTALK = SynthConfig(
    num_clips=12, num_train_identities=3, num_heldout_identities=1, heldout_fraction=0.25, workers=1
)


@pytest.fixture(scope="session")
def synthtalk_small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Twelve SynthTalk clips (33 frames, 25 fps, 64x64) in the HuMoSet layout."""
    out = tmp_path_factory.mktemp("synthtalk_small") / "raw"
    synthtalk.run(SMALL_SYNTHTALK, out)
    return out
