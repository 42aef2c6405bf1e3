"""One generation on several processes: the process group, who does what, and how a failure reaches everyone.

Launch::

    torchrun --nproc-per-node 2 -m humo generate -r requests.jsonl -o out -m artifacts/train_stage2 \\
        generate.parallel.sequence_parallel=2

Every process loads the model and the encoders; rank 0 reads the requests, plans each one and broadcasts it
(:meth:`ParallelRuntime.dispatch`); the other ranks wait for work (:meth:`ParallelRuntime.jobs`). All ranks then
run the same denoising loop, the DiT splitting each forward's tokens by latent frame
(:mod:`humo.models.parallel`). Only rank 0 decodes and writes the video and its sidecar.

Failures: after each request every rank reports whether its part raised (:meth:`ParallelRuntime.agree`), so a
failure on any rank fails the request on rank 0 with that rank's reason and the batch goes on. A rank that dies
inside a collective cannot report; the others then fail after ``generate.parallel.timeout_s`` and torchrun ends
the job (a rerun skips the finished requests).
"""

from __future__ import annotations

import datetime
import logging
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from humo.config import ParallelConfig
from humo.models.parallel import SequenceParallel

logger = logging.getLogger(__name__)

T = TypeVar("T")

_STOP = "stop"
_JOB = "job"


class ParallelRankError(RuntimeError):
    """A request failed on another rank: ``rank`` and the reason it gave."""

    def __init__(self, rank: int, reason: str) -> None:
        super().__init__(f"failed on rank {rank}: {reason}")
        self.rank = rank
        self.reason = reason


def launched_world_size() -> int:
    """Processes torchrun started (``WORLD_SIZE``; 1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


@dataclass
class ParallelRuntime:
    """This process's place in a sequence-parallel group.

    Attributes:
        rank, world_size: as in ``torch.distributed``.
        device: where this process computes (``cuda:LOCAL_RANK`` with GPUs, else the CPU).
        sequence: the group that splits every DiT forward.
    """

    rank: int
    world_size: int
    device: torch.device
    sequence: SequenceParallel

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # -- work distribution (rank 0 -> the others) --------------------------------------------------------------

    def _broadcast(self, message: Any) -> Any:
        box = [message]
        dist.broadcast_object_list(box, src=0, group=self.sequence.group, device=self._object_device)
        return box[0]

    @property
    def _object_device(self) -> torch.device | None:
        return self.device if self.device.type == "cuda" else None

    def dispatch(self, job: Any) -> None:
        """Rank 0: hand the same job to every other rank (they run it through :meth:`jobs`)."""
        self._broadcast((_JOB, job))

    def close(self) -> None:
        """Rank 0: tell the other ranks there is no more work."""
        if self.is_main:
            self._broadcast((_STOP, None))

    def jobs(self) -> Iterator[Any]:
        """The other ranks: each job rank 0 dispatches, until it closes."""
        while True:
            kind, job = self._broadcast(None)
            if kind == _STOP:
                return
            yield job

    # -- failures -----------------------------------------------------------------------------------------------

    def run_agreed(self, work: Callable[[], T]) -> T | None:
        """Run this rank's part of a request, then learn whether every rank's part succeeded.

        Returns the result when all ranks succeeded. Rank 0 re-raises its own error, or raises
        :class:`ParallelRankError` with the first failing rank's reason; the other ranks return None on failure
        (rank 0 records it).
        """
        result: T | None = None
        error: BaseException | None = None
        try:
            result = work()
        except Exception as err:  # noqa: BLE001 -- every rank must reach the agreement below, whatever went wrong
            error = err
            logger.warning("rank %d: request failed: %s", self.rank, err)
        reasons: list[str | None] = [None] * self.world_size
        dist.all_gather_object(reasons, None if error is None else str(error), group=self.sequence.group)
        if error is not None and self.is_main:
            raise error
        failed = [(rank, reason) for rank, reason in enumerate(reasons) if reason is not None]
        if failed:
            if self.is_main:
                raise ParallelRankError(*failed[0])
            return None
        return result

    def shutdown(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()


def init_runtime(cfg: ParallelConfig) -> ParallelRuntime | None:
    """The process group for ``cfg`` (None when generating in one process).

    Raises:
        ValueError: the launched world size differs from ``sequence_parallel`` (the message gives the command).
    """
    world = launched_world_size()
    if cfg.sequence_parallel == 1 and world == 1:
        if cfg.shard_dit or cfg.shard_text:
            logger.warning("generate.parallel.shard_dit/shard_text have no effect in one process")
        return None
    if world != cfg.sequence_parallel:
        raise ValueError(
            f"generate.parallel.sequence_parallel={cfg.sequence_parallel} but {world} process(es) were launched; "
            f"run `torchrun --nproc-per-node {cfg.sequence_parallel} -m humo generate ...` (or set "
            f"generate.parallel.sequence_parallel={world})"
        )
    use_cuda = torch.cuda.is_available()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(
            "nccl" if use_cuda else "gloo", timeout=datetime.timedelta(seconds=cfg.timeout_s)
        )
    runtime = ParallelRuntime(dist.get_rank(), dist.get_world_size(), device, SequenceParallel())
    logger.info("rank %d of %d on %s (%s)", runtime.rank, runtime.world_size, device, dist.get_backend())
    return runtime


SEQUENCE_PARALLEL_ENV = "HUMO_SEQUENCE_PARALLEL"
"""Processes a served model splits each video over (``humo serve generate.parallel.sequence_parallel=N`` sets it)."""


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run_follower(rank: int, world: int, port: int, follower: Callable[..., None], args: tuple) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world))
    follower(*args)


def start_local_group(
    world: int, follower: Callable[..., None], args: tuple, timeout_s: float
) -> ParallelRuntime:
    """Make this process rank 0 of a new group on this machine and start ranks 1..world-1 as child processes.

    For servers, which are not launched by torchrun: each child runs ``follower(*args)`` (it builds its pipeline
    with :func:`init_runtime` and follows rank 0). The children are daemons in this process's session, so they
    end with the server.
    """
    import torch.multiprocessing as mp

    port = _free_port()
    context = mp.get_context("spawn")
    for rank in range(1, world):
        context.Process(target=_run_follower, args=(rank, world, port, follower, args), daemon=True).start()
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", LOCAL_RANK="0", WORLD_SIZE=str(world))
    runtime = init_runtime(ParallelConfig(sequence_parallel=world, timeout_s=timeout_s))
    assert runtime is not None  # world > 1
    return runtime


def launch_generate(
    cfg: ParallelConfig,
    requests: Path,
    out_dir: Path,
    model: str,
    params_path: Path,
    overrides: list[str],
    master_port: int | None = None,
) -> subprocess.CompletedProcess:
    """Run ``humo generate`` for one request file under ``torchrun`` with ``cfg.sequence_parallel`` processes.

    Used by the batch-inference flow, which then reads the summary rank 0 wrote into ``out_dir``. Returns the
    finished process (its exit code is 1 when a request failed, as for ``humo generate``).
    """
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(cfg.sequence_parallel),
        *(["--master-port", str(master_port)] if master_port else ["--standalone"]),
        "-m", "humo", "generate", "--requests", str(requests), "--out", str(out_dir), "--model", model,
        "--params", str(params_path), *overrides,
    ]
    logger.info("launching %s", " ".join(command))
    return subprocess.run(command, capture_output=True, text=True, check=False)


def parallelize(transformer: torch.nn.Module, runtime: ParallelRuntime, cfg: ParallelConfig) -> torch.nn.Module:
    """Split the DiT's forwards over ``runtime``'s group and, with ``shard_dit``, shard its weights there."""
    from humo.models.parallel import shard_transformer

    transformer.enable_sequence_parallel(runtime.sequence)
    if cfg.shard_dit:
        shard_transformer(transformer, runtime.device)
    return transformer
