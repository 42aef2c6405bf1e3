"""Throughput, FLOP efficiency and peak memory of the HuMo transformer, side by side in one run.

What it measures (all on this machine, float32, inference under ``torch.no_grad`` unless stated):

1. **Tokens per second** of one forward at the ``tiny`` preset and at a mid-size preset (dim 512, 8 blocks), for
   our batched forward and for an upstream-style loop that runs the batch items one at a time (upstream HuMo keeps
   videos in Python lists and loops over samples in patching, RoPE and unpatchify).
2. **Achieved FLOP rate** of the batched forward (FLOPs counted by ``torch.utils.flop_counter.FlopCounterMode``:
   matmuls, convolutions and attention) as a fraction of the float32 matmul rate measured in the same run.
3. **Peak memory** of one forward + backward at the mid-size preset, with and without gradient checkpointing. On
   CPU each mode runs in a fresh subprocess and the figure is the process's peak resident set size (``ru_maxrss``)
   minus its resident size just before the forward, i.e. what forward/backward added on top of weights and inputs
   (torch's CPU allocator has no peak counter and ``tracemalloc`` does not see tensor memory). On CUDA it is
   ``torch.cuda.max_memory_allocated`` above the allocation before the forward (exact for tensors).

With ``--device cuda`` a third workload runs the ``humo-1.7b`` preset at the released 480p shape (97 frames + 1
reference: 40 560 tokens), batch 1, so the per-sample loop equals the batched forward there.

Usage::

    python benchmarks/bench_transformer.py            # about 1 minute on 2 CPU cores
    python benchmarks/bench_transformer.py --repeats 5 --skip-memory
    python benchmarks/bench_transformer.py --device cuda --dtype bfloat16
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from diffusers.utils import logging as diffusers_logging
from torch.utils.flop_counter import FlopCounterMode

from humo.models.presets import HumoDiTConfig, get_preset
from humo.models.transformer import HumoTransformer3D

MATMUL_SIZE = 2048
"""Side of the square float32 matmul that measures this machine's attainable matmul rate."""
KIB = 1024
MIB = KIB * KIB
MID_OVERRIDES: dict[str, object] = {"dim": 512, "num_heads": 8, "ffn_dim": 2048, "num_layers": 8}


@dataclass(frozen=True)
class Workload:
    """One benchmark case: a model config and the latent shape of its inputs."""

    name: str
    config: HumoDiTConfig
    batch: int
    video_frames: int  # latent video frames; one reference frame is appended
    latent_size: int  # latent height = width

    @property
    def latent_hw(self) -> tuple[int, int]:
        return (self.latent_size, self.latent_size) if self.latent_size else LATENT_480P

    @property
    def tokens_per_sample(self) -> int:
        _, p_h, p_w = self.config.patch_size
        height, width = self.latent_hw
        return (self.video_frames + 1) * (height // p_h) * (width // p_w)


WORKLOADS = (
    # tiny: 33 frames -> 9 latent + 1 reference, 64x64 px -> 8x8 latent -> 16 tokens per frame
    Workload("tiny", get_preset("tiny"), batch=4, video_frames=9, latent_size=8),
    # mid: 17 frames -> 5 latent + 1 reference, 256x256 px -> 32x32 latent -> 256 tokens per frame
    Workload("mid (dim 512, 8 blocks)", get_preset("tiny", **MID_OVERRIDES), batch=2, video_frames=4, latent_size=32),
)
MID = WORKLOADS[1]
RELEASED_480P = Workload("humo-1.7b 480p 97f", get_preset("humo-1.7b"), batch=1, video_frames=25, latent_size=0)
"""97 frames -> 25 latent frames + 1 reference at 480x832 -> 60x104 latent (latent_size unused: see make_inputs)."""
LATENT_480P = (60, 104)


def make_inputs(work: Workload, device: torch.device, dtype: torch.dtype, seed: int = 0) -> dict[str, object]:
    cfg, frames = work.config, work.video_frames + 1
    generator = torch.Generator().manual_seed(seed)
    tensors = {
        "hidden_states": torch.randn(work.batch, cfg.out_channels, frames, *work.latent_hw, generator=generator),
        "timestep": torch.full((work.batch,), 500.0),
        "encoder_hidden_states": torch.randn(work.batch, cfg.text_len, cfg.text_dim, generator=generator),
        "audio_features": torch.randn(
            work.batch, frames, cfg.audio_window, cfg.audio_groups, cfg.audio_channels, generator=generator
        ),
    }
    # timesteps stay float32 (the sinusoid is formed in float64 anyway); every other input takes the model dtype
    batch: dict[str, object] = {k: v.to(device, dtype if v.ndim > 1 else None) for k, v in tensors.items()}
    batch["num_ref_frames"] = 1
    return batch


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    """Median wall time of ``fn`` in seconds, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_rate(repeats: int, device: torch.device, dtype: torch.dtype) -> float:
    """Attainable matmul rate of this machine in FLOP/s at the benchmark dtype (best of ``repeats``)."""
    a = torch.randn(MATMUL_SIZE, MATMUL_SIZE, device=device, dtype=dtype)
    b = torch.randn(MATMUL_SIZE, MATMUL_SIZE, device=device, dtype=dtype)
    inner = 1 if device.type == "cpu" else 20  # a GPU does one 2048^3 matmul in microseconds: time a burst

    def burst() -> None:
        for _ in range(inner):
            torch.mm(a, b)

    best = min(timed(burst, 1, device) for _ in range(repeats))
    return inner * 2 * MATMUL_SIZE**3 / best


def throughput(work: Workload, repeats: int, device: torch.device, dtype: torch.dtype) -> dict[str, float]:
    model = HumoTransformer3D.from_preset(work.config).to(device, dtype).eval()
    batch = make_inputs(work, device, dtype)

    def batched() -> object:
        return model(**batch)

    def per_sample() -> object:  # upstream style: one sample at a time
        return [
            model(**{k: v[i : i + 1] if isinstance(v, torch.Tensor) else v for k, v in batch.items()})
            for i in range(work.batch)
        ]

    with torch.no_grad():
        counter = FlopCounterMode(display=False)
        with counter:
            model(**batch)
        flops = counter.get_total_flops()
        t_batched = timed(batched, repeats, device)
        t_loop = timed(per_sample, repeats, device) if work.batch > 1 else t_batched
    tokens = work.batch * work.tokens_per_sample
    return {
        "tokens": tokens,
        "batched_s": t_batched,
        "loop_s": t_loop,
        "flops": flops,
        "batched_tok_s": tokens / t_batched,
        "loop_tok_s": tokens / t_loop,
        "flop_rate": flops / t_batched,
    }


def resident_bytes() -> int:
    """Current resident set size of this process (Linux /proc)."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize()


def forward_backward_peaks(device: torch.device, dtype: torch.dtype, checkpointing: bool) -> dict[str, int]:
    """One forward + backward at the mid preset; peak memory above what was allocated before the forward."""
    torch.manual_seed(0)
    model = HumoTransformer3D.from_preset(MID.config).to(device, dtype).train()
    if checkpointing:
        model.enable_gradient_checkpointing()
    batch = make_inputs(MID, device, dtype)
    cuda = device.type == "cuda"

    def peak() -> int:
        if cuda:
            return torch.cuda.max_memory_allocated(device)
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * KIB

    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device) if cuda else resident_bytes()
    out = model(**batch, return_mask=True)
    synchronize(device)
    peak_forward = peak()
    loss = out.video.float().square().mean() + out.mask_logits.sigmoid().mean()
    loss.backward()
    synchronize(device)
    return {
        "forward": peak_forward - before,
        "forward_backward": peak() - before,
        "param_bytes": sum(p.numel() * p.element_size() for p in model.parameters()),
    }


def memory(checkpointing: bool, device: torch.device, dtype: torch.dtype) -> dict[str, int]:
    """Peak memory of one forward + backward; on CPU in a fresh subprocess so the RSS high-water mark is its own."""
    if device.type == "cuda":
        return forward_backward_peaks(device, dtype, checkpointing)
    flag = "--memory-child-checkpointing" if checkpointing else "--memory-child"
    command = [sys.executable, __file__, flag, "--dtype", str(dtype).removeprefix("torch.")]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed repetitions per case (median reported)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--skip-memory", action="store_true", help="skip the peak-memory measurements")
    parser.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--memory-child-checkpointing", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    diffusers_logging.set_verbosity_error()  # ModelMixin.to(dtype) warns about fp32 modules even when there are none
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    if args.memory_child or args.memory_child_checkpointing:
        print(json.dumps(forward_backward_peaks(device, dtype, checkpointing=args.memory_child_checkpointing)))
        return

    start = time.perf_counter()
    peak = matmul_rate(args.repeats, device, dtype)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"torch {torch.__version__}, {where}, {args.dtype}")
    print(f"measured matmul rate ({MATMUL_SIZE}^3 {args.dtype}): {peak / 1e9:.1f} GFLOP/s\n")

    header = (
        f"{'workload':<26}{'batch':>6}{'tok/sample':>11}{'GFLOP':>9}"
        f"{'batched ms':>12}{'tok/s':>10}{'per-sample ms':>15}{'tok/s':>10}{'speed-up':>9}{'GFLOP/s':>10}{'of mm':>7}"
    )
    print(header)
    print("-" * len(header))
    workloads = (*WORKLOADS, RELEASED_480P) if device.type == "cuda" else WORKLOADS
    for work in workloads:
        r = throughput(work, args.repeats, device, dtype)
        print(
            f"{work.name:<26}{work.batch:>6}{work.tokens_per_sample:>11}{r['flops'] / 1e9:>9.1f}"
            f"{r['batched_s'] * 1e3:>12.1f}{r['batched_tok_s']:>10.0f}"
            f"{r['loop_s'] * 1e3:>15.1f}{r['loop_tok_s']:>10.0f}"
            f"{r['loop_s'] / r['batched_s']:>8.2f}x{r['flop_rate'] / 1e9:>10.1f}{r['flop_rate'] / peak:>7.0%}"
        )

    if not args.skip_memory:
        method = "CUDA max_memory_allocated" if device.type == "cuda" else "RSS high-water mark, fresh process per row"
        print(
            f"\npeak memory of one forward+backward, {MID.name}, batch {MID.batch}, {MID.tokens_per_sample} "
            f"tokens/sample, above the memory in use before the forward ({method})"
        )
        print(f"{'gradient checkpointing':<24}{'forward MiB':>13}{'fwd+bwd MiB':>13}{'params MiB':>12}")
        for checkpointing in (False, True):
            m = memory(checkpointing, device, dtype)
            print(
                f"{'on' if checkpointing else 'off':<24}{m['forward'] / MIB:>13.0f}{m['forward_backward'] / MIB:>13.0f}"
                f"{m['param_bytes'] / MIB:>12.0f}"
            )
    print(f"\ntotal benchmark time {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
