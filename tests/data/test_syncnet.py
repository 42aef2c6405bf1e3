"""SyncNet v2 re-implemented: parameter layout and outputs against the reference class, MFCCs against
python_speech_features, weight loading, and the windowing and sign of the offset with a stand-in network."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from humo.data.sync import make_scorer
from humo.data.syncnet import (
    FACE_SIZE,
    MFCC_WINDOW,
    PCM16_SCALE,
    SyncNet,
    SyncNetScorer,
    load_syncnet,
    mfcc,
    padded_distances,
)


def _reference_class():
    """``S`` from the syncnet-python wheel's SyncNetModel.py, loaded by path (its package __init__ pulls in
    scenedetect and ffmpeg, which the project does not install)."""
    spec = importlib.util.find_spec("syncnet_python")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("syncnet-python is not installed (make setup installs it with --no-deps)")
    path = Path(next(iter(spec.submodule_search_locations))) / "SyncNetModel.py"
    module_spec = importlib.util.spec_from_file_location("_reference_syncnet_model", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.S


def test_layout_and_outputs_match_the_reference_class() -> None:
    torch.manual_seed(0)
    theirs = _reference_class()(num_layers_in_fc_layers=1024).eval()
    for module in theirs.modules():  # non-trivial batch-norm statistics, so eval mode really is compared
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    ours = SyncNet()
    ours.load_state_dict(theirs.state_dict(), strict=True)  # same keys, same shapes
    ours.eval()
    mfccs, frames = torch.randn(3, 1, 13, 20), torch.rand(3, 3, 5, FACE_SIZE, FACE_SIZE) * 255
    with torch.no_grad():
        torch.testing.assert_close(ours.forward_audio(mfccs), theirs.forward_aud(mfccs))
        torch.testing.assert_close(ours.forward_video(frames), theirs.forward_lip(frames))
        assert ours.forward_video(frames).shape == (3, 1024)


def test_mfcc_matches_python_speech_features() -> None:
    psf = pytest.importorskip("python_speech_features")
    rng = np.random.default_rng(0)
    audio = rng.normal(0, 0.1, 16_000 + 123) * PCM16_SCALE
    audio[4000:6000] = 0.0  # a silent stretch: energies at the floor
    expected = psf.mfcc(audio, 16_000)
    got = mfcc(audio, 16_000)
    assert got.shape == expected.shape == (1 + int(np.ceil((len(audio) - 400) / 160)), 13)
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-9)


def test_weights_load_from_a_local_file_and_bad_files_say_what_is_wrong(tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = SyncNet()
    path = tmp_path / "syncnet_v2.model"
    torch.save({f"__S__.{k}": v for k, v in model.state_dict().items()}, path)  # the SyncNetInstance prefix
    loaded = load_syncnet(path)
    assert not loaded.training
    torch.testing.assert_close(loaded.state_dict()["netfclip.3.weight"], model.state_dict()["netfclip.3.weight"])
    missing = tmp_path / "nowhere" / "syncnet_v2.model"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        make_scorer("syncnet", 15, weights=missing)
    with pytest.raises(ValueError, match="needs its weights"):
        make_scorer("syncnet", 15)
    torch.save({"fc.weight": torch.zeros(2, 2)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a SyncNet v2 state dict"):
        load_syncnet(tmp_path / "other.pt")


def test_padded_distances_sign_follows_humo_convention() -> None:
    rng = np.random.default_rng(2)
    video = torch.from_numpy(rng.normal(size=(40, 8))).float()
    lag = 3  # audio embedding i + 3 equals video embedding i: the audio lags by 3 frames
    audio = torch.cat([torch.from_numpy(rng.normal(size=(lag, 8))).float(), video[:-lag]])
    scores = padded_distances(video, audio, max_offset=6)
    assert scores.shape == (13,) and int(np.argmin(scores)) - 6 == lag


class _LoudnessNet(nn.Module):
    """A stand-in SyncNet: the video embedding is the brightness of the window's middle frame, the audio one
    whether the MFCC rows inside that frame's 40 ms (rows 8 and 9: 80-115 ms) are loud."""

    def __init__(self, threshold: float) -> None:
        super().__init__()
        self.threshold = threshold

    def forward_video(self, frames: torch.Tensor) -> torch.Tensor:
        return frames[:, 0, 2].mean(dim=(1, 2))[:, None] / 255.0

    def forward_audio(self, mfccs: torch.Tensor) -> torch.Tensor:
        middle = mfccs[:, 0, 0, MFCC_WINDOW // 2 - 2 : MFCC_WINDOW // 2].mean(dim=1, keepdim=True)
        return (middle > self.threshold).float()


@pytest.mark.parametrize("delay_frames", [-4, 0, 5])
def test_scorer_windows_and_offset_sign_on_a_known_delay(tmp_path: Path, delay_frames: int) -> None:
    torch.manual_seed(3)
    path = tmp_path / "syncnet_v2.model"
    torch.save(SyncNet().state_dict(), path)
    scorer = make_scorer("syncnet", 8, weights=path)
    assert isinstance(scorer, SyncNetScorer) and scorer.uses_face_track
    rng = np.random.default_rng(4)
    frames_count, per_frame = 80, 640
    loud = rng.random(frames_count) > 0.5  # each 40 ms frame loud or quiet
    frames = np.repeat(np.repeat(loud[:, None, None, None] * 255, 32, axis=1), 32, axis=2).repeat(3, axis=3)
    frames = frames.astype(np.uint8)  # (80, 32, 32, 3): crops of any size are resized to 224
    noise = rng.normal(0, 1, frames_count * per_frame)
    audio = noise * np.where(np.repeat(loud, per_frame), 0.3, 1e-4)
    shifted = np.roll(audio, delay_frames * per_frame)  # > 0: the sound of frame t plays at t + delay
    small = scorer.visual(frames[:7], np.zeros((7, 4)))  # the real towers, random weights
    assert small.shape == (3, 1024) and np.isfinite(small).all()  # one embedding per 5-frame window
    quiet, noisy = mfcc(np.full(400, 1e-4 * PCM16_SCALE))[0, 0], mfcc(noise[:400] * 0.3 * PCM16_SCALE)[0, 0]
    object.__setattr__(scorer, "model", _LoudnessNet(threshold=(quiet + noisy) / 2))
    estimate = scorer(frames, np.zeros((frames_count, 4)), shifted, 25.0, 16_000)
    assert estimate.offset == delay_frames and estimate.scores.shape == (17,) and estimate.confidence > 0
    with pytest.raises(ValueError, match="25 fps"):
        scorer.compare(scorer.visual(frames, np.zeros((frames_count, 4))), shifted, 30.0, 16_000)
