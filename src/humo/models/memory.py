"""Memory levers for running a HuMo DiT on one small device: compute dtype, fp8/int8 weights, block offload.

What is stored how (``generate.memory``):

- **fp8** (:class:`Fp8Linear`): the linear layers inside the blocks (q, k, v, o of the three attentions and the
  FFN) keep their weight as ``float8_e4m3fn`` with one float32 scale per tensor (``amax / 448``), upcast to the
  compute dtype at use. Norms, biases, modulation, the embeddings, the head and the audio projection stay in the
  compute dtype. :func:`scaled_fp8_state_dict` / :func:`dequantize_scaled_fp8` write and read the layout ComfyUI
  and the WanVideo wrapper use (``<module>.weight`` in fp8, ``<module>.scale_weight``, a ``scaled_fp8`` marker).
- **int8**: torchao's int8 weight-only quantization of the same layers (``pip install humo[quant]``).
- **offload** (:func:`offload_blocks`): the last N blocks stay on the host; each moves to the device just before it
  runs and back right after, and (with ``prefetch``, on CUDA) the next one is copied on a side stream meanwhile.

Each lever's error against float32, weight bytes and step time are measured by ``benchmarks/bench_memory.py``
(README, "Inference at scale").
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from humo.config import MemoryConfig

logger = logging.getLogger(__name__)

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8_DTYPE).max)  # 448
SCALED_FP8_MARKER = "scaled_fp8"
"""State-dict key whose presence marks a ComfyUI scaled-fp8 file (an empty tensor of the fp8 dtype)."""
SCALE_SUFFIX = ".scale_weight"
COMPUTE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
FLOAT32_MODULES = ("time_embedding", "time_projection")
"""The timestep MLP runs in its weights' dtype; it stays float32 whatever the compute dtype (as upstream)."""


def quantizable_linears(model: nn.Module) -> Iterator[tuple[str, nn.Linear]]:
    """The block linears that fp8/int8 storage may quantize (names as in ``named_modules``)."""
    for name, module in model.named_modules():
        if name.startswith("blocks.") and isinstance(module, nn.Linear):
            yield name, module


# =====================================================================================================================
# fp8 storage
# =====================================================================================================================


def quantize_fp8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``weight`` -> (``float8_e4m3fn`` tensor, float32 scalar scale) with ``weight ~= fp8.float() * scale``."""
    amax = weight.detach().abs().max().float().clamp(min=torch.finfo(torch.float32).tiny)
    scale = amax / FP8_MAX
    return (weight.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE), scale


class Fp8Linear(nn.Module):
    """A Linear whose weight is stored in fp8 with a per-tensor scale and upcast to the input's dtype at use."""

    def __init__(self, weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.register_buffer("weight", weight)
        self.register_buffer("scale_weight", scale.reshape(()).float())
        self.bias = nn.Parameter(bias, requires_grad=False) if bias is not None else None

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Fp8Linear:
        weight, scale = quantize_fp8(linear.weight)
        return cls(weight, scale, linear.bias.detach() if linear.bias is not None else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight.to(x.dtype) * self.scale_weight.to(x.dtype)
        return F.linear(x, weight, self.bias.to(x.dtype) if self.bias is not None else None)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, fp8 e4m3 + per-tensor scale"


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def store_fp8(model: nn.Module) -> nn.Module:
    """Swap every block linear for an :class:`Fp8Linear` (in place)."""
    for name, linear in list(quantizable_linears(model)):
        _replace(model, name, Fp8Linear.from_linear(linear))
    return model


def scaled_fp8_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's weights in ComfyUI's scaled-fp8 layout (upstream key names, no prefix).

    Block linear weights become fp8 with ``<module>.scale_weight`` beside them; everything else keeps its dtype;
    the ``scaled_fp8`` marker is added. Works on a plain model and on one already stored in fp8.
    """
    state = {key: value.detach() for key, value in model.state_dict().items()}
    for name, module in model.named_modules():
        if isinstance(module, Fp8Linear):
            continue
        if name.startswith("blocks.") and isinstance(module, nn.Linear):
            state[f"{name}.weight"], state[f"{name}{SCALE_SUFFIX}"] = quantize_fp8(module.weight)
    state[SCALED_FP8_MARKER] = torch.empty(0, dtype=FP8_DTYPE)
    return state


def is_scaled_fp8(state: Mapping[str, torch.Tensor]) -> bool:
    return SCALED_FP8_MARKER in state or any(key.endswith(SCALE_SUFFIX) for key in state)


def dequantize_scaled_fp8(state: Mapping[str, torch.Tensor], dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """A scaled-fp8 state dict -> ordinary weights (``fp8 * scale``, in ``dtype`` or float32); marker and scales go.

    Raises:
        ValueError: an fp8 weight without its scale (an unscaled fp8 file is read as is by ``read_state_dict``).
    """
    out: dict[str, torch.Tensor] = {}
    target = dtype or torch.float32
    for key, value in state.items():
        if key == SCALED_FP8_MARKER or key.endswith(SCALE_SUFFIX):
            continue
        if value.dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
            scale_key = key.removesuffix(".weight") + SCALE_SUFFIX
            if scale_key not in state:
                raise ValueError(f"scaled-fp8 file: {key} is fp8 but {scale_key} is missing")
            value = (value.float() * state[scale_key].float()).to(target)
        out[key] = value
    return out


# =====================================================================================================================
# int8 (torchao) and block offload
# =====================================================================================================================


def store_int8(model: nn.Module) -> nn.Module:
    """torchao int8 weight-only quantization of the block linears (in place).

    Raises:
        ImportError: torchao is not installed (the message gives the extra to install).
    """
    try:
        from torchao.quantization import Int8WeightOnlyConfig, quantize_
    except ImportError as err:
        raise ImportError(
            "generate.memory.weight_storage=int8 needs torchao: pip install 'humo[quant]'"
        ) from err
    names = {name for name, _ in quantizable_linears(model)}
    quantize_(model, Int8WeightOnlyConfig(), filter_fn=lambda module, fqn: fqn in names)
    return model


class _BlockOffload:
    """Hooks that bring one block to the device for its forward, prefetching the next offloaded block."""

    def __init__(self, blocks: list[nn.Module], device: torch.device, host: torch.device, prefetch: bool) -> None:
        self.blocks, self.device, self.host = blocks, device, host
        self.stream = torch.cuda.Stream(device) if prefetch and device.type == "cuda" else None
        self.ready: dict[int, torch.cuda.Event] = {}
        self.moves = 0

    def _load(self, index: int) -> None:
        block = self.blocks[index]
        if self.stream is None:
            block.to(self.device)
            return
        with torch.cuda.stream(self.stream):
            block.to(self.device, non_blocking=True)
            event = torch.cuda.Event()
            event.record(self.stream)
        self.ready[index] = event

    def before(self, index: int) -> None:
        if index not in self.ready:
            self._load(index)
        event = self.ready.pop(index, None)
        if event is not None:
            torch.cuda.current_stream(self.device).wait_event(event)
        if self.stream is not None and index + 1 < len(self.blocks):
            self._load(index + 1)
        self.moves += 1

    def after(self, index: int) -> None:
        self.blocks[index].to(self.host, non_blocking=self.stream is not None)


def offload_blocks(model: nn.Module, count: int, device: torch.device, prefetch: bool = True) -> _BlockOffload:
    """Keep the last ``count`` blocks on the host and move each to ``device`` only while it runs.

    Returns:
        The hook state (``moves`` counts the block transfers, for tests and logs).
    """
    blocks = list(model.blocks)[-count:] if count else []
    host = torch.device("cpu")
    state = _BlockOffload(blocks, device, host, prefetch)
    for index, block in enumerate(blocks):
        block.to(host)
        if device.type == "cuda":
            for param in block.parameters():
                param.data = param.data.pin_memory()
        block.register_forward_pre_hook(lambda module, args, index=index: state.before(index))
        block.register_forward_hook(lambda module, args, output, index=index: state.after(index))
    return state


# =====================================================================================================================
# One entry point
# =====================================================================================================================


def apply_memory_levers(model: nn.Module, cfg: MemoryConfig, device: torch.device) -> nn.Module:
    """Cast, quantize and place the DiT as ``cfg`` says (``load_in_place`` is the loader's: see ``load_model``)."""
    if cfg.offload_blocks > len(model.blocks):
        raise ValueError(
            f"generate.memory.offload_blocks={cfg.offload_blocks} but the model has {len(model.blocks)} blocks"
        )
    dtype = COMPUTE_DTYPES[cfg.compute_dtype]
    if dtype != torch.float32:
        for child in model.children():  # per child: ModelMixin.to() warns about fp32 modules we handle below
            child.to(dtype)
        for name in FLOAT32_MODULES:
            model.get_submodule(name).float()
    if cfg.weight_storage == "fp8":
        store_fp8(model)
    elif cfg.weight_storage == "int8":
        store_int8(model)
    offloaded = set(range(len(model.blocks) - cfg.offload_blocks, len(model.blocks))) if cfg.offload_blocks else set()
    for name, child in model.named_children():
        if name != "blocks":
            child.to(device)
    for index, block in enumerate(model.blocks):
        if index not in offloaded:
            block.to(device)
    for param in model.parameters(recurse=False):
        param.data = param.data.to(device)
    if cfg.offload_blocks:
        offload_blocks(model, cfg.offload_blocks, device, cfg.prefetch)
    if cfg.weight_storage != "native" or cfg.offload_blocks or dtype != torch.float32:
        logger.info(
            "DiT memory: %s compute, %s block weights, %d block(s) offloaded", cfg.compute_dtype,
            cfg.weight_storage, cfg.offload_blocks,
        )
    return model
