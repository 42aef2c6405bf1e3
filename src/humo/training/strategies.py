"""Lightning strategies for the three ways to train: one process, DDP, and FSDP.

FSDP uses Lightning's ``ModelParallelStrategy`` with ``torch.distributed.fsdp.fully_shard`` applied per
transformer block in ``HumoSystem.configure_model`` (FSDP2: parameters become sharded DTensors). Lightning's
older ``FSDPStrategy`` refuses ``accelerator="cpu"``; this one runs on 2 CPU processes with gloo, which is how
the tests exercise it, and the same code runs on GPUs with NCCL (design.md section 6).
"""

from __future__ import annotations

import logging
from typing import Any, Literal

logger = logging.getLogger(__name__)


def build_strategy(kind: Literal["single", "ddp", "fsdp"], devices: int) -> Any:
    """The Lightning strategy for ``kind`` on ``devices`` processes.

    Args:
        kind: ``single`` (one process), ``ddp`` or ``fsdp``.
        devices: processes; must be 1 for ``single``.

    Returns:
        A strategy name or object for ``lightning.Trainer(strategy=...)``.

    Raises:
        ValueError: an unknown kind, or ``single`` with more than one device.
    """
    if kind == "single":
        if devices != 1:
            raise ValueError(f"strategy 'single' runs one process, got devices={devices}; use ddp or fsdp")
        return "auto"
    if kind == "ddp":
        from lightning.pytorch.strategies import DDPStrategy

        return DDPStrategy(find_unused_parameters=False)
    if kind == "fsdp":
        from lightning.pytorch.strategies import ModelParallelStrategy

        # Pure data parallelism: one FSDP mesh dimension over all processes, no tensor parallelism.
        return ModelParallelStrategy(data_parallel_size=devices, tensor_parallel_size=1, save_distributed_checkpoint=False)
    raise ValueError(f"unknown strategy {kind!r}; use 'single', 'ddp' or 'fsdp'")
