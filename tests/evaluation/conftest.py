"""Ground-truth SynthTalk clips for the metric sanity tests (a small dataset rendered once per session) and a tiny
project around them: the curated manifest in the contract's layout and the real params.yaml shrunk."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from humo.config import SynthConfig, load_params
from humo.data import synthtalk
from humo.data.media import read_clip


@dataclass(frozen=True)
class TruthClip:
    """A SynthTalk clip as read back from its mp4, with its reference image and ground truth."""

    frames: np.ndarray
    audio: np.ndarray
    fps: float
    sample_rate: int
    reference: np.ndarray
    truth: dict
    caption: str

    @property
    def face_boxes(self) -> np.ndarray:
        return np.asarray(self.truth["face_box"], dtype=np.float64)

    @property
    def reference_box(self) -> np.ndarray:
        return np.asarray(self.truth["reference"]["face_box"], dtype=np.float64)


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synthtalk") / "raw"
    synthtalk.run(SynthConfig(num_clips=12, num_train_identities=8, num_heldout_identities=2, workers=1), out)
    return out


@pytest.fixture(scope="session")
def truth_clips(synth_dir: Path) -> list[TruthClip]:
    table = pd.read_parquet(synth_dir / synthtalk.CAPTIONS_NAME)
    clips = []
    for row in table.itertuples():
        clip = read_clip(synth_dir / row.video)
        clips.append(
            TruthClip(
                frames=clip.frames,
                audio=clip.audio,
                fps=clip.fps,
                sample_rate=clip.sample_rate,
                reference=np.asarray(Image.open(synth_dir / row.reference_image).convert("RGB")),
                truth=json.loads((synth_dir / row.annotation).read_text()),
                caption=row.caption,
            )
        )
    return clips


def _manifest(synth_dir: Path, artifacts: Path) -> None:
    """The curated manifest columns the evaluation reads (contract 2), for every SynthTalk clip."""
    table = pd.read_parquet(synth_dir / synthtalk.CAPTIONS_NAME)
    rows = []
    for row in table.itertuples():
        truth = json.loads((synth_dir / row.annotation).read_text())
        rows.append({
            "clip_id": row.video_id, "video": str(synth_dir / row.video), "start_frame": 0,
            "num_frames": truth["num_frames"], "fps": float(truth["fps"]), "width": truth["width"],
            "height": truth["height"], "caption": row.caption, "reference_image": str(synth_dir / row.reference_image),
            "split": row.split, "identity_id": row.identity_id, "annotation": str(synth_dir / row.annotation),
        })
    (artifacts / "curate").mkdir(parents=True)
    pd.DataFrame(rows).to_parquet(artifacts / "curate" / "manifest.parquet")


@pytest.fixture()
def project(tmp_path: Path, synth_dir: Path, params_path: Path):
    artifacts = tmp_path / "artifacts"
    _manifest(synth_dir, artifacts)
    overrides = [
        f"paths.artifacts={artifacts}", f"paths.reports={tmp_path / 'reports'}",
        f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}", "evaluate.num_cases=2", "evaluate.steps=1",
        "evaluate.modes=[TA, TIA]", "generate.progress_bar=false",
    ]
    return load_params(params_path, overrides)
