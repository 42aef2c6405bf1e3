"""Media I/O: mp4 writing with muxed AAC, reading back in sync, and errors that name the file."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from humo.constants import AUDIO_SAMPLE_RATE, SAMPLES_PER_VIDEO_FRAME
from humo.data.media import (
    MediaError,
    fit_audio_to_frames,
    mux_audio,
    probe_video,
    read_audio,
    read_clip,
    read_video,
    write_video,
    write_wav,
)

FPS = 25
CLICK_FRAME = 10


def _clip_with_click(num_frames: int = 33) -> tuple[np.ndarray, np.ndarray]:
    """A clip whose frame CLICK_FRAME is white and whose audio has a click at the start of that frame."""
    frames = np.full((num_frames, 64, 64, 3), 40, np.uint8)
    frames[CLICK_FRAME] = 255
    audio = np.zeros(num_frames * SAMPLES_PER_VIDEO_FRAME, np.float32)
    start = CLICK_FRAME * SAMPLES_PER_VIDEO_FRAME
    audio[start : start + 80] = 0.9
    return frames, audio


def test_round_trip_keeps_frames_fps_and_audio_sync(tmp_path: Path) -> None:
    frames, audio = _clip_with_click()
    path = write_video(tmp_path / "click.mp4", frames, FPS, audio)
    clip = read_clip(path)
    assert clip.frames.shape == frames.shape
    assert clip.fps == pytest.approx(FPS)
    # audio covers exactly the video's duration (the AAC end padding is trimmed)
    assert len(clip.audio) == len(frames) * SAMPLES_PER_VIDEO_FRAME
    # the white frame is where we put it ...
    assert int(np.argmax(clip.frames.mean(axis=(1, 2, 3)))) == CLICK_FRAME
    # ... and the click is within 10 ms of its start: the AAC priming (64 ms) was removed
    onset = int(np.argmax(np.abs(clip.audio) > 0.3))
    error_ms = abs(onset - CLICK_FRAME * SAMPLES_PER_VIDEO_FRAME) / AUDIO_SAMPLE_RATE * 1000
    assert error_ms < 10, f"audio is {error_ms:.1f} ms off the frames"


def test_writing_is_byte_identical(tmp_path: Path) -> None:
    # a rendered talking-head clip: x264's mb-tree rate control once made such clips differ between encodes in
    # one process (flat or noise clips never showed it)
    from humo.config import SynthConfig
    from humo.data.synthtalk import plan_dataset, render_clip

    cfg = SynthConfig(num_clips=6, num_train_identities=2, num_heldout_identities=1, heldout_fraction=0.34)
    frames, audio, _, _ = render_clip(plan_dataset(cfg)[1][3], cfg)
    digests = {
        hashlib.sha256(write_video(tmp_path / f"{i}.mp4", frames, FPS, audio).read_bytes()).hexdigest() for i in range(5)
    }
    assert len(digests) == 1


def test_video_without_audio_and_sidecar(tmp_path: Path) -> None:
    frames, audio = _clip_with_click(13)
    path = write_video(tmp_path / "silent.mp4", frames, FPS)
    assert probe_video(path).has_audio is False
    assert read_clip(path).audio is None
    with pytest.raises(MediaError, match="no audio stream"):
        read_audio(path)
    sidecar = write_wav(tmp_path / "silent.wav", audio)
    clip = read_clip(path, audio_path=sidecar)
    assert len(clip.audio) == 13 * SAMPLES_PER_VIDEO_FRAME


def test_fractional_frame_rate(tmp_path: Path) -> None:
    frames, _ = _clip_with_click(12)
    path = write_video(tmp_path / "ntsc.mp4", frames, 30000 / 1001)
    assert probe_video(path).fps == pytest.approx(29.97, abs=0.01)


@pytest.mark.parametrize(
    "make, fragment",
    [
        (lambda p: p.write_bytes(b""), "empty"),
        (lambda p: p.write_text("this is not a video at all\n" * 20), "unreadable"),
        (lambda p: None, "no such file"),
    ],
)
def test_bad_files_name_the_file(tmp_path: Path, make, fragment: str) -> None:
    path = tmp_path / "bad.mp4"
    make(path)
    with pytest.raises(MediaError, match=fragment) as info:
        read_video(path)
    assert str(path) in str(info.value)


def test_truncated_mp4_is_an_error(tmp_path: Path) -> None:
    frames, audio = _clip_with_click()
    good = write_video(tmp_path / "good.mp4", frames, FPS, audio)
    bad = tmp_path / "truncated.mp4"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 3])
    with pytest.raises(MediaError):
        read_video(bad)


@pytest.mark.parametrize(
    "frames, fragment",
    [
        (np.zeros((0, 8, 8, 3), np.uint8), "at least one frame"),
        (np.zeros((2, 9, 8, 3), np.uint8), "even"),
        (np.zeros((2, 8, 8, 3), np.float32), "uint8"),
    ],
)
def test_write_rejects_bad_frames(tmp_path: Path, frames: np.ndarray, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        write_video(tmp_path / "x.mp4", frames, FPS)


def test_fit_audio_to_frames_trims_and_pads() -> None:
    audio = np.ones(1000, np.float32)
    assert len(fit_audio_to_frames(audio, 1, 25, 16000)) == 640
    padded = fit_audio_to_frames(audio, 2, 25, 16000)
    assert len(padded) == 1280 and padded[1000:].max() == 0


def test_real_video_muxed_with_its_speech(real_data: Path, tmp_path: Path) -> None:
    """The real MuseTalk clip has no audio track; mux its wav in and read both back (first 50 frames)."""
    source = real_data / "musetalk_sun.mp4"
    info = probe_video(source)
    assert (info.num_frames, info.fps, info.width, info.height) == (550, 25.0, 576, 768)
    assert not info.has_audio
    frames, fps = read_video(source, np.arange(50))
    speech = read_audio(real_data / "musetalk_sun.wav")  # 44.1 kHz in the file, 16 kHz out
    assert len(speech) == pytest.approx(22.5 * AUDIO_SAMPLE_RATE, rel=0.01)
    short_video = write_video(tmp_path / "sun50.mp4", frames[:, ::4, ::4], fps)
    muxed = mux_audio(short_video, real_data / "musetalk_sun.wav", tmp_path / "sun50_speech.mp4")
    clip = read_clip(muxed)
    assert clip.frames.shape == (50, 192, 144, 3)
    assert len(clip.audio) == 2 * AUDIO_SAMPLE_RATE  # 50 frames at 25 fps
    # the muxed speech is the wav's first two seconds: same waveform up to AAC coding noise
    reference = speech[: 2 * AUDIO_SAMPLE_RATE]
    correlation = np.corrcoef(clip.audio, reference)[0, 1]
    assert correlation > 0.95


def test_real_speech_file(real_data: Path) -> None:
    audio = read_audio(real_data / "humo_audio1.wav")
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert len(audio) / AUDIO_SAMPLE_RATE == pytest.approx(2.26, abs=0.02)
    assert np.abs(audio).max() > 0.05
