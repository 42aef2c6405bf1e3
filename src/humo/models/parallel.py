"""Sequence parallelism for the HuMo DiT: one video's tokens split by whole latent frames over a process group.

Upstream HuMo (``humo/models/distributed/dit_ulysses_sequence_parallel.py``) cuts the flattened token axis into
equal contiguous chunks; because its audio cross-attention is frame-local, that cut forces two more all-to-alls
per block and ties it to two grid sizes (scale-notes.md section 1.5). Here each process holds *whole latent
frames* (reference frames included, they are the last ones), so:

- text cross-attention, audio cross-attention and the FFN are local: a frame's tokens attend to that frame's
  audio tokens, which this process also holds (the audio context is sliced by frame, no communication);
- self-attention is Ulysses-style: q, k, v are projected and RMS-normalised over the full width on local tokens,
  RoPE is applied with the local rows of the position table, then one all-to-all per tensor trades "my frames,
  all heads" for "all frames, my heads"; attention runs over the whole sequence for the process's heads; one
  all-to-all brings the output back to "my frames, all heads" for the ``o`` projection;
- the head runs locally and the patch tokens are gathered once at the end of the forward.

Frame counts and head counts need not divide by the world size: both are split as evenly as possible
(e.g. 10 latent frames on 3 processes: 4, 3, 3; 12 heads on 5: 3, 3, 2, 2, 2), and the all-to-alls use uneven
split sizes, so there is no padding and nothing to strip. Every process needs at least one frame and one head:
``world_size <= min(latent frames, heads)``.

Inference only: the collectives here have no backward.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist


def even_split(total: int, parts: int) -> list[int]:
    """``total`` items in ``parts`` consecutive groups whose sizes differ by at most one (larger groups first)."""
    if parts < 1:
        raise ValueError(f"cannot split into {parts} parts")
    base, extra = divmod(total, parts)
    return [base + (1 if index < extra else 0) for index in range(parts)]


def valid_world_sizes(num_heads: int) -> list[int]:
    """Process counts a model with ``num_heads`` heads accepts (every process needs a head)."""
    return list(range(1, num_heads + 1))


@dataclass(frozen=True)
class SequenceShard:
    """Where one forward's tokens live: the latent frames of each process and their token counts.

    Attributes:
        rank: this process's index in the group.
        frame_sizes: latent frames held by each process, in rank order (they sum to the grid's frames).
        tokens_per_frame: patch tokens per latent frame (``h * w``).
    """

    rank: int
    frame_sizes: tuple[int, ...]
    tokens_per_frame: int

    @property
    def frame_start(self) -> int:
        return sum(self.frame_sizes[: self.rank])

    @property
    def frame_stop(self) -> int:
        return self.frame_start + self.frame_sizes[self.rank]

    @property
    def token_sizes(self) -> list[int]:
        return [frames * self.tokens_per_frame for frames in self.frame_sizes]

    @property
    def token_slice(self) -> slice:
        return slice(self.frame_start * self.tokens_per_frame, self.frame_stop * self.tokens_per_frame)


class SequenceParallel:
    """A process group that shares one forward's token sequence (see the module docstring).

    Args:
        group: the processes that split each sequence; None: the default (whole-world) group.
    """

    def __init__(self, group: dist.ProcessGroup | None = None) -> None:
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError(
                "sequence parallelism needs torch.distributed initialised (launch with torchrun --nproc-per-node N)"
            )
        self.group = group
        self.rank = dist.get_rank(group)
        self.world_size = dist.get_world_size(group)

    def check_heads(self, num_heads: int) -> None:
        """Refuse a group larger than the head count, naming the sizes that work."""
        if self.world_size > num_heads:
            sizes = valid_world_sizes(num_heads)
            raise ValueError(
                f"sequence_parallel={self.world_size} exceeds the model's {num_heads} attention heads; use one of "
                f"{sizes[0]}..{sizes[-1]} processes (heads are split unevenly when they do not divide)"
            )

    def shard(self, num_frames: int, tokens_per_frame: int) -> SequenceShard:
        """The frame split of a grid with ``num_frames`` latent frames (video + reference)."""
        if num_frames < self.world_size:
            raise ValueError(
                f"the latent has {num_frames} frames (video + reference) but sequence_parallel={self.world_size}: "
                f"every process needs a whole frame; use at most {num_frames} processes or a longer video"
            )
        return SequenceShard(self.rank, tuple(even_split(num_frames, self.world_size)), tokens_per_frame)

    # -- collectives -------------------------------------------------------------------------------------------

    def _all_to_all(self, chunks: list[torch.Tensor], receive_numels: list[int]) -> list[torch.Tensor]:
        """Send ``chunks[j]`` to rank j; return the flat piece received from each rank."""
        send = torch.cat([chunk.reshape(-1) for chunk in chunks])
        receive = send.new_empty(sum(receive_numels))
        dist.all_to_all_single(
            receive, send, output_split_sizes=receive_numels,
            input_split_sizes=[chunk.numel() for chunk in chunks], group=self.group,
        )
        return list(receive.split(receive_numels))

    def sequence_to_heads(self, x: torch.Tensor, shard: SequenceShard) -> torch.Tensor:
        """``[B, S_local, H, d]`` (my frames, all heads) -> ``[B, S, H_local, d]`` (all frames, my heads)."""
        batch, _, num_heads, head_dim = x.shape
        heads = even_split(num_heads, self.world_size)
        chunks = list(x.split(heads, dim=2))
        numels = [batch * tokens * heads[self.rank] * head_dim for tokens in shard.token_sizes]
        pieces = self._all_to_all(chunks, numels)
        return torch.cat(
            [piece.view(batch, tokens, heads[self.rank], head_dim) for piece, tokens in zip(pieces, shard.token_sizes)],
            dim=1,
        )

    def heads_to_sequence(self, x: torch.Tensor, shard: SequenceShard, num_heads: int) -> torch.Tensor:
        """``[B, S, H_local, d]`` -> ``[B, S_local, H, d]``: the inverse of :meth:`sequence_to_heads`."""
        batch, _, _, head_dim = x.shape
        heads = even_split(num_heads, self.world_size)
        local_tokens = shard.token_sizes[self.rank]
        chunks = list(x.split(shard.token_sizes, dim=1))
        pieces = self._all_to_all(chunks, [batch * local_tokens * count * head_dim for count in heads])
        return torch.cat(
            [piece.view(batch, local_tokens, count, head_dim) for piece, count in zip(pieces, heads)], dim=2
        )

    def gather_tokens(self, x: torch.Tensor, shard: SequenceShard) -> torch.Tensor:
        """``[B, S_local, C]`` on every process -> ``[B, S, C]`` everywhere (padded to the largest share)."""
        sizes = shard.token_sizes
        padded = x.new_zeros(x.shape[0], max(sizes), x.shape[2])
        padded[:, : x.shape[1]] = x
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded.contiguous(), group=self.group)
        return torch.cat([part[:, :size] for part, size in zip(parts, sizes)], dim=1)


def shard_transformer(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """Shard a HuMo DiT's weights over the default process group (FSDP2 ``fully_shard``, inference).

    Each block is its own shard unit, then the root takes the rest (embeddings, audio projection, head), so a
    process holds about ``1/world`` of the weights and gathers one block's at a time. ``prepare_context`` and
    each block's ``project_contexts`` run outside ``forward``, so they are registered as FSDP forward methods.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    for block in model.blocks:
        fully_shard(block, mesh=mesh, reshard_after_forward=True)
        register_fsdp_forward_method(block, "project_contexts")
    fully_shard(model, mesh=mesh, reshard_after_forward=True)  # the root too: nothing stays gathered between steps
    register_fsdp_forward_method(model, "prepare_context")
    register_fsdp_forward_method(model, "timestep_modulation")  # the step cache's signal (every rank calls it)
    return model


def local_parameter_bytes(model: torch.nn.Module) -> int:
    """Bytes of parameters this process holds (the local shards of sharded ones)."""
    total = 0
    for param in model.parameters():
        local = param.to_local() if hasattr(param, "to_local") else param
        total += local.numel() * local.element_size()
    return total
