"""Memory levers of ``generate.memory``, side by side in one run on the mid config (width 512, 8 blocks).

For each lever: the largest absolute difference of one denoising step's output (the DiT's velocity for a TIA
batch of 3 branches, 640 tokens each) from the float32 model, relative to the output's largest value; the DiT's
weight bytes on the device; the step's activation peak counted from live tensors (the cached context keys and
values included; fp8's per-layer upcast shows here); and the median time of the step. A separate part loads a saved checkpoint in a fresh
process with and without ``load_in_place`` and reports the peak resident memory the load added.

On CPU the offload row moves blocks from "host" to "device" that are the same memory, so its time shows the
hook cost only; the GPU transfer is in the cost model (``humo plan-memory``). int8 needs torchao
(``pip install 'humo[quant]'``); without it the row says so.

Usage::

    python benchmarks/bench_memory.py          # about 1 minute on 2 CPU cores
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from humo.config import MemoryConfig
from humo.inference.pipeline import _select_context
from humo.models.checkpoints import save_trained
from humo.models.costs import LiveTensorPeak
from humo.models.memory import apply_memory_levers
from humo.models.testing import randomize_
from humo.models.transformer import HumoTransformer3D

MID = {"dim": 512, "num_layers": 8, "num_heads": 8, "ffn_dim": 2048}
BRANCHES, FRAMES, SIDE, REPEATS = 3, 10, 16, 5
LEVERS = {
    "float32 (reference)": MemoryConfig(),
    "bfloat16 compute": MemoryConfig(compute_dtype="bfloat16"),
    "fp8 weights, float32 compute": MemoryConfig(weight_storage="fp8"),
    "fp8 weights, bfloat16 compute": MemoryConfig(weight_storage="fp8", compute_dtype="bfloat16"),
    "int8 weights (torchao), float32": MemoryConfig(weight_storage="int8"),
    "offload 4 of 8 blocks": MemoryConfig(offload_blocks=4),
    "1 branch per forward (max_branch_batch: 1)": MemoryConfig(max_branch_batch=1),
}


def build() -> HumoTransformer3D:
    return randomize_(HumoTransformer3D.from_preset("tiny", **MID))


def tensor_bytes(tensor: torch.Tensor) -> int:
    """Bytes of a tensor, or of the inner tensors of a tensor subclass (torchao's quantized weights)."""
    if type(tensor) in (torch.Tensor, torch.nn.Parameter) or not hasattr(tensor, "__tensor_flatten__"):
        return tensor.numel() * tensor.element_size()
    names, _ = tensor.__tensor_flatten__()
    return sum(tensor_bytes(getattr(tensor, name)) for name in names)


def inputs(model: HumoTransformer3D):
    cfg = model.humo_config
    generator = torch.Generator().manual_seed(1)
    latents = torch.randn(BRANCHES, 16, FRAMES, SIDE, SIDE, generator=generator)
    text = torch.randn(BRANCHES, 32, cfg.text_dim, generator=generator)
    audio = torch.randn(BRANCHES, FRAMES, cfg.audio_window, cfg.audio_groups, cfg.audio_channels, generator=generator)
    return latents, text, audio


class Step:
    """One lever's model and its TIA step (branches batched or split as its config says)."""

    def __init__(self, model: HumoTransformer3D, cfg: MemoryConfig, latents, text, audio) -> None:
        self.model = model
        self.dtype = model.patch_embedding.weight.dtype
        with torch.no_grad():
            self.context = model.prepare_context(text.to(self.dtype), audio.to(self.dtype), FRAMES, cache_kv=True)
        self.size = cfg.max_branch_batch or BRANCHES
        self.parts = [_select_context(self.context, list(range(first, min(first + self.size, BRANCHES))))
                      for first in range(0, BRANCHES, self.size)]
        self.latents, self.timestep = latents.to(self.dtype), torch.full((BRANCHES,), 500.0)
        self.times: list[float] = []

    @torch.no_grad()
    def __call__(self) -> torch.Tensor:
        return torch.cat([
            self.model(self.latents[first : first + self.size], self.timestep[first : first + self.size],
                       num_ref_frames=1, context=part).sample
            for first, part in zip(range(0, BRANCHES, self.size), self.parts)
        ]).float()

    def timed(self) -> torch.Tensor:
        tick = time.perf_counter()
        out = self()
        self.times.append(time.perf_counter() - tick)
        return out

    def activation_peak(self) -> int:
        """Live-tensor peak of one step plus the cached context keys and values."""
        tracker = LiveTensorPeak()
        with tracker:
            self()
        kv = (self.context.text_kv, self.context.audio_kv)
        return tracker.peak + sum(t.numel() * t.element_size() for pairs in kv for pair in pairs for t in pair)


def levers_table() -> list[str]:
    """Every lever's step, timed round-robin (one step of each lever per round) so drifts hit all alike."""
    rows = ["| lever | max abs error / max abs | DiT weight bytes (MB) | activation peak (MB) | step time (s) |",
            "| --- | ---: | ---: | ---: | ---: |"]
    steps: dict[str, Step] = {}
    for name, cfg in LEVERS.items():
        model = build()
        data = inputs(model)
        try:
            apply_memory_levers(model, cfg, torch.device("cpu"))
        except ImportError as err:
            rows.append(f"| {name} | not run: {err} | | | |")
            continue
        steps[name] = Step(model, cfg, *data)
        steps[name]()  # warm-up
    outputs = {}
    for _ in range(REPEATS):
        for name, run in steps.items():
            outputs[name] = run.timed()
    reference = outputs["float32 (reference)"]
    for name, run in steps.items():
        error = float((outputs[name] - reference).abs().max() / reference.abs().max())
        weights = sum(tensor_bytes(t) for t in run.model.state_dict().values())
        rows.append(f"| {name} | {error:.2e} | {weights / 1e6:.1f} | {run.activation_peak() / 1e6:.1f} | "
                    f"{statistics.median(run.times):.3f} |")
    return rows


LOAD_SCRIPT = """
import json, sys
import torch
from humo.models.checkpoints import load_trained_transformer
from humo.models.testing import randomize_
from humo.models.transformer import HumoTransformer3D
HumoTransformer3D.from_preset('tiny', num_layers=1)  # warm-up: torch's first allocations are not the load's
def status(key):  # VmHWM (peak) is per address space, so unlike ru_maxrss it does not inherit the parent's peak
    line = next(line for line in open('/proc/self/status') if line.startswith(key + ':'))
    return int(line.split()[1]) * 1024
before = status('VmRSS')
model = load_trained_transformer(sys.argv[1], in_place=sys.argv[2] == 'true')
peak = status('VmHWM')
with torch.no_grad():
    sum(float(p.sum()) for p in model.parameters())  # touch every weight (memory-mapped pages come in)
touched = status('VmHWM')
print(json.dumps({'added': peak - before, 'touched': touched - before}))
"""


def load_table() -> list[str]:
    rows = ["| load | peak memory added by the load (MB) | ... after reading every weight once (MB) | weights (MB) |",
            "| --- | ---: | ---: | ---: |"]
    model = build()
    state = model.state_dict()
    weights = sum(t.numel() * t.element_size() for t in state.values())
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_trained(
            Path(tmp) / "ckpt", state, state,
            config={"stage": 2, "preset": "tiny", "transformer": model.humo_config.model_dump(mode="json"), "params": {}},
            run={"run_id": "bench"},
        )
        for in_place in (True, False):
            result = subprocess.run([sys.executable, "-c", LOAD_SCRIPT, str(folder), str(in_place).lower()],
                                    capture_output=True, text=True, check=True)
            measured = json.loads(result.stdout.strip().splitlines()[-1])
            label = "load_in_place: true (meta device, assign)" if in_place else "load_in_place: false (init, copy)"
            rows.append(f"| {label} | {measured['added'] / 1e6:.1f} | {measured['touched'] / 1e6:.1f} | "
                        f"{weights / 1e6:.1f} |")
    return rows


def main() -> None:
    torch.manual_seed(0)
    print(f"mid config {MID}, TIA batch of {BRANCHES}, {FRAMES} latent frames of {SIDE}x{SIDE} "
          f"({FRAMES * SIDE * SIDE // 4} tokens), median of {REPEATS} round-robin rounds, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads\n")
    print("\n".join(levers_table()))
    print()
    print("\n".join(load_table()))


if __name__ == "__main__":
    main()
