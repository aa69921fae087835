"""Where this process stands among the workers of one job, and the operations of their group: the
one place that reads the variables of ``torchrun`` and of SLURM arrays.

:func:`from_env` reads the environment, in the stage (or builder) that is launched, and the
resulting :class:`Share` is passed down as a plain value to the work split by worker:

* the score stage splits the missing pairs by *block* (:meth:`Share.owns`): the work items are put in
  one order that does not depend on the number of workers, cut into blocks, and block ``b`` goes to
  worker ``b % count``. Each block is done the same way whoever does it, so the result does not
  depend on the number of workers.
* corpus encoding (:func:`distillrank.evaluation.dense.cached_corpus_embeddings`) and data-parallel
  training (:mod:`distillrank.training.distributed`) split among the ranks of the ``torchrun`` group
  (:attr:`Share.rank` of :attr:`Share.group`) in contiguous parts (:meth:`Share.span`,
  :meth:`Share.split`).

Launchers:

* ``torchrun --nproc_per_node=N``: ``RANK`` / ``WORLD_SIZE`` (and ``LOCAL_RANK``, the GPU of the
  rank). The ranks form a ``torch.distributed`` group (:func:`join_group`); after a
  :func:`barrier`, rank 0 writes what needs every share.
* a SLURM array (``sbatch --array=0-N``, or submitit) whose tasks set ``DISTILLRANK_SHARD_ARRAY=1``:
  ``SLURM_ARRAY_TASK_ID`` (less ``SLURM_ARRAY_TASK_MIN``) / ``SLURM_ARRAY_TASK_COUNT``. There is no
  group: each task does its share and exits, and a later single run finds everything done and
  writes the output. Without ``DISTILLRANK_SHARD_ARRAY=1`` the array variables are ignored: the
  tasks of a Hydra sweep on the submitit launcher are array tasks too, each a whole job.
* both (each array task runs ``torchrun``): the array's tasks times the ranks of each.

Group operations (:func:`join_group`, :func:`barrier`, :func:`broadcast`, :func:`gather`,
:func:`total`, :func:`reduce_array`) are no-ops for a worker without an initialised group; ranks that share no group but
share a file system wait for each other's files with :func:`wait_until`.
"""

from __future__ import annotations

import atexit
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from distillrank.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Share:
    """This worker's place among the workers of one job.

    Attributes:
        index: this worker, in ``[0, count)``.
        count: how many workers share the work (1: one process does all of it).
        group: how many of them (this one included) form the ``torchrun`` process group this one is
            in (1: none); its first member has ``index % group == 0``.
        local_rank: the rank on this machine (``LOCAL_RANK``): the GPU a ``torchrun`` rank uses.
    """

    index: int = 0
    count: int = 1
    group: int = 1
    local_rank: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.index < self.count or self.group < 1 or self.count % self.group:
            raise ConfigError(
                f"worker {self.index} of {self.count} (process group of {self.group}) is not a valid share"
            )

    @classmethod
    def rank_of(cls, rank: int, world: int, local_rank: int = 0) -> Share:
        """Rank ``rank`` of a ``torchrun`` group of ``world`` processes (and no SLURM array)."""
        return cls(index=rank, count=world, group=world, local_rank=local_rank)

    @property
    def whole(self) -> bool:
        """Whether this worker does all the work (a single process)."""
        return self.count == 1

    @property
    def rank(self) -> int:
        """This worker's rank in its ``torchrun`` group (``RANK``; 0 without one)."""
        return self.index % self.group

    @property
    def main(self) -> bool:
        """Whether this worker is rank 0 of its ``torchrun`` group (or has no group)."""
        return self.rank == 0

    @property
    def grouped(self) -> bool:
        """Whether this worker's ``torchrun`` group is an initialised ``torch.distributed`` group."""
        return self.group > 1 and dist.is_available() and dist.is_initialized()

    @property
    def assembles(self) -> bool:
        """Whether this worker writes what needs every share, once its group has passed a
        :func:`barrier`: the only worker, or rank 0 of a ``torchrun`` group that spans all of them.
        Tasks of a SLURM array never do (a later single run does)."""
        return self.index == 0 and self.group == self.count

    def owns(self, blocks: np.ndarray) -> np.ndarray:
        """Which of the blocks ``blocks`` (integers) are this worker's: ``block % count == index``."""
        return np.asarray(blocks) % self.count == self.index

    def span(self, n: int) -> range:
        """This rank's contiguous part of ``n`` items among the ranks of its group (sizes differ by
        at most one; all of them without a group)."""
        r, w = self.rank, self.group
        return range(r * n // w, (r + 1) * n // w)

    def split(self, items: list) -> list:
        """This rank's contiguous part of ``items`` (:meth:`span`)."""
        if self.group == 1:
            return items
        part = self.span(len(items))
        return items[part.start : part.stop]

    def split_sizes(self, n: int) -> list[int]:
        """How many of ``n`` items :meth:`split` gives each rank of the group, in rank order."""
        w = self.group
        return [(r + 1) * n // w - r * n // w for r in range(w)]

    def device(self, device: torch.device) -> torch.device:
        """This rank's device: ``cuda:LOCAL_RANK`` for a CUDA device without an index when the
        group has several ranks, else ``device``."""
        device = torch.device(device)
        if self.group > 1 and device.type == "cuda" and device.index is None:
            return torch.device("cuda", self.local_rank)
        return device

    def describe(self) -> str:
        """``worker i of n``, for logs."""
        return f"worker {self.index} of {self.count}"


WHOLE = Share()  # one process does everything
ARRAY_ENV = "DISTILLRANK_SHARD_ARRAY"  # "1": the tasks of this SLURM array share one job's work


def _int(environ: Mapping[str, str], name: str, default: int | None = None) -> int:
    value = environ.get(name)
    if value is None or value == "":
        if default is None:
            raise ConfigError(f"${name} is not set")
        return default
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"${name}={value!r} is not an integer") from None


def from_env(environ: Mapping[str, str] | None = None) -> Share:
    """This process's share, from the variables ``torchrun`` and SLURM arrays set in ``environ``
    (``os.environ`` by default; :data:`WHOLE` without them); a SLURM array's only with
    ``DISTILLRANK_SHARD_ARRAY=1``.

    Raises:
        ConfigError: a variable that is not an integer, a rank outside its world,
            ``DISTILLRANK_SHARD_ARRAY=1`` outside an array, or a SLURM array whose task ids are not
            consecutive (``--array=0-N`` or ``1-N``, no step or list).
    """
    environ = os.environ if environ is None else environ
    world = _int(environ, "WORLD_SIZE", 1)
    rank = _int(environ, "RANK", 0)
    if world < 1 or not 0 <= rank < world:
        raise ConfigError(f"RANK={rank} is not in [0, WORLD_SIZE={world})")
    tasks, task = 1, 0
    array = environ.get(ARRAY_ENV, "0")
    if array not in ("", "0", "1"):
        raise ConfigError(f"${ARRAY_ENV}={array!r}; expected 1 (the array's tasks share the work) or 0")
    if array == "1":
        if environ.get("SLURM_ARRAY_TASK_ID") in (None, ""):
            raise ConfigError(
                f"${ARRAY_ENV}=1 but this is not a SLURM array task ($SLURM_ARRAY_TASK_ID is not set)"
            )
        task_id = _int(environ, "SLURM_ARRAY_TASK_ID")
        tasks = _int(environ, "SLURM_ARRAY_TASK_COUNT")
        first = _int(environ, "SLURM_ARRAY_TASK_MIN", 0)
        step = _int(environ, "SLURM_ARRAY_TASK_STEP", 1)
        task = task_id - first
        if step != 1 or not 0 <= task < tasks:
            raise ConfigError(
                f"SLURM array task {task_id} (min {first}, step {step}, {tasks} tasks): the tasks must be "
                "numbered consecutively (sbatch --array=0-N)"
            )
    return Share(
        index=task * world + rank, count=tasks * world, group=world, local_rank=_int(environ, "LOCAL_RANK", 0)
    )


def join_group(share: Share, device: torch.device) -> torch.device:
    """Join the ``torchrun`` process group (when the share has one and it is not joined yet) and
    return this worker's device: ``cuda:LOCAL_RANK`` on CUDA, else ``device``.

    The group is gloo on the CPU; on CUDA it is gloo for CPU tensors and NCCL for CUDA tensors, so
    the data-parallel training that may run in the same process reduces its gradients with NCCL.
    """
    if share.group == 1:
        return device
    if device.type == "cuda":
        device = torch.device("cuda", share.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo")
        # left at exit while Python still runs: a group torn down with the interpreter aborted a rank
        # now and then ("terminate called without an active exception") once its peer had exited
        atexit.register(_leave_group)
    return device


def _leave_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier(share: Share) -> None:
    """Wait for every rank of this worker's ``torchrun`` group (nothing without an initialised
    one). Runs on a CPU tensor when the group has gloo, so it needs no GPU."""
    if not share.grouped:
        return
    if "gloo" in str(dist.get_backend()):
        dist.all_reduce(torch.zeros(1))
    else:
        dist.barrier()


def broadcast(share: Share, obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank of the group (``obj`` itself without a group): how the ranks
    take one decision that every one of them must follow (a collective they all join)."""
    if not share.grouped:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(share: Share, obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank (``[obj]`` without a group)."""
    if not share.grouped:
        return [obj]
    out: list[Any] = [None] * share.group
    dist.all_gather_object(out, obj)
    return out


def total(share: Share, value: float, device: torch.device) -> float:
    """The sum of a number over the ranks of the group (``value`` without a group), reduced on
    ``device`` (the group's backend for it: NCCL for a CUDA device)."""
    if not share.grouped:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t.item())


def reduce_array(share: Share, values: np.ndarray, how: str = "sum") -> np.ndarray:
    """The element-wise ``sum``, ``min`` or ``max`` of an int64 or float64 array over the ranks of the
    group (``values`` without a group), of the same dtype: one all-reduce of a CPU tensor (gloo, also
    in a group whose CUDA tensors use NCCL). Other dtypes are reduced as int64 (integers, booleans)
    or float64 (floats)."""
    if how not in _REDUCE_OPS:
        raise ValueError(f"reduce_array(how={how!r}); expected one of {sorted(_REDUCE_OPS)}")
    if not share.grouped:
        return values
    dtype = np.float64 if np.issubdtype(np.asarray(values).dtype, np.floating) else np.int64
    t = torch.from_numpy(np.array(values, dtype=dtype, copy=True))
    dist.all_reduce(t, op=getattr(dist.ReduceOp, _REDUCE_OPS[how]))
    return t.numpy()


_REDUCE_OPS = {"sum": "SUM", "min": "MIN", "max": "MAX"}


POLL_S = 0.5  # how often a worker without a group looks for another's files


def wait_until(ready: Callable[[], bool], what: str) -> None:
    """The barrier of workers without a group (or that must not hold a collective open for long):
    poll ``ready()`` every :data:`POLL_S` seconds until it holds, saying once a minute what is
    awaited. The workers must share the file system ``ready`` looks at."""
    start = last = time.monotonic()
    while not ready():
        if time.monotonic() - last >= 60:
            log.info("waiting for %s (%.0f s)", what, time.monotonic() - start)
            last = time.monotonic()
        time.sleep(POLL_S)
