"""Media I/O: read video frames and audio, write mp4 files with their audio muxed.

Reading goes through decord (frames and the audio stream of a container) and librosa (stand-alone audio
files); writing goes through PyAV, whose wheel bundles FFmpeg with libx264 and the native AAC encoder, so no
system ffmpeg is needed.

**AAC encoder delay.** An AAC encoder emits 1024 "priming" samples before the first real sample. If the
packets are muxed with the encoder's own timestamps (first packet at pts -1024), the mp4 muxer records the
delay in an edit list and readers that honour it (decord, PyAV, ffmpeg) drop the priming: the audio starts
exactly at the first video frame. If the packets are muxed without timestamps, the priming is played as
audio and the sound lags the picture by 64 ms at 16 kHz (1.6 frames at 25 fps), which is a real lip-sync
error. :func:`write_video` therefore stamps every audio frame with its sample position, and the tests prove
alignment with a click placed at a known frame. The encoder also pads the end to whole 1024-sample frames;
:func:`read_clip` trims the audio to the duration of the video.

Functions here take paths and return arrays with documented dtype, range and shape; they never resize,
filter or cut (that is curation's job).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from humo.constants import AUDIO_SAMPLE_RATE

logger = logging.getLogger(__name__)

AUDIO_FILE_SUFFIXES = (".wav", ".mp3", ".flac", ".ogg", ".m4a")
AAC_FRAME_SAMPLES = 1024
"""Samples per AAC frame: audio is handed to the encoder in chunks of this size."""


class MediaError(ValueError):
    """A media file that cannot be used; the message names the file and the problem."""


@dataclass(frozen=True)
class VideoInfo:
    """What a container says about its video stream, without decoding it."""

    path: Path
    num_frames: int
    fps: float
    width: int
    height: int
    has_audio: bool

    @property
    def duration(self) -> float:
        """Duration in seconds (frames / fps)."""
        return self.num_frames / self.fps if self.fps > 0 else 0.0


@dataclass(frozen=True)
class Clip:
    """Frames and the audio that goes with them.

    Attributes:
        frames: ``(F, H, W, 3)`` uint8 RGB.
        fps: frames per second of ``frames``.
        audio: ``(S,)`` float32 mono in [-1, 1] at ``sample_rate``, aligned so that sample 0 plays with
            frame 0; ``None`` when the source has no audio.
        sample_rate: audio sample rate in Hz.
    """

    frames: np.ndarray
    fps: float
    audio: np.ndarray | None
    sample_rate: int


# =====================================================================================================
# Reading
# =====================================================================================================


def _check_file(path: Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise MediaError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise MediaError(f"{path}: the file is empty (0 bytes)")
    return path


def _video_reader(path: Path):
    """Open ``path`` with decord, turning its errors into :class:`MediaError`."""
    import decord

    try:
        return decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
    except (decord.DECORDError, RuntimeError) as err:  # decord reports open failures as RuntimeError
        raise MediaError(f"{path}: unreadable as video (no video stream or a damaged file): {err}") from err


def probe_video(path: str | Path) -> VideoInfo:
    """Read the stream facts of a video container without decoding its frames.

    Raises:
        MediaError: the file is missing, empty, unreadable, has no video stream or no frames.
    """
    path = _check_file(Path(path))
    reader = _video_reader(path)
    num_frames = len(reader)
    if num_frames == 0:
        raise MediaError(f"{path}: the video stream has zero frames")
    height, width = reader[0].shape[:2]
    return VideoInfo(
        path=path,
        num_frames=num_frames,
        fps=float(reader.get_avg_fps()),
        width=int(width),
        height=int(height),
        has_audio=has_audio_stream(path),
    )


def read_video(path: str | Path, indices: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """Decode video frames with decord.

    Args:
        path: a container decord reads (mp4, mov, mkv, webm, ...).
        indices: frame indices to read (any order, repeats allowed); all frames when ``None``.

    Returns:
        ``(frames, fps)``: ``(F, H, W, 3)`` uint8 RGB frames and the stream's average frame rate.

    Raises:
        MediaError: missing, empty or unreadable file, no video stream, zero frames, indices out of range.
    """
    import decord

    path = _check_file(Path(path))
    reader = _video_reader(path)
    num_frames = len(reader)
    if num_frames == 0:
        raise MediaError(f"{path}: the video stream has zero frames")
    if indices is None:
        indices = np.arange(num_frames)
    indices = np.asarray(indices, dtype=np.int64)
    if indices.size and (indices.min() < 0 or indices.max() >= num_frames):
        raise MediaError(f"{path}: frame indices {indices.min()}..{indices.max()} outside 0..{num_frames - 1}")
    try:
        frames = reader.get_batch(indices.tolist()).asnumpy()
    except (decord.DECORDError, RuntimeError) as err:  # damaged or truncated streams
        raise MediaError(f"{path}: decoding failed (damaged or truncated stream): {err}") from err
    return frames, float(reader.get_avg_fps())


def has_audio_stream(path: str | Path) -> bool:
    """Whether the container at ``path`` holds at least one audio stream."""
    import av

    try:
        with av.open(str(path)) as container:
            return len(container.streams.audio) > 0
    except av.error.FFmpegError:
        return False


def read_audio(path: str | Path, sample_rate: int = AUDIO_SAMPLE_RATE) -> np.ndarray:
    """Read the audio of ``path`` as mono float32 at ``sample_rate``.

    Audio files (wav, mp3, flac, ...) go through librosa; for anything else the first audio stream of the
    container is decoded with decord, which honours the mp4 edit list (so AAC priming is removed).

    Returns:
        ``(S,)`` float32 mono samples in [-1, 1].

    Raises:
        MediaError: missing, empty or unreadable file, or a container without an audio stream.
    """
    path = _check_file(Path(path))
    if path.suffix.lower() in AUDIO_FILE_SUFFIXES:
        import librosa
        import soundfile

        try:
            audio, _ = librosa.load(str(path), sr=sample_rate, mono=True)
        except (soundfile.LibsndfileError, EOFError, RuntimeError) as err:
            raise MediaError(f"{path}: unreadable as audio: {err}") from err
        return audio.astype(np.float32, copy=False)

    import decord

    if not has_audio_stream(path):
        raise MediaError(f"{path}: the file has no audio stream (give a sidecar wav of the same name)")
    try:
        reader = decord.AudioReader(str(path), ctx=decord.cpu(0), sample_rate=sample_rate, mono=True)
        audio = reader[:].asnumpy()
    except (decord.DECORDError, RuntimeError) as err:
        raise MediaError(f"{path}: the audio stream could not be decoded: {err}") from err
    return np.ascontiguousarray(audio.reshape(-1), dtype=np.float32)


def read_clip(path: str | Path, sample_rate: int = AUDIO_SAMPLE_RATE, audio_path: str | Path | None = None) -> Clip:
    """Read a video with its audio, the audio trimmed or zero-padded to the video's duration.

    Args:
        path: the video container.
        sample_rate: audio sample rate to return.
        audio_path: a sidecar audio file to use instead of the container's audio stream.

    Returns:
        A :class:`Clip`; ``audio`` is ``None`` when there is neither an audio stream nor a sidecar.
    """
    frames, fps = read_video(path)
    source = Path(audio_path) if audio_path is not None else Path(path)
    audio = None
    if audio_path is not None or has_audio_stream(path):
        audio = read_audio(source, sample_rate)
        audio = fit_audio_to_frames(audio, len(frames), fps, sample_rate)
    return Clip(frames=frames, fps=fps, audio=audio, sample_rate=sample_rate)


def fit_audio_to_frames(audio: np.ndarray, num_frames: int, fps: float, sample_rate: int) -> np.ndarray:
    """Trim (encoder end padding) or zero-pad ``audio`` to exactly ``num_frames / fps`` seconds."""
    target = int(round(num_frames / fps * sample_rate))
    if len(audio) >= target:
        return audio[:target]
    return np.pad(audio, (0, target - len(audio)))


# =====================================================================================================
# Writing
# =====================================================================================================


def write_video(
    path: str | Path,
    frames: np.ndarray,
    fps: float,
    audio: np.ndarray | None = None,
    sample_rate: int = AUDIO_SAMPLE_RATE,
    crf: int = 18,
    faststart: bool = True,
) -> Path:
    """Write an mp4 (H.264, yuv420p) with the audio muxed as AAC; byte-identical for the same input.

    ``faststart`` puts the index (moov atom) before the media data, so a browser plays the file while it downloads;
    SynthTalk's files keep the plain layout, whose bytes ``data.dvc`` records.

    Args:
        path: output file (``.mp4``); parent folders are created.
        frames: ``(F, H, W, 3)`` uint8 RGB; H and W must be even (yuv420p).
        fps: frame rate (may be fractional, e.g. 30000/1001).
        audio: ``(S,)`` float32 mono in [-1, 1] at ``sample_rate``, or ``None`` for a silent-less file
            (no audio stream at all).
        sample_rate: sample rate of ``audio``.
        crf: x264 constant rate factor (lower is better quality).

    Returns:
        The path written.

    Raises:
        ValueError: frames of the wrong dtype/shape, odd sizes, empty frames, audio not 1-D.
    """
    import av

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be (F, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
    if len(frames) == 0:
        raise ValueError("frames is empty: a video needs at least one frame")
    height, width = frames.shape[1:3]
    if height % 2 or width % 2:
        raise ValueError(f"frame size {width}x{height} must be even for yuv420p; crop or pad by one pixel")
    if audio is not None:
        audio = np.asarray(audio, dtype=np.float32)
        if audio.ndim != 1:
            raise ValueError(f"audio must be mono (S,), got shape {audio.shape}; average the channels first")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    rate = Fraction(fps).limit_denominator(1001)
    options = {"movflags": "+faststart"} if faststart else {}
    with av.open(str(path), mode="w", format="mp4", options=options) as container:
        # bitexact keeps encoder/muxer version strings out of the file, so output depends on input only
        container.flags |= av.container.Flags.bitexact.value
        video_stream = container.add_stream("libx264", rate=rate)
        video_stream.width, video_stream.height = width, height
        video_stream.pix_fmt = "yuv420p"
        video_stream.codec_context.thread_count = 1  # multi-threaded x264 is not deterministic
        # x264's macroblock-tree rate control gave different bytes for the same frames from one call to the next
        # in one process (measured with PyAV 18: 5 encodes, up to 4 distinct files); without it every encode of
        # the same input is identical (a test holds this), at a small cost in size for these short clips.
        video_stream.options = {"crf": str(crf), "preset": "medium", "x264-params": "mbtree=0"}
        audio_stream = None
        if audio is not None:
            audio_stream = container.add_stream("aac", rate=sample_rate)
            audio_stream.layout = "mono"

        for index, frame in enumerate(frames):
            video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            video_frame.pts = index
            container.mux(video_stream.encode(video_frame))
        container.mux(video_stream.encode())

        if audio_stream is not None:
            for start in range(0, len(audio), AAC_FRAME_SAMPLES):
                chunk = np.ascontiguousarray(audio[None, start : start + AAC_FRAME_SAMPLES])
                audio_frame = av.AudioFrame.from_ndarray(chunk, format="flt", layout="mono")
                audio_frame.sample_rate = sample_rate
                # Stamping the sample position makes the encoder give the first packet pts -1024, so the
                # muxer writes an edit list that removes the AAC priming (module docstring).
                audio_frame.pts = start
                container.mux(audio_stream.encode(audio_frame))
            container.mux(audio_stream.encode(None))
    return path


def mux_audio(video_path: str | Path, audio_path: str | Path, output_path: str | Path) -> Path:
    """Write ``output_path``: the frames of ``video_path`` with the audio of ``audio_path`` muxed in.

    The audio is resampled to 16 kHz mono and trimmed or zero-padded to the video's duration.
    """
    frames, fps = read_video(video_path)
    audio = read_audio(audio_path, AUDIO_SAMPLE_RATE)
    audio = fit_audio_to_frames(audio, len(frames), fps, AUDIO_SAMPLE_RATE)
    return write_video(output_path, frames, fps, audio, AUDIO_SAMPLE_RATE)


def shift_samples(audio: np.ndarray, shift_s: float, sample_rate: int) -> np.ndarray:
    """``audio`` moved by ``shift_s`` seconds at the same length: ``> 0`` delays it (silence first, the end cut
    off: the audio lags the video), ``< 0`` advances it (the start cut off, silence at the end)."""
    audio = np.asarray(audio)
    count = min(int(round(abs(shift_s) * sample_rate)), len(audio))
    silence = np.zeros(count, dtype=audio.dtype)
    if shift_s > 0:
        return np.concatenate([silence, audio[: len(audio) - count]])
    return np.concatenate([audio[count:], silence])


def write_shifted_copy(
    video_path: str | Path, output_path: str | Path, shift_s: float, sample_rate: int = AUDIO_SAMPLE_RATE
) -> Path:
    """A copy of a video whose audio is moved by ``shift_s`` seconds (``> 0``: the audio lags): a real clip
    with a known sync error. The video packets are copied untouched (no re-encode of a 1080p stream); the
    audio is decoded, moved with :func:`shift_samples` and encoded as AAC with sample-position timestamps,
    so the container's edit list keeps sample 0 at time 0 (module docstring).

    Raises:
        MediaError: the video cannot be read or holds no audio stream.
    """
    import av

    audio = shift_samples(read_audio(video_path, sample_rate), shift_s, sample_rate).astype(np.float32)
    output_path = Path(output_path)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(_check_file(Path(video_path)))) as source, av.open(str(output_path), "w", format="mp4") as out:
        video_in = source.streams.video[0]
        video_out = out.add_stream_from_template(video_in)
        audio_out = out.add_stream("aac", rate=sample_rate)
        audio_out.layout = "mono"
        for packet in source.demux(video_in):
            if packet.dts is None:  # the demuxer's final flush packet
                continue
            packet.stream = video_out
            out.mux(packet)
        for start in range(0, len(audio), AAC_FRAME_SAMPLES):
            frame = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(audio[None, start : start + AAC_FRAME_SAMPLES]), format="flt", layout="mono"
            )
            frame.sample_rate, frame.pts = sample_rate, start
            out.mux(audio_out.encode(frame))
        out.mux(audio_out.encode(None))
    return output_path


def write_wav(path: str | Path, audio: np.ndarray, sample_rate: int = AUDIO_SAMPLE_RATE) -> Path:
    """Write mono float audio as 16-bit PCM wav."""
    import soundfile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(str(path), np.asarray(audio, dtype=np.float32), sample_rate, subtype="PCM_16")
    return path
