"""Data-parallel training over ``torch.distributed`` (launched by ``torchrun``), with
``torch.nn.parallel.DistributedDataParallel`` as the engine.

Why DDP (and not the hand-written all-reduce it replaced, accelerate or Lightning Fabric): the loop
owns its schedule, accumulation, checkpoints and mixed precision already, so what it needs from an
engine is the gradient reduction alone; DDP is that and nothing else — bucketed all-reduces that
start while backward still runs (communication overlapped with computation), ``no_sync()`` for the
micro-batches of gradient accumulation, and the reduction of parameters a step did not use.
accelerate and Fabric would wrap the same DDP and add an optimizer/dataloader/precision layer the
loop would have to route around.

How the loop uses it (:mod:`distillrank.training.loop`): one module computes a micro-batch's loss
in its ``forward`` (the student's scores, its feature embeddings and the loss's own parameters: a
student scored outside ``forward``, e.g. through ``embed``, still goes through the wrapped call),
and DDP wraps it with ``find_unused_parameters=True`` (a bi-encoder's pooler, a loss term's
projection on a micro-batch without features: parameters unused by every rank keep no gradient, as
in one process). Each rank backpropagates its shard with weight ``world × |shard| / |global step|``;
DDP's average over the ranks makes that the gradient of the whole global step, i.e. that of one
process on the same global batch (up to float summation order). Each rank takes a contiguous share
of every global micro-batch (:meth:`Dist.shard`); a rank whose share is empty backpropagates one
example with weight 0, so every rank joins every reduction.

With ``train.gather_negatives``, the passages of the global micro-batch are split over the ranks,
each rank encodes its share, and :meth:`Dist.all_gather_rows` (``torch.distributed.nn.functional``:
the gradient flows back to the rank that encoded each row) gives every rank all of them, so the
in-batch negatives of a query span the global batch as in one process.

``torchrun --nproc_per_node=N distillrank train ...`` sets ``WORLD_SIZE``, ``RANK`` and
``LOCAL_RANK``; :func:`init_from_env` joins the group (NCCL on CUDA, gloo on CPU).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn


@dataclass
class Dist:
    """This process's place in the group (``world == 1``: a single process, every call a no-op)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, items: list) -> list:
        """This rank's contiguous share of ``items`` (sizes differ by at most one)."""
        if not self.enabled:
            return items
        n, w, r = len(items), self.world, self.rank
        return items[r * n // w : (r + 1) * n // w]

    def shard_sizes(self, n: int) -> list[int]:
        """How many of ``n`` items :meth:`shard` gives each rank, in rank order."""
        w = self.world
        return [(r + 1) * n // w - r * n // w for r in range(w)]

    def all_gather_rows(self, rows: torch.Tensor, sizes: list[int]) -> torch.Tensor:
        """Every rank's ``rows`` concatenated in rank order (rank ``r`` contributes its first
        ``sizes[r]`` rows), differentiable: the gradient of each row flows back to the rank that
        computed it (``torch.distributed.nn.functional.all_gather``)."""
        if not self.enabled:
            return rows[: sizes[0]]
        longest = max(sizes)
        pad = rows.new_zeros((longest - rows.shape[0], *rows.shape[1:]))
        parts = dist_nn.all_gather(torch.cat([rows, pad]) if len(pad) else rows)
        return torch.cat([part[:n] for part, n in zip(parts, sizes, strict=True)])

    def sum(self, value: float, device: torch.device) -> float:
        """The sum of a number over the ranks."""
        if not self.enabled:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return float(t.item())

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank."""
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def init_from_env(device: torch.device) -> tuple[Dist, torch.device]:
    """Join the process group that ``torchrun`` describes in the environment; a single process
    without it. On CUDA each rank takes ``cuda:LOCAL_RANK``.

    Returns:
        (the group description, this rank's device).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(), device
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Dist(rank=dist.get_rank(), world=dist.get_world_size(), local_rank=local_rank), device
