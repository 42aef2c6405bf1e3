"""SyncNet (Chung & Zisserman, 2016): the learned audio-visual sync scorer behind the paper's Sync-C / Sync-D.

HuMo reports Sync-C and Sync-D "as used in LatentSync" (humo-reference.md, metrics table), which is the
``syncnet_v2.model`` checkpoint of the original ``syncnet_python`` code (also packaged as ``syncnet-python``,
which ships the model class and no weights). This module re-implements what that checkpoint needs, with the
same parameter names so the file loads as it is:

* :class:`SyncNet`: two towers mapping 5 face frames (``3 x 5 x 224 x 224``, BGR, 0-255) and 0.2 s of MFCCs
  (``1 x 13 x 20``) to 1024-d embeddings;
* :func:`mfcc`: 13 MFCCs at 100 frames a second with the defaults of ``python_speech_features`` (25 ms
  rectangular windows, 10 ms hop, 512-point FFT, 26 mel filters, pre-emphasis 0.97, lifter 22, log energy
  as coefficient 0), computed on 16-bit-scaled samples as the original reads them from a wav;
* :class:`SyncNetScorer`: a :class:`humo.data.sync.SyncScorer` that embeds every 5-frame window of a face
  track and the 20 MFCC rows under it (4 per video frame at 25 fps), then takes the mean Euclidean distance
  per offset over ``-K..K``. As in the original, the audio embeddings are zero-padded at both ends, so the
  distances (Sync-D) and their median minus minimum (Sync-C) are comparable with published numbers.

Sign: the original prints ``AV offset = K - argmin`` (negative when the audio lags); humo's convention is the
opposite (``offset > 0``: the audio lags the video), and :class:`humo.data.sync.SyncEstimate` keeps it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from humo.constants import AUDIO_SAMPLE_RATE, VIDEO_FPS
from humo.data.sync import SyncEstimate

FACE_SIZE = 224
"""Side of the face crops SyncNet v2 was trained on."""
WINDOW_FRAMES = 5
"""Video frames per embedding (0.2 s at 25 fps)."""
MFCC_PER_FRAME = 4
"""MFCC rows per video frame: 100 a second against 25 fps."""
MFCC_WINDOW = WINDOW_FRAMES * MFCC_PER_FRAME
EMBEDDING_DIM = 1024
PCM16_SCALE = 32768.0
"""The original reads the wav as int16: MFCCs (log energies) are computed on that scale."""
BATCH = 20
"""Windows embedded at a time."""
MIN_CONFIDENCE = 3.0
"""Default acceptance threshold on Sync-C (LatentSync keeps training clips whose SyncNet confidence is above 3)."""


def _conv_bn(conv: nn.Module, channels: int, batch_norm: type[nn.Module]) -> list[nn.Module]:
    return [conv, batch_norm(channels), nn.ReLU(inplace=True)]


class SyncNet(nn.Module):
    """The SyncNet v2 towers; attribute and layer positions match ``syncnet_v2.model``'s keys.

    ``forward_audio``: ``(N, 1, 13, 20)`` MFCCs -> ``(N, 1024)``; ``forward_video``: ``(N, 3, 5, 224, 224)``
    BGR frames in 0-255 -> ``(N, 1024)``.
    """

    def __init__(self, embedding_dim: int = EMBEDDING_DIM) -> None:
        super().__init__()
        bn2, bn3 = nn.BatchNorm2d, nn.BatchNorm3d
        # audio tower: 13 x 20 MFCCs -> 512 x 1 x 1 (the 1x1 max-pool keeps the original's layer numbering)
        self.netcnnaud = nn.Sequential(
            *_conv_bn(nn.Conv2d(1, 64, 3, padding=1), 64, bn2),
            nn.MaxPool2d(kernel_size=1, stride=1),
            *_conv_bn(nn.Conv2d(64, 192, 3, padding=1), 192, bn2),
            nn.MaxPool2d(kernel_size=3, stride=(1, 2)),
            *_conv_bn(nn.Conv2d(192, 384, 3, padding=1), 384, bn2),
            *_conv_bn(nn.Conv2d(384, 256, 3, padding=1), 256, bn2),
            *_conv_bn(nn.Conv2d(256, 256, 3, padding=1), 256, bn2),
            nn.MaxPool2d(kernel_size=3, stride=2),
            *_conv_bn(nn.Conv2d(256, 512, kernel_size=(5, 4)), 512, bn2),
        )
        self.netfcaud = self._head(embedding_dim)
        self.netfclip = self._head(embedding_dim)
        # video tower: 5 x 224 x 224 frames -> 512 x 1 x 1 x 1
        self.netcnnlip = nn.Sequential(
            *_conv_bn(nn.Conv3d(3, 96, kernel_size=(5, 7, 7), stride=(1, 2, 2)), 96, bn3),
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2)),
            *_conv_bn(nn.Conv3d(96, 256, kernel_size=(1, 5, 5), stride=(1, 2, 2), padding=(0, 1, 1)), 256, bn3),
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),
            *_conv_bn(nn.Conv3d(256, 256, kernel_size=(1, 3, 3), padding=(0, 1, 1)), 256, bn3),
            *_conv_bn(nn.Conv3d(256, 256, kernel_size=(1, 3, 3), padding=(0, 1, 1)), 256, bn3),
            *_conv_bn(nn.Conv3d(256, 256, kernel_size=(1, 3, 3), padding=(0, 1, 1)), 256, bn3),
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2)),
            *_conv_bn(nn.Conv3d(256, 512, kernel_size=(1, 6, 6)), 512, bn3),
        )

    @staticmethod
    def _head(embedding_dim: int) -> nn.Sequential:
        return nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, embedding_dim))

    def forward_audio(self, mfccs: torch.Tensor) -> torch.Tensor:
        """``(N, 1, 13, 20)`` -> ``(N, D)``."""
        return self.netfcaud(self.netcnnaud(mfccs).flatten(1))

    def forward_video(self, frames: torch.Tensor) -> torch.Tensor:
        """``(N, 3, 5, 224, 224)`` -> ``(N, D)``."""
        return self.netfclip(self.netcnnlip(frames).flatten(1))


def load_syncnet(path: str | Path) -> SyncNet:
    """SyncNet v2 in eval mode from a local ``syncnet_v2.model`` (a state dict; a ``__S__.`` prefix is allowed).

    Raises:
        FileNotFoundError: no file at ``path`` (the message names it and the setting).
        ValueError: the file's keys or shapes are not SyncNet's.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"SyncNet weights not found at {path}: set curate/evaluate.syncnet_weights to a local syncnet_v2.model")
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = {key.removeprefix("__S__."): value for key, value in state.items()}
    model = SyncNet()
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"{path} is not a SyncNet v2 state dict: {err}") from None
    return model.eval()


# =====================================================================================================
# MFCCs as python_speech_features computes them
# =====================================================================================================


def _hz_to_mel(hz: np.ndarray | float) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + np.asarray(hz) / 700.0)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    return 700.0 * (10.0 ** (np.asarray(mel) / 2595.0) - 1.0)


def _filterbank(filters: int, nfft: int, sample_rate: int) -> np.ndarray:
    """``(filters, nfft // 2 + 1)`` triangular mel filters, edges rounded down to FFT bins."""
    mels = np.linspace(_hz_to_mel(0.0), _hz_to_mel(sample_rate / 2), filters + 2)
    bins = np.floor((nfft + 1) * _mel_to_hz(mels) / sample_rate).astype(int)
    bank = np.zeros((filters, nfft // 2 + 1))
    for j in range(filters):
        lo, mid, hi = bins[j], bins[j + 1], bins[j + 2]
        for k in range(lo, mid):
            bank[j, k] = (k - lo) / (mid - lo)
        for k in range(mid, hi):
            bank[j, k] = (hi - k) / (hi - mid)
    return bank


def mfcc(
    audio: np.ndarray,
    sample_rate: int = AUDIO_SAMPLE_RATE,
    coefficients: int = 13,
    filters: int = 26,
    nfft: int = 512,
    window_s: float = 0.025,
    hop_s: float = 0.01,
    preemphasis: float = 0.97,
    lifter: int = 22,
) -> np.ndarray:
    """MFCCs of ``audio`` ``(S,)`` (already on the int16 scale) as ``(T, coefficients)``, ``T`` = one per hop."""
    from scipy.fft import dct

    audio = np.asarray(audio, dtype=np.float64).reshape(-1)
    emphasised = np.concatenate([audio[:1], audio[1:] - preemphasis * audio[:-1]])
    width, hop = int(round(window_s * sample_rate)), int(round(hop_s * sample_rate))
    count = 1 if len(emphasised) <= width else 1 + int(np.ceil((len(emphasised) - width) / hop))
    padded = np.concatenate([emphasised, np.zeros(max(0, (count - 1) * hop + width - len(emphasised)))])
    frames = padded[np.arange(count)[:, None] * hop + np.arange(width)[None, :]]
    power = np.abs(np.fft.rfft(frames, nfft)) ** 2 / nfft
    eps = np.finfo(float).eps
    energy = np.maximum(power.sum(axis=1), eps)
    bands = np.maximum(power @ _filterbank(filters, nfft, sample_rate).T, eps)
    cepstra = dct(np.log(bands), type=2, axis=1, norm="ortho")[:, :coefficients]
    cepstra *= 1 + (lifter / 2) * np.sin(np.pi * np.arange(coefficients) / lifter)
    cepstra[:, 0] = np.log(energy)
    return cepstra


# =====================================================================================================
# The scorer
# =====================================================================================================


def _windows(features: torch.Tensor, count: int, width: int, step: int, dim: int) -> torch.Tensor:
    """``count`` windows of ``width`` along ``dim``, starting every ``step``."""
    return torch.stack([features.narrow(dim, i * step, width) for i in range(count)])


def padded_distances(video: torch.Tensor, audio: torch.Tensor, max_offset: int) -> np.ndarray:
    """Mean Euclidean distance per offset ``-K..K`` (``> 0``: audio embedding ``i + k`` against video ``i``),
    with the audio embeddings zero-padded at both ends as the original does."""
    padded = torch.nn.functional.pad(audio, (0, 0, max_offset, max_offset))
    width = 2 * max_offset + 1
    rows = [
        torch.nn.functional.pairwise_distance(video[i : i + 1].expand(width, -1), padded[i : i + width])
        for i in range(len(video))
    ]
    return torch.stack(rows).mean(dim=0).numpy().astype(np.float64)


@dataclass(frozen=True)
class SyncNetScorer:
    """:class:`humo.data.sync.SyncScorer` with SyncNet v2 (Sync-C = confidence, Sync-D = distance).

    Args:
        max_offset: offsets ``-max_offset..max_offset`` frames (SyncNet's default is 15).
        weights: local ``syncnet_v2.model``; loaded once, on CPU unless ``device`` says otherwise.
    """

    max_offset: int
    weights: Path
    device: str = "cpu"
    model: SyncNet = field(init=False, repr=False, compare=False)
    uses_face_track: ClassVar[bool] = True
    min_confidence: ClassVar[float] = MIN_CONFIDENCE

    def __post_init__(self) -> None:
        object.__setattr__(self, "model", load_syncnet(self.weights).to(self.device))

    @torch.inference_mode()
    def visual(self, frames: np.ndarray, face_boxes: np.ndarray) -> np.ndarray:
        """``(F - 4, 1024)`` embeddings of every 5-frame window of face crops ``(F, S, S, 3)`` RGB."""
        import cv2

        if len(frames) < WINDOW_FRAMES + 1:
            raise ValueError(f"SyncNet needs at least {WINDOW_FRAMES + 1} frames, got {len(frames)}")
        bgr = np.stack([cv2.resize(f, (FACE_SIZE, FACE_SIZE), interpolation=cv2.INTER_AREA)[..., ::-1] for f in frames])
        clip = torch.from_numpy(np.ascontiguousarray(bgr)).float().permute(3, 0, 1, 2)  # 3, F, H, W
        count = len(frames) - WINDOW_FRAMES + 1
        out = []
        for lo in range(0, count, BATCH):
            starts = range(lo, min(count, lo + BATCH))
            batch = torch.stack([clip[:, s : s + WINDOW_FRAMES] for s in starts]).to(self.device)
            out.append(self.model.forward_video(batch).cpu())
        return torch.cat(out).numpy()

    @torch.inference_mode()
    def compare(self, features: np.ndarray, audio: np.ndarray, fps: float, sample_rate: int) -> SyncEstimate:
        """Embed the MFCC windows under each video window and search the offset (see the module docstring).

        Raises:
            ValueError: ``fps`` is not 25 or ``sample_rate`` not 16 kHz (SyncNet's 4 MFCC rows per frame).
        """
        if abs(fps - VIDEO_FPS) > 1e-6 or sample_rate != AUDIO_SAMPLE_RATE:
            raise ValueError(f"SyncNet expects {VIDEO_FPS} fps and {AUDIO_SAMPLE_RATE} Hz, got {fps} and {sample_rate}")
        cepstra = torch.from_numpy(mfcc(np.asarray(audio) * PCM16_SCALE, sample_rate).T.copy()).float()  # 13, T
        # as the original: min(frames, whole 40 ms audio frames) - 5 windows, and never past the MFCCs' end
        samples_per_frame = sample_rate // VIDEO_FPS
        count = min(len(features) + WINDOW_FRAMES - 1, len(audio) // samples_per_frame) - WINDOW_FRAMES
        count = min(count, (cepstra.shape[1] - MFCC_WINDOW) // MFCC_PER_FRAME + 1)
        if count <= 2 * self.max_offset:
            raise ValueError(f"{count} windows are too few for max_offset={self.max_offset}")
        mfcc_windows = _windows(cepstra, count, MFCC_WINDOW, MFCC_PER_FRAME, dim=1)[:, None]  # N, 1, 13, 20
        audio_emb = torch.cat([self.model.forward_audio(mfcc_windows[lo : lo + BATCH].to(self.device)).cpu()
                               for lo in range(0, count, BATCH)])
        scores = padded_distances(torch.from_numpy(features[:count]).float(), audio_emb, self.max_offset)
        best = int(np.argmin(scores))
        return SyncEstimate(
            offset=best - self.max_offset, confidence=float(np.median(scores) - scores[best]),
            distance=float(scores[best]), scores=scores,
        )

    def __call__(
        self, frames: np.ndarray, face_boxes: np.ndarray, audio: np.ndarray, fps: float, sample_rate: int
    ) -> SyncEstimate:
        """See :class:`humo.data.sync.SyncScorer`."""
        return self.compare(self.visual(frames, face_boxes), audio, fps, sample_rate)
