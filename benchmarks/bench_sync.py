"""Sync estimators on real talking people, side by side in one run: offset error, separation and speed.

Sources: LatentSync's two speakers (``../shared/data/real/latentsync_demo1.mp4``, 10 s, and ``demo2``, 20 s,
1080x1920, their own speech), each with its audio moved by 0, +-200, +-400 and +-600 ms (``> 0``: the audio
lags). Every estimator searches offsets -15..15 frames over the whole source. Compared:

* ``lips``: humo's default for real video with ``humo[faces]`` (dlib's 68 landmarks of a full-resolution
  face track -> 4 lip measures, against 8 log-mel bands, band-passed, first canonical correlation per offset);
* ``mouth``: humo's model-free path (dark-cavity share, contrast and vertical profile of the mouth crops of
  the same face track, against the same speech bands);
* ``motion``: the SynthTalk estimator (mouth motion against the change of the RMS envelope) on the small
  analysis frames curation decodes (256 px);
* ``baseline``: the simple model-free estimate the issue describes: the pixel spread of the lower-middle face
  against the RMS per frame, both detrended (minus a 1 s running mean), Pearson per offset.

Printed per estimator: the offset error in frames (mean and max over the 14 pairs), the hits (|error| <= 2),
the separation of the figure an evaluation reads, ``sync_confidence_at_zero``, between the in-sync sources
and the copies shifted by 400 ms or more (min in-sync minus max shifted: > 0 means a threshold separates them),
and seconds per source-second (the face track counted once for ``lips`` and ``mouth``).

Usage::

    python benchmarks/bench_sync.py        # about two minutes on 2 CPU cores
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from humo.data import faces
from humo.data.media import fit_audio_to_frames, read_audio, shift_samples
from humo.data.probe import FrameReader, analysis_size, probe_source, resample_indices
from humo.data.sync import SyncEstimate, audio_envelope, make_scorer

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT.parent / "shared" / "data" / "real"
SOURCES = ("latentsync_demo1", "latentsync_demo2")
SHIFTS_MS = (0, 200, -200, 400, -400, 600, -600)
FPS, RATE, SEARCH, FRAME_MS = 25.0, 16_000, 15, 40
ESTIMATORS = ("lips", "mouth", "motion", "baseline")


def _detrend(signal: np.ndarray, width: int = 25) -> np.ndarray:
    padded = np.pad(signal, (width // 2, width // 2), mode="edge")
    return signal - np.convolve(padded, np.ones(width) / width, mode="valid")


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    denom = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denom) if denom > 0 else 0.0


def baseline_visual(frames: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Grey-level standard deviation of the lower-middle face (x 25-75 %, y 60-95 % of the box), detrended."""
    import cv2

    spread = []
    for frame, (x0, y0, x1, y1) in zip(frames, boxes, strict=True):
        w, h = x1 - x0, y1 - y0
        crop = frame[int(y0 + 0.6 * h) : int(y0 + 0.95 * h), int(x0 + 0.25 * w) : int(x0 + 0.75 * w)]
        spread.append(cv2.cvtColor(np.ascontiguousarray(crop), cv2.COLOR_RGB2GRAY).std())
    return _detrend(np.asarray(spread))


def baseline_compare(visual: np.ndarray, audio: np.ndarray) -> SyncEstimate:
    """``1 - pearson`` of the detrended spread against the detrended RMS, per offset."""
    rms = _detrend(audio_envelope(audio, len(visual), FPS, RATE))
    count, offsets = len(visual), np.arange(-SEARCH, SEARCH + 1)
    scores = np.array([
        1 - _pearson(visual[: count - k], rms[k:]) if k >= 0 else 1 - _pearson(visual[-k:], rms[: count + k])
        for k in offsets
    ])
    best = int(np.argmin(scores))
    return SyncEstimate(int(offsets[best]), float(np.median(scores) - scores[best]), float(scores[best]), scores)


def at_zero(estimate: SyncEstimate) -> float:
    return float(np.median(estimate.scores) - estimate.scores[len(estimate.scores) // 2])


def run_source(name: str) -> dict[str, list[tuple[int, SyncEstimate]]]:
    """Every estimator on every shift of one source; prints and returns seconds per source-second too."""
    path = REAL / f"{name}.mp4"
    probe = probe_source(path)
    indices = resample_indices(probe.timestamps, probe.duration, FPS)
    seconds = len(indices) / FPS
    audio = fit_audio_to_frames(read_audio(path, RATE), len(indices), FPS, RATE)
    timing: dict[str, float] = {}
    start = time.perf_counter()
    size = analysis_size(probe.width, probe.height, 256)
    small = FrameReader(path, size).get(indices)
    boxes = faces.fill_missing_boxes(faces.detect_faces_opencv(small, every=3))
    common = time.perf_counter() - start
    start = time.perf_counter()
    full = FrameReader(path)
    track = faces.face_track(lambda rows: full.get(indices[rows]), np.arange(len(indices)), boxes * probe.width / size[0], faces.TRACK_SIZE)
    track_s = time.perf_counter() - start
    results: dict[str, list[tuple[int, SyncEstimate]]] = {}
    for estimator in ESTIMATORS:
        start = time.perf_counter()
        if estimator == "baseline":
            visual = baseline_visual(small, boxes)
            compare = baseline_compare
        else:
            scorer = make_scorer(estimator, SEARCH)
            view = (track.crops, track.boxes) if scorer.uses_face_track else (small, boxes)
            visual = scorer.visual(*view)

            def compare(features, sound, scorer=scorer):
                return scorer.compare(features, sound, FPS, RATE)

        pairs = [(ms, compare(visual, shift_samples(audio, ms / 1000, RATE))) for ms in SHIFTS_MS]
        spent = time.perf_counter() - start
        uses_track = estimator in ("lips", "mouth")
        # one source's cost: decoding and boxes, the track when used, features once, one comparison
        timing[estimator] = (common + (track_s if uses_track else 0) + spent / len(SHIFTS_MS)) / seconds
        results[estimator] = pairs
    print(f"{name}: {seconds:.1f} s, {len(indices)} frames; face track {track_s:.1f} s; "
          + ", ".join(f"{k} {v:.2f} s/s" for k, v in timing.items()))
    for estimator, pairs in results.items():
        print(f"  {estimator:9s}" + " ".join(f"{ms / FRAME_MS:+.0f}->{e.offset:+d}" for ms, e in pairs))
    results["_timing"] = timing  # type: ignore[assignment]
    return results


def main() -> None:
    per_source = [run_source(name) for name in SOURCES]
    print()
    print(f"{'estimator':10s} {'mean|err|':>9s} {'max|err|':>8s} {'hits':>6s} {'in-sync@0 min':>13s} "
          f"{'shifted@0 max':>13s} {'separation':>10s} {'s/source-s':>10s}")
    for estimator in ESTIMATORS:
        pairs = [pair for source in per_source for pair in source[estimator]]
        errors = np.array([abs(e.offset - ms / FRAME_MS) for ms, e in pairs])
        in_sync = [at_zero(e) for ms, e in pairs if ms == 0]
        shifted = [at_zero(e) for ms, e in pairs if abs(ms) >= 400]
        speed = np.mean([source["_timing"][estimator] for source in per_source])
        print(f"{estimator:10s} {errors.mean():9.2f} {errors.max():8.1f} {int((errors <= 2).sum()):>3d}/{len(errors):<2d} "
              f"{min(in_sync):13.3f} {max(shifted):13.3f} {min(in_sync) - max(shifted):10.3f} {speed:10.2f}")


if __name__ == "__main__":
    main()
