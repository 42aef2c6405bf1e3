"""A small cost model of the HuMo DiT: parameters, weight bytes, activation bytes and FLOPs per denoising step.

It answers "will HuMo-17B at 720p fit on my GPUs, and how fast" for the levers of ``generate.parallel`` and
``generate.memory`` without running it (``humo plan-memory``). Its formulas are checked against the model built
here: parameter counts exactly (every preset), FLOPs against ``torch.utils.flop_counter`` and activation peaks
against measured runs of the tiny and mid configurations (``tests/models/test_costs.py``).

Conventions: a "step" is one DiT forward over every active guidance branch at once (``branches``: 3 for TIA, as
our pipeline batches them); the text and audio keys/values are computed once per request and cached (their
FLOPs are not in a step, their bytes are in the activations). Attention is assumed to be a fused kernel (flash
or memory-efficient SDPA), so no ``S x S`` matrix is stored.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from humo.constants import NUM_REF_FRAMES, VAE_SPATIAL_STRIDE, VAE_TEMPORAL_STRIDE
from humo.models.presets import HumoDiTConfig

BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
LINEARS_PER_BLOCK = 14
"""q, k, v, o of the self, text and audio attentions, and the two FFN layers."""
FLOAT32_TEMPORARIES = 2
"""[B, S, D] float32 tensors alive at once inside a block (the norm output and the modulated input)."""


# =====================================================================================================================
# Parameters
# =====================================================================================================================


def _linear(fan_in: int, fan_out: int) -> int:
    return fan_in * fan_out + fan_out


@dataclass(frozen=True)
class ParameterCount:
    """Parameters of a DiT, split by how the memory levers treat them.

    Attributes:
        block_linear: weights of the linears inside the blocks (what fp8/int8 storage quantizes).
        block_other: their biases, the norms and the modulation of the blocks (kept in the compute dtype).
        outside: embeddings, audio projection, head, mask predictor.
        num_layers: blocks.
    """

    block_linear: int
    block_other: int
    outside: int
    num_layers: int

    @property
    def total(self) -> int:
        return self.block_linear + self.block_other + self.outside

    @property
    def per_block(self) -> int:
        return (self.block_linear + self.block_other) // self.num_layers


def parameter_count(cfg: HumoDiTConfig) -> ParameterCount:
    """Exact parameter counts of :class:`humo.models.transformer.HumoTransformer3D` for ``cfg``."""
    d, ffn, ca = cfg.dim, cfg.ffn_dim, cfg.audio_context_dim
    weights = 8 * d * d + 2 * d * d + 2 * ca * d + 2 * d * ffn  # self + text (q,k,v,o), audio q,o + k,v, FFN
    biases = 4 * d + 4 * d + 4 * d + ffn + d
    norms = 3 * 2 * d + 2 * d + 2 * d + 6 * d  # q/k norms of 3 attentions, norm3 and norm1_audio (affine), modulation
    patch = math.prod(cfg.patch_size)
    window = cfg.audio_window * cfg.audio_groups * cfg.audio_channels
    outside = (
        cfg.in_channels * patch * d + d  # patch embedding
        + _linear(cfg.text_dim, d) + _linear(d, d)  # text MLP
        + _linear(cfg.freq_dim, d) + _linear(d, d) + _linear(d, 6 * d)  # time MLP and projection
        + _linear(window, cfg.audio_inner_dim) + _linear(cfg.audio_inner_dim, cfg.audio_inner_dim)
        + _linear(cfg.audio_inner_dim, cfg.audio_tokens * ca) + 2 * ca  # audio projection
        + _linear(d, patch * cfg.out_channels) + 2 * d  # head and its modulation
        + cfg.mask_blocks * (2 * d + _linear(d, patch))  # mask predictor (training only)
    )
    return ParameterCount(cfg.num_layers * weights, cfg.num_layers * (biases + norms), outside, cfg.num_layers)


# =====================================================================================================================
# A generation's shape
# =====================================================================================================================


@dataclass(frozen=True)
class Workload:
    """One request's shape: pixel size, frames and the guidance branches run per step."""

    height: int
    width: int
    frames: int
    branches: int = 3

    def latent_frames(self) -> int:
        return (self.frames - 1) // VAE_TEMPORAL_STRIDE + 1 + NUM_REF_FRAMES

    def tokens_per_frame(self, cfg: HumoDiTConfig) -> int:
        _, p_h, p_w = cfg.patch_size
        return (self.height // VAE_SPATIAL_STRIDE // p_h) * (self.width // VAE_SPATIAL_STRIDE // p_w)

    def tokens(self, cfg: HumoDiTConfig) -> int:
        return self.latent_frames() * self.tokens_per_frame(cfg)


def step_flops(cfg: HumoDiTConfig, work: Workload) -> int:
    """Matmul and attention FLOPs (2 per multiply-add) of one step, all branches, the whole sequence."""
    s, d, ffn = work.tokens(cfg), cfg.dim, cfg.ffn_dim
    projections = 2 * s * d * d * (4 + 2 + 2) + 2 * s * d * ffn * 2  # q,k,v,o self; q,o text; q,o audio; FFN
    attention = 4 * s * d * (s + cfg.text_len + cfg.audio_tokens)  # QK^T and AV: self, text, frame-local audio
    patch = math.prod(cfg.patch_size)
    outside = 2 * s * d * (cfg.in_channels * patch + patch * cfg.out_channels)
    time = 2 * (cfg.freq_dim * d + d * d + 6 * d * d)
    return work.branches * (cfg.num_layers * (projections + attention) + outside + time)


# =====================================================================================================================
# Memory per process
# =====================================================================================================================


@dataclass(frozen=True)
class Levers:
    """The switches of ``generate.parallel`` and ``generate.memory`` that change memory."""

    processes: int = 1
    shard_dit: bool = False
    weight_storage: str = "native"  # native | fp8 | int8
    compute_dtype: str = "bfloat16"
    offload_blocks: int = 0
    max_branch_batch: int | None = None
    text_encoder_on_host: bool = False


def weight_bytes(cfg: HumoDiTConfig, levers: Levers) -> int:
    """DiT weight bytes resident on one process's device (with ``shard_dit``: its shard and one gathered block)."""
    count = parameter_count(cfg)
    compute = BYTES[levers.compute_dtype]
    linear_bytes = 1 if levers.weight_storage in ("fp8", "int8") else compute
    block = count.block_linear * linear_bytes + count.block_other * compute
    if levers.weight_storage == "int8":  # one scale per output row
        block += cfg.num_layers * (12 * cfg.dim + cfg.ffn_dim) * compute
    elif levers.weight_storage == "fp8":
        block += cfg.num_layers * LINEARS_PER_BLOCK * 4  # a float32 scale per linear
    total = block + count.outside * compute
    if levers.offload_blocks:  # the offloaded blocks live on the host; two are on the device at a time
        resident = cfg.num_layers - levers.offload_blocks + min(2, levers.offload_blocks)
        total -= block * (cfg.num_layers - resident) // cfg.num_layers
    if levers.shard_dit:  # 1/N of everything, plus the one block gathered while it runs
        total = math.ceil(total / levers.processes) + block // cfg.num_layers
    return total


def activation_bytes(cfg: HumoDiTConfig, work: Workload, levers: Levers) -> int:
    """Peak activation bytes of one step on one process (whole latent frames per process).

    Kept: the cached text and audio keys/values of every block (whole on every process: the context is prepared
    before the split), the tokens entering the block and the block's output. Transient, whichever is larger: attention (float32 norm/modulation temporaries, local q/k/v, the
    gathered q/k/v and output for the process's heads) or the FFN (its hidden layer before and after GELU).
    """
    c, d = BYTES[levers.compute_dtype], cfg.dim
    b = min(work.branches, levers.max_branch_batch or work.branches)  # branches per forward
    frames = math.ceil(work.latent_frames() / levers.processes)
    local = frames * work.tokens_per_frame(cfg)
    total_tokens = work.tokens(cfg)
    heads_dim = math.ceil(cfg.num_heads / levers.processes) * cfg.head_dim
    cache = 2 * cfg.num_layers * work.branches * (cfg.text_len + work.latent_frames() * cfg.audio_tokens) * d * c  # every rank
    kept = 2 * b * local * d * c
    attention = b * local * d * (FLOAT32_TEMPORARIES * 4 + 3 * c) + 4 * b * total_tokens * heads_dim * c
    if levers.processes == 1:
        attention = b * local * d * (FLOAT32_TEMPORARIES * 4 + 4 * c)
    feed_forward = b * local * (FLOAT32_TEMPORARIES * 4 * d + 2 * cfg.ffn_dim * c)
    return cache + kept + max(attention, feed_forward)


def communication_bytes(cfg: HumoDiTConfig, work: Workload, levers: Levers) -> int:
    """Bytes one process sends per step: 4 all-to-alls per block (q, k, v, out) and the final gather."""
    if levers.processes == 1:
        return 0
    c = BYTES[levers.compute_dtype]
    local = math.ceil(work.tokens(cfg) / levers.processes)
    share = (levers.processes - 1) / levers.processes
    per_block = 4 * work.branches * local * cfg.dim * c * share
    return int(cfg.num_layers * per_block + work.branches * local * math.prod(cfg.patch_size) * cfg.out_channels * c)


@dataclass(frozen=True)
class Device:
    """A GPU for the estimates: dense bf16 tensor throughput, a utilisation guess, interconnect bandwidth."""

    name: str
    bf16_tflops: float
    memory_gib: float
    link_gb_s: float
    utilisation: float = 0.4


DEVICES = {
    "H100-80GB": Device("H100 SXM 80 GB", 989.0, 80, 450.0),
    "A100-80GB": Device("A100 SXM 80 GB", 312.0, 80, 300.0),
    "RTX4090-24GB": Device("RTX 4090 24 GB", 165.0, 24, 32.0),
}
"""Vendor peak dense bf16 figures; NVLink (H100 450 GB/s, A100 300 GB/s per direction) or PCIe 4.0 x16 (4090)."""


def step_seconds(cfg: HumoDiTConfig, work: Workload, levers: Levers, device: Device) -> float:
    """Compute time at ``device.utilisation`` of peak, split over the processes, plus all-to-all time."""
    compute = step_flops(cfg, work) / levers.processes / (device.bf16_tflops * 1e12 * device.utilisation)
    transfer = communication_bytes(cfg, work, levers) / (device.link_gb_s * 1e9)
    if levers.offload_blocks:  # each offloaded block crosses PCIe once per step (hidden by prefetch if faster)
        block = weight_bytes(cfg, Levers(weight_storage=levers.weight_storage, compute_dtype=levers.compute_dtype))
        moved = block * levers.offload_blocks / cfg.num_layers
        transfer += max(0.0, moved / (32.0 * 1e9) - compute)
    return compute + transfer


# =====================================================================================================================
# Measuring: the live-tensor peak of a piece of code
# =====================================================================================================================


class LiveTensorPeak(TorchDispatchMode):
    """Bytes of tensor storage created inside the mode and still alive, and their peak (``peak``).

    Exact for tensors (CPU or GPU), unlike a process's resident size: used to check :func:`activation_bytes`.
    """

    def __init__(self) -> None:
        super().__init__()
        self.refs: dict[int, int] = {}
        self.sizes: dict[int, int] = {}
        self.current = self.peak = 0

    def _release(self, key: int) -> None:
        self.refs[key] -= 1
        if not self.refs[key]:
            del self.refs[key]
            self.current -= self.sizes.pop(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor) and tensor.untyped_storage().data_ptr():
                key = tensor.untyped_storage().data_ptr()
                if key not in self.sizes:
                    self.sizes[key], self.refs[key] = tensor.untyped_storage().nbytes(), 0
                    self.current += self.sizes[key]
                self.refs[key] += 1
                weakref.finalize(tensor, self._release, key)
        self.peak = max(self.peak, self.current)
        return out


# =====================================================================================================================
# The plan table (``humo plan-memory``)
# =====================================================================================================================

TEXT_ENCODER_BYTES = 11_361_920_256
"""umT5-XXL encoder in bf16 (Wan2.1's ``models_t5_umt5-xxl-enc-bf16.pth``, 11.36 GB); sharded with shard_text."""
RESOLUTIONS = {"480p": (480, 832), "720p": (720, 1280)}
LEVER_SETS = {
    "bf16": Levers(),
    "bf16 + fp8 weights": Levers(weight_storage="fp8"),
    "bf16 + fp8 + offload 3/4": None,  # filled per model: three quarters of the blocks offloaded
    "fp8 + offload 3/4 + 1 branch/forward + umT5 on host": None,
    "SP 2": Levers(processes=2),
    "SP 2 + shard_dit + shard_text": Levers(processes=2, shard_dit=True),
    "SP 4 + shard_dit + shard_text": Levers(processes=4, shard_dit=True),
    "SP 8 + shard_dit + shard_text": Levers(processes=8, shard_dit=True),
}


@dataclass(frozen=True)
class PlanRow:
    model: str
    resolution: str
    levers: str
    weights_gib: float
    activations_gib: float
    text_gib: float
    step_seconds: float

    @property
    def total_gib(self) -> float:
        return self.weights_gib + self.activations_gib + self.text_gib


def plan_rows(models: dict[str, HumoDiTConfig], device: Device, frames: int = 97) -> list[PlanRow]:
    """Per-process memory and step time for each model, resolution and lever set (TIA: 3 branches per step)."""
    gib = 1024**3
    rows = []
    for model_name, cfg in models.items():
        for resolution, (height, width) in RESOLUTIONS.items():
            work = Workload(height, width, frames)
            for name, levers in LEVER_SETS.items():
                if levers is None:
                    small = name.endswith("host")
                    levers = Levers(weight_storage="fp8", offload_blocks=cfg.num_layers * 3 // 4,
                                    max_branch_batch=1 if small else None, text_encoder_on_host=small)
                text = 0 if levers.text_encoder_on_host else TEXT_ENCODER_BYTES / (levers.processes if levers.shard_dit else 1)
                rows.append(PlanRow(
                    model_name, resolution, name, weight_bytes(cfg, levers) / gib,
                    activation_bytes(cfg, work, levers) / gib, text / gib, step_seconds(cfg, work, levers, device),
                ))
    return rows


def plan_markdown(rows: list[PlanRow], device: Device, steps: int = 50) -> str:
    """The rows as a markdown table (GiB per process; seconds per step and per 50-step video)."""
    lines = [
        f"Estimated per-GPU memory and time on {device.name} ({device.bf16_tflops:.0f} bf16 TFLOPS at "
        f"{device.utilisation:.0%} utilisation, {device.link_gb_s:.0f} GB/s links), 97 frames, TIA (3 branches "
        "batched per step unless said otherwise), umT5 on the GPU unless said otherwise:",
        "",
        "| model | res | levers | DiT weights GiB | activations GiB | umT5 GiB | total GiB | s/step | "
        f"min/video ({steps} steps) |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        lines.append(
            f"| {row.model} | {row.resolution} | {row.levers} | {row.weights_gib:.1f} | {row.activations_gib:.1f} | "
            f"{row.text_gib:.1f} | {row.total_gib:.1f} | {row.step_seconds:.2f} | {row.step_seconds * steps / 60:.1f} |"
        )
    return "\n".join(lines)
