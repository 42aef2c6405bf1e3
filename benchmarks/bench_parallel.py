"""One denoising step on 1 process vs sequence parallelism on 2 (gloo, CPU), side by side in one run.

The mid config (width 512, 8 blocks) takes one TIA step (3 branches batched) over 10 latent frames of 32x32
(2560 tokens). Both layouts use the machine's 2 cores: one process with 2 threads, or two processes with 1
thread each. Per process: the median step time; the activation peak of one step counted exactly from live tensors
(:class:`humo.models.costs.LiveTensorPeak`, plus the cached context keys/values, which every process holds whole) beside the cost
model's estimate (:func:`humo.models.costs.activation_bytes`); the DiT parameter bytes the process holds (with and without ``shard_dit``).
Every run checks its output against the 1-process output (max abs difference).

Usage::

    python benchmarks/bench_parallel.py        # about 2 minutes on 2 CPU cores
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from humo.models.costs import Levers, LiveTensorPeak, Workload, activation_bytes
from humo.models.parallel import SequenceParallel, local_parameter_bytes, shard_transformer
from humo.models.testing import randomize_
from humo.models.transformer import HumoTransformer3D

MID = {"dim": 512, "num_layers": 8, "num_heads": 8, "ffn_dim": 2048}
BRANCHES, FRAMES, SIDE, REPEATS, CORES = 3, 10, 32, 3, 2
WORK = Workload(SIDE * 8, SIDE * 8, (FRAMES - 2) * 4 + 1, BRANCHES)  # 9 video latent frames + 1 reference


def _model() -> HumoTransformer3D:
    return randomize_(HumoTransformer3D.from_preset("tiny", **MID))


def _worker(rank: int, world: int, shard: bool, port: int, out: str) -> None:
    torch.set_num_threads(CORES // world)
    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=world)
    model = _model()
    cfg = model.humo_config
    generator = torch.Generator().manual_seed(1)
    latents = torch.randn(BRANCHES, 16, FRAMES, SIDE, SIDE, generator=generator)
    text = torch.randn(BRANCHES, 32, cfg.text_dim, generator=generator)
    audio = torch.randn(BRANCHES, FRAMES, cfg.audio_window, cfg.audio_groups, cfg.audio_channels, generator=generator)
    if world > 1:
        model.enable_sequence_parallel(SequenceParallel())
        if shard:
            shard_transformer(model, torch.device("cpu"))
    timestep = torch.full((BRANCHES,), 500.0)
    with torch.no_grad():
        context = model.prepare_context(text, audio, FRAMES, cache_kv=True)
        model(latents, timestep, num_ref_frames=1, context=context)  # warm-up
        times = []
        for _ in range(REPEATS):
            tick = time.perf_counter()
            sample = model(latents, timestep, num_ref_frames=1, context=context).sample
            times.append(time.perf_counter() - tick)
        tracker = LiveTensorPeak()
        with tracker:
            model(latents, timestep, num_ref_frames=1, context=context)
    cache = sum(t.numel() * t.element_size() for kv in (context.text_kv, context.audio_kv) for pair in kv for t in pair)
    result = {"seconds": statistics.median(times), "params": local_parameter_bytes(model),
              "tensors": tracker.peak + cache}
    Path(f"{out}.{rank}.json").write_text(json.dumps(result))
    if rank == 0:
        torch.save(sample, f"{out}.sample.pt")
    if world > 1:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main() -> None:
    cfg = _model().humo_config
    rows = [
        "| layout | process | step time (s) | activations: live-tensor peak (MB) | cost model (MB) | "
        "DiT params held (MB) | max abs diff vs 1 process |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    reference = None
    with tempfile.TemporaryDirectory() as tmp:
        for world, shard in ((1, False), (2, False), (2, True)):
            out = str(Path(tmp) / f"run{world}{shard}")
            mp.spawn(_worker, args=(world, shard, _free_port(), out), nprocs=world, join=True)
            sample = torch.load(f"{out}.sample.pt")
            reference = sample if reference is None else reference
            diff = float((sample - reference).abs().max())
            estimate = activation_bytes(cfg, WORK, Levers(processes=world, compute_dtype="float32"))
            label = "1 process x 2 threads" if world == 1 else f"2 processes x 1 thread{', shard_dit' if shard else ''}"
            for rank in range(world):
                r = json.loads(Path(f"{out}.{rank}.json").read_text())
                rows.append(
                    f"| {label} | {rank} | {r['seconds']:.2f} | {r['tensors'] / 1e6:.0f} | {estimate / 1e6:.0f} | "
                    f"{r['params'] / 1e6:.1f} | {diff:.1e} |"
                )
    print(f"mid config {MID}, TIA batch of {BRANCHES}, {FRAMES} latent frames of {SIDE // 2}x{SIDE // 2} tokens "
          f"({WORK.tokens(cfg)} tokens), median of {REPEATS}, torch {torch.__version__}, gloo\n")
    print("\n".join(rows))


if __name__ == "__main__":
    sys.exit(main())
