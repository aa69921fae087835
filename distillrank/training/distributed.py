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
of every global micro-batch (:meth:`distillrank.sharding.Share.split`); a rank whose share is empty
backpropagates one example with weight 0, so every rank joins every reduction.

With ``train.gather_negatives``, the passages of the global micro-batch are split over the ranks,
each rank encodes its share, and :func:`all_gather_rows` (``torch.distributed.nn.functional``:
the gradient flows back to the rank that encoded each row) gives every rank all of them, so the
in-batch negatives of a query span the global batch as in one process.

Where a rank stands (``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` of ``torchrun --nproc_per_node=N
distillrank train ...``) is the :class:`distillrank.sharding.Share` the train stage reads once
(:func:`distillrank.sharding.from_env`), and the group it joins is the one every stage joins
(:func:`distillrank.sharding.join_group`: gloo on the CPU; on CUDA, NCCL for CUDA tensors, which
DDP's reductions are, and gloo for CPU ones); the loop's other collectives (the sum of the loss,
the gathered RNG states and dev runs, the barriers) are :mod:`distillrank.sharding`'s too. This
module holds what only training needs: the differentiable gather.
"""

from __future__ import annotations

import torch
import torch.distributed.nn.functional as dist_nn

from distillrank.sharding import Share


def all_gather_rows(share: Share, rows: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """Every rank's ``rows`` concatenated in rank order (rank ``r`` contributes its first
    ``sizes[r]`` rows; :meth:`Share.split_sizes`), differentiable: the gradient of each row flows
    back to the rank that computed it (``torch.distributed.nn.functional.all_gather``)."""
    if not share.grouped:
        return rows[: sizes[0]]
    longest = max(sizes)
    pad = rows.new_zeros((longest - rows.shape[0], *rows.shape[1:]))
    parts = dist_nn.all_gather(torch.cat([rows, pad]) if len(pad) else rows)
    return torch.cat([part[:n] for part, n in zip(parts, sizes, strict=True)])
