"""Data-parallel training over ``torch.distributed`` (launched by ``torchrun``).

Why plain ``torch.distributed`` collectives and not ``DistributedDataParallel`` or accelerate: the
loop already sums weighted per-micro-batch gradients for accumulation; data parallelism is the same
sum spread over ranks — each rank backpropagates its shard with weight ``|shard| / |global step|``
and one all-reduce (SUM) of the flattened gradients makes every rank hold the gradient of the whole
step. That is exactly the gradient of a single-process run on the same global batch (up to float
summation order), works for every student's scoring method (no wrapped ``forward`` to route through,
no unused-parameter bookkeeping for the pooler a bi-encoder never uses) and keeps resume exact.

``torchrun --nproc_per_node=N distillrank train ...`` sets ``WORLD_SIZE``, ``RANK`` and
``LOCAL_RANK``; :func:`init_from_env` joins the group (NCCL on CUDA, gloo on CPU).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


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

    def all_reduce_grads(self, params: list[torch.nn.Parameter]) -> None:
        """Sum every parameter's gradient over the ranks (a missing gradient counts as zero)."""
        if not self.enabled:
            return
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        flat = torch.cat([p.grad.reshape(-1) for p in params])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        offset = 0
        for p in params:
            n = p.grad.numel()
            p.grad.copy_(flat[offset : offset + n].view_as(p.grad))
            offset += n

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
