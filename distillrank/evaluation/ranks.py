"""This process's place among the ranks of a ``torchrun`` job, for work split by rank (the corpus
encoding of :func:`distillrank.evaluation.dense.cached_corpus_embeddings`).

``torchrun`` sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; a process without them is rank 0 of
1. When a ``torch.distributed`` group is initialised (the train stage joins one), the ranks
synchronise through it (:meth:`Ranks.barrier`, :meth:`Ranks.broadcast`); otherwise they do through
files in the workspace cache, which every rank must see.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch

from distillrank.errors import DistillrankError


@dataclass(frozen=True)
class Ranks:
    """Rank ``rank`` of ``world`` processes (``local_rank``: its GPU on its node)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    def __post_init__(self) -> None:
        if self.world < 1 or not 0 <= self.rank < self.world:
            raise DistillrankError(f"RANK={self.rank} is not a rank of WORLD_SIZE={self.world}")

    @classmethod
    def from_env(cls) -> Ranks:
        """The ranks ``torchrun`` describes in the environment (rank 0 of 1 without them)."""
        try:
            world = int(os.environ.get("WORLD_SIZE", "1"))
            rank = int(os.environ.get("RANK", "0"))
            local = int(os.environ.get("LOCAL_RANK", "0"))
        except ValueError as err:
            raise DistillrankError(f"RANK / WORLD_SIZE / LOCAL_RANK must be integers ({err})") from None
        return cls(rank, world, local)

    @property
    def grouped(self) -> bool:
        """Whether the ranks share an initialised ``torch.distributed`` group."""
        return self.world > 1 and torch.distributed.is_available() and torch.distributed.is_initialized()

    def share(self, n: int) -> range:
        """This rank's contiguous share of ``n`` items (sizes differ by at most one)."""
        return range(self.rank * n // self.world, (self.rank + 1) * n // self.world)

    def device(self, device: torch.device) -> torch.device:
        """This rank's device: ``cuda:LOCAL_RANK`` for a CUDA device without an index when there are
        several ranks, else ``device``."""
        device = torch.device(device)
        if self.world > 1 and device.type == "cuda" and device.index is None:
            return torch.device("cuda", self.local_rank)
        return device

    def barrier(self) -> None:
        """Wait for every rank (a no-op without a group)."""
        if self.grouped:
            torch.distributed.barrier()

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (``obj`` itself without a group)."""
        if not self.grouped:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]
