"""The train_vae stage on a tiny SynthTalk made in tmp_path: outputs, normalised latents, MLflow, the mouth test."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from humo.config import Params, SynthConfig, TrackingConfig, VaeConfig, load_params
from humo.data import synthtalk
from humo.models.encoders import load_vae
from humo.training import vae as train_vae


@pytest.fixture(scope="module")
def tiny_synthtalk(tmp_path_factory) -> Path:
    raw = tmp_path_factory.mktemp("synthtalk") / "raw"
    cfg = SynthConfig(num_clips=6, num_train_identities=3, num_heldout_identities=2, heldout_fraction=0.34,
                      num_frames=17, workers=1)
    synthtalk.run(cfg, raw)
    return raw


@pytest.fixture()
def vae_params(params_path: Path, tmp_path: Path) -> Params:
    """The real params.yaml shrunk to a few steps of a narrow VAE."""
    return load_params(
        params_path,
        [
            f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
            "train_vae.steps=2",
            "train_vae.batch_size=2",
            "train_vae.crop_size=32",
            "train_vae.base_dim=8",
            "train_vae.num_train_clips=3",
            "train_vae.num_val_clips=2",
        ],
    )


def test_train_vae_writes_a_loadable_normalised_vae(tiny_synthtalk: Path, vae_params: Params, tmp_path: Path) -> None:
    out, reports = tmp_path / "artifacts" / "train_vae", tmp_path / "reports"
    metrics = train_vae.run(vae_params.train_vae, vae_params.encoders.vae, tiny_synthtalk, out, reports,
                            vae_params.tracking)
    for key in ("psnr_heldout", "psnr_mouth_heldout", "mouth_corr_reconstructed", "mouth_corr_original"):
        assert np.isfinite(metrics[key]), key
    assert metrics["num_heldout_clips"] == 2
    assert json.loads((out / "metrics.json").read_text()) == json.loads((reports / "train_vae.json").read_text())
    assert (reports / train_vae.FIGURE_NAME).stat().st_size > 1000

    # the saved config holds the measured latent statistics: train clips encode to ~zero mean, unit std
    vae = load_vae(VaeConfig(kind="tiny"), trained_dir=out / "vae")
    clips = train_vae.load_clips(tiny_synthtalk, "train", 3, seed=vae_params.train_vae.seed)
    latents = vae.encode(train_vae._whole_clips(clips.frames))
    assert latents.shape == (3, 16, 5, 8, 8)
    per_channel = latents.transpose(0, 1).reshape(16, -1)
    assert per_channel.mean(1).abs().max() < 1e-3
    assert (per_channel.std(1) - 1).abs().max() < 1e-2
    assert not torch.allclose(vae.latents_std, torch.ones_like(vae.latents_std))

    import mlflow

    mlflow.set_tracking_uri(vae_params.tracking.uri)
    run = mlflow.get_run(metrics["mlflow_run_id"])
    assert run.data.params["train_vae.steps"] == "2"
    history = mlflow.MlflowClient().get_metric_history(run.info.run_id, "train/loss")
    assert [m.step for m in history] == [0, 1]


def test_train_vae_is_seeded(tiny_synthtalk: Path, vae_params: Params) -> None:
    cfg = vae_params.train_vae.model_copy(update={"steps": 1, "batch_size": 1, "crop_size": 16})
    frames = train_vae.load_clips(tiny_synthtalk, "train", 3, seed=0).frames
    runs = []
    for _ in range(2):
        torch.manual_seed(cfg.seed)
        vae = train_vae.build_tiny_vae(cfg.base_dim)
        losses = train_vae.train_steps(vae, frames, cfg, lambda *args: None)
        runs.append((losses, next(vae.parameters()).detach().clone()))
    assert runs[0][0] == runs[1][0]
    assert torch.equal(runs[0][1], runs[1][1])


def test_mouth_test_on_ground_truth_and_on_a_blind_reconstruction(tiny_synthtalk: Path) -> None:
    clips = train_vae.load_clips(tiny_synthtalk, "train", 3, seed=0)
    frames = clips.frames[:, :17]
    # a perfect round trip: the mouth area follows the ground-truth opening closely
    perfect = train_vae.mouth_metrics(clips, frames)
    assert perfect["mouth_corr_reconstructed"] == pytest.approx(perfect["mouth_corr_original"])
    assert perfect["mouth_corr_original"] > 0.9
    assert perfect["mouth_open_frames"] > 0 and perfect["mouth_closed_frames"] > 0
    assert perfect["mouth_open_closed_accuracy"] > 0.9
    # a "VAE" that forgets the mouth (every frame replaced by the clip's first frame) fails the test
    blind = np.repeat(frames[:, :1], frames.shape[1], axis=1)
    failed = train_vae.mouth_metrics(clips, blind)
    assert abs(failed["mouth_corr_reconstructed"]) < 0.2
    assert failed["mouth_open_closed_accuracy"] < 0.8


def test_train_vae_skips_for_the_wan_vae(tmp_path: Path) -> None:
    metrics = train_vae.run(
        train_vae.TrainVaeConfig(), VaeConfig(kind="wan", path=tmp_path / "Wan2.1"), tmp_path / "missing",
        tmp_path / "out", tmp_path / "reports", TrackingConfig(uri=f"sqlite:///{tmp_path / 'mlflow.db'}"),
    )
    assert metrics["skipped"] is True
    assert "kind is 'wan'" in (tmp_path / "out" / train_vae.SKIP_NOTE_NAME).read_text()
    assert json.loads((tmp_path / "reports" / "train_vae.json").read_text())["skipped"] is True
    assert not (tmp_path / "out" / "vae").exists()


def test_train_vae_bad_inputs(tmp_path: Path, tiny_synthtalk: Path) -> None:
    with pytest.raises(FileNotFoundError, match="humo synth"):
        train_vae.load_clips(tmp_path, "train", 2, seed=0)
    frames = np.zeros((2, 9, 32, 32, 3), np.uint8)
    with pytest.raises(ValueError, match="does not fit the clips"):
        train_vae.random_crops(frames, 2, 13, np.random.default_rng(0))
    with pytest.raises(ValueError, match="split='test'"):
        train_vae.load_clips(tiny_synthtalk, "test", 2, seed=0)


def test_crops_weight_the_mouth_box_up() -> None:
    frames = np.zeros((1, 5, 32, 32, 3), np.uint8)
    regions = np.array([[10, 20, 14, 24]])
    pixels, weights = train_vae.random_crops(frames, 2, 5, np.random.default_rng(0), None, regions, 9.0)
    assert pixels.shape == (2, 3, 5, 32, 32) and weights.shape == (2, 1, 1, 32, 32)
    assert (weights[:, 0, 0, 20:24, 10:14] == 10.0).all()
    assert weights.sum().item() == 2 * (32 * 32 + 9.0 * 16)
    # a crop that misses the box keeps uniform weights; one that cuts it weights the part inside
    _, cropped = train_vae.random_crops(frames, 16, 5, np.random.default_rng(1), 16, regions, 9.0)
    inside = (cropped > 1).sum(dim=(1, 2, 3, 4))
    assert inside.min() == 0 and 0 < inside.max() <= 16
    _, uniform = train_vae.random_crops(frames, 2, 5, np.random.default_rng(0), None, regions, 0.0)
    assert (uniform == 1).all()
