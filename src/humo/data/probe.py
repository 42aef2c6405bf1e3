"""Probing, frame-rate resampling by timestamps, and decoding of source videos.

Resampling to the target rate maps every target frame ``k`` (shown at ``t_k = k / fps``) to the source frame
that is on screen at that time: the last frame whose presentation timestamp is ``<= t_k``. The map is computed
from absolute timestamps, never by accumulating a step, so it does not drift over long sources and it follows
variable-frame-rate streams (29.97 fps, dropped frames) exactly. Audio needs no resampling map: target frame
``k`` always plays with audio samples ``[k * sr / fps, (k + 1) * sr / fps)``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from humo.data.media import MediaError

logger = logging.getLogger(__name__)

TIMESTAMP_TOLERANCE = 1e-4
"""Seconds of slack when comparing timestamps (container time bases round, e.g. 1/29.97)."""


@dataclass(frozen=True)
class SourceProbe:
    """Stream facts of a source video.

    Attributes:
        num_frames: frames in the stream.
        fps: average frame rate the container reports.
        width, height: frame size in pixels.
        timestamps: ``(num_frames,)`` float64 presentation start time of each frame, seconds.
        duration: end time of the last frame, seconds.
    """

    num_frames: int
    fps: float
    width: int
    height: int
    timestamps: np.ndarray
    duration: float


def _reader(path: Path, width: int = -1, height: int = -1):
    import decord

    try:
        return decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1, width=width, height=height)
    except (decord.DECORDError, RuntimeError) as err:  # decord reports open failures as RuntimeError
        raise MediaError(f"{path}: unreadable as video (no video stream or a damaged file): {err}") from err


def probe_source(path: str | Path) -> SourceProbe:
    """Open ``path`` with decord and read its frame count, size and per-frame timestamps.

    Raises:
        MediaError: missing, empty or unreadable file, or a stream without frames.
    """
    path = Path(path)
    if not path.is_file():
        raise MediaError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise MediaError(f"{path}: the file is empty (0 bytes)")
    reader = _reader(path)
    num_frames = len(reader)
    if num_frames == 0:
        raise MediaError(f"{path}: the video stream has zero frames")
    spans = np.asarray(reader.get_frame_timestamp(np.arange(num_frames)), dtype=np.float64).reshape(num_frames, 2)
    fps = float(reader.get_avg_fps())
    starts = spans[:, 0]
    end = float(spans[-1, 1])
    if not np.isfinite(end) or end <= starts[-1]:  # some containers give no end time: one average frame
        end = float(starts[-1] + (1.0 / fps if fps > 0 else 0.0))
    height, width = reader[0].shape[:2]
    return SourceProbe(
        num_frames=num_frames, fps=fps, width=int(width), height=int(height), timestamps=starts, duration=end
    )


def resample_indices(timestamps: np.ndarray, duration: float, fps: float) -> np.ndarray:
    """Source frame shown at each target frame time ``k / fps`` (no drift, variable frame rate safe).

    Args:
        timestamps: ``(N,)`` presentation start times of the source frames, seconds, non-decreasing.
        duration: end of the source in seconds (end of its last frame).
        fps: target frame rate.

    Returns:
        ``(K,)`` int64 source frame indices, ``K = floor(duration * fps)`` (target frames that end inside
        the source); repeats where the source is slower than ``fps``, skips where it is faster.
    """
    timestamps = np.asarray(timestamps, dtype=np.float64)
    if timestamps.ndim != 1 or timestamps.size == 0:
        raise ValueError(f"timestamps must be a non-empty 1-D array, got shape {timestamps.shape}")
    count = int(np.floor(duration * fps + TIMESTAMP_TOLERANCE))
    times = np.arange(count, dtype=np.float64) / fps
    indices = np.searchsorted(timestamps - timestamps[0], times + TIMESTAMP_TOLERANCE, side="right") - 1
    return np.clip(indices, 0, len(timestamps) - 1).astype(np.int64)


def analysis_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """(width, height) scaled so the longer side is at most ``max_side``, both even."""
    scale = min(1.0, max_side / max(width, height))
    return max(2, int(round(width * scale / 2)) * 2), max(2, int(round(height * scale / 2)) * 2)


class FrameReader:
    """An open decord reader of one video at one size; reading clips in order reuses its decoder state.

    Args:
        path: the video.
        size: ``(width, height)`` to decode at; ``None`` = the stream's size.
    """

    def __init__(self, path: str | Path, size: tuple[int, int] | None = None) -> None:
        width, height = size if size is not None else (-1, -1)
        self.path = Path(path)
        self._reader = _reader(self.path, width=width, height=height)

    def __len__(self) -> int:
        return len(self._reader)

    def get(self, indices: np.ndarray) -> np.ndarray:
        """Frames ``indices`` ``(K,)`` (repeats allowed) as ``(K, H, W, 3)`` uint8 RGB.

        Raises:
            MediaError: indices out of range or a stream that cannot be decoded (truncated or damaged).
        """
        import decord

        indices = np.asarray(indices, dtype=np.int64)
        unique, inverse = np.unique(indices, return_inverse=True)
        if unique.size and (unique[0] < 0 or unique[-1] >= len(self._reader)):
            raise MediaError(f"{self.path}: frame indices {unique[0]}..{unique[-1]} outside 0..{len(self) - 1}")
        try:
            frames = self._reader.get_batch(unique.tolist()).asnumpy()
        except (decord.DECORDError, RuntimeError) as err:
            raise MediaError(f"{self.path}: decoding failed (damaged or truncated stream): {err}") from err
        return frames[inverse]


def decode_frames(path: str | Path, indices: np.ndarray, size: tuple[int, int] | None = None) -> np.ndarray:
    """Decode the source frames ``indices`` (repeats allowed), optionally scaled to ``size``.

    Args:
        path: the video.
        indices: ``(K,)`` source frame indices.
        size: ``(width, height)`` to decode at; ``None`` = the stream's size.

    Returns:
        ``(K, H, W, 3)`` uint8 RGB.

    Raises:
        MediaError: the stream cannot be decoded (truncated or damaged).
    """
    return FrameReader(path, size).get(indices)
