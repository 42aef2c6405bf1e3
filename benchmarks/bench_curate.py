"""Curation speed, side by side in one run: throughput on SynthTalk and on real video, decord against PyAV.

What it measures:

1. **Curation throughput** (seconds of source video curated per wall-clock second) of the whole ``curate``
   stage (probe, resample, shots, faces, VAD, sync, quality, references, clip writing, manifest and report):
   - on SynthTalk (``--synthtalk`` folder, default ``data/raw``, the first ``--num-synthtalk`` sources, with
     ``--workers`` processes): 1.32 s sources that are referenced without re-encoding;
   - on the real video ``../shared/data/real/musetalk_sun.mp4`` with its wav as sidecar audio (22 s,
     576x768, one process): Haar faces, silero VAD and 16 clips written with H.264 + AAC. The sync gate is
     opened (the woman in it does not speak; see tests/data/test_curate_real.py), and the number of its clips
     the *default* gate would keep is printed as well.
2. **Decode speed** of every frame of the same files with decord (what curation uses) and with PyAV (the
   alternative: FFmpeg bindings, already a dependency for writing), in frames per second, and their ratio.

Usage::

    python benchmarks/bench_curate.py                      # about a minute on 2 CPU cores
    python benchmarks/bench_curate.py --num-synthtalk 512 --workers 2
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


from humo.config import CurateConfig, PathsConfig
from humo.data import curate
from humo.data.manifest import read_rejects

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT.parent / "shared" / "data" / "real"


def decode_decord(path: Path) -> int:
    import decord

    reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
    count = 0
    for start in range(0, len(reader), 64):
        count += len(reader.get_batch(list(range(start, min(start + 64, len(reader))))).asnumpy())
    return count


def decode_pyav(path: Path) -> int:
    import av

    count = 0
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_count = 1
        for frame in container.decode(stream):
            frame.to_ndarray(format="rgb24")
            count += 1
    return count


def time_decode(paths: list[Path], decode) -> float:
    """Frames per second of ``decode`` over ``paths``."""
    started = time.perf_counter()
    frames = sum(decode(path) for path in paths)
    return frames / (time.perf_counter() - started)


def run_curate(cfg: CurateConfig, work: Path) -> tuple[curate.CurateSummary, list[dict]]:
    paths = PathsConfig(artifacts=work / "artifacts", reports=work / "reports")
    summary = curate.run(cfg, paths, project_root=work)
    return summary, read_rejects(work / "artifacts" / "curate" / "rejects.jsonl")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--synthtalk", type=Path, default=ROOT / "data" / "raw")
    parser.add_argument("--num-synthtalk", type=int, default=128)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        synth_cfg = CurateConfig(source_dir=args.synthtalk, limit=args.num_synthtalk, workers=args.workers)
        synth, _ = run_curate(synth_cfg, tmp / "synth")

        source = tmp / "real_source"
        source.mkdir()
        for name in ("musetalk_sun.mp4", "musetalk_sun.wav"):
            (source / name).symlink_to(REAL / name)
        open_gate = {"sync_max_offset": 10, "sync_min_confidence": 0.0}
        real_cfg = CurateConfig(source_format="folder", source_dir=source, workers=1, **open_gate)
        real, _ = run_curate(real_cfg, tmp / "real")
        gated_cfg = real_cfg.model_copy(update={"sync_max_offset": 1, "sync_min_confidence": 0.2})
        import pandas as pd

        manifest = pd.read_parquet(tmp / "real" / "artifacts" / "curate" / "manifest.parquet")
        kept = int(
            ((manifest["sync_offset"].abs() <= gated_cfg.sync_max_offset)
             & (manifest["sync_confidence"] >= gated_cfg.sync_min_confidence)).sum()
        )  # fmt: skip

    synth_files = sorted((args.synthtalk / "video").glob("*.mp4"))[: args.num_synthtalk]
    real_files = [REAL / "musetalk_sun.mp4"]
    rows = []
    for name, files in (("synthtalk 64x64", synth_files), ("real 576x768", real_files)):
        fps_decord = time_decode(files, decode_decord)
        fps_pyav = time_decode(files, decode_pyav)
        rows.append((name, fps_decord, fps_pyav))

    print("\n== curation throughput (source seconds per wall second) ==")
    for label, summary in (("synthtalk", synth), ("real (musetalk_sun)", real)):
        print(
            f"{label:22s} {summary.sources:4d} source(s) {summary.source_seconds:7.1f} s of video "
            f"in {summary.wall_seconds:6.1f} s -> {summary.source_seconds / summary.wall_seconds:6.2f}x real time, "
            f"{summary.clips} clip(s)"
        )
    print(f"real video: the default sync gate (|offset| <= 1, confidence >= 0.2) keeps {kept} of {real.clips} clips")
    print("\n== decode speed, all frames, 1 thread (frames per second) ==")
    for name, fps_decord, fps_pyav in rows:
        print(f"{name:18s} decord {fps_decord:8.1f}   pyav {fps_pyav:8.1f}   decord/pyav {fps_decord / fps_pyav:5.2f}x")


if __name__ == "__main__":
    main()
