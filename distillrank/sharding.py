"""Which share of a job's work this process does: one worker of ``torchrun`` or of a SLURM array.

:func:`from_env` reads the environment once, in the stage that is launched, and the resulting
:class:`Share` is passed down as a plain value. Work is split by *block*: the work items are put in
one order that does not depend on the number of workers, cut into blocks, and block ``b`` goes to
worker ``b % count`` (:meth:`Share.owns`). Each block is done the same way whoever does it, so the
result does not depend on the number of workers.

* ``torchrun --nproc_per_node=N``: ``RANK`` / ``WORLD_SIZE`` (and ``LOCAL_RANK``, the GPU of the
  rank). The ranks form a ``torch.distributed`` group (:func:`join_group`); after a
  :func:`barrier`, rank 0 writes what needs every share.
* a SLURM array (``sbatch --array=0-N``, or submitit) whose tasks set ``DISTILLRANK_SHARD_ARRAY=1``:
  ``SLURM_ARRAY_TASK_ID`` (less ``SLURM_ARRAY_TASK_MIN``) / ``SLURM_ARRAY_TASK_COUNT``. There is no
  group: each task does its share and exits, and a later single run finds everything done and
  writes the output. Without ``DISTILLRANK_SHARD_ARRAY=1`` the array variables are ignored: the
  tasks of a Hydra sweep on the submitit launcher are array tasks too, each a whole job.
* both (each array task runs ``torchrun``): the array's tasks times the ranks of each.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from distillrank.errors import ConfigError


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

    @property
    def whole(self) -> bool:
        """Whether this worker does all the work (a single process)."""
        return self.count == 1

    @property
    def assembles(self) -> bool:
        """Whether this worker writes what needs every share, once its group has passed a
        :func:`barrier`: the only worker, or rank 0 of a ``torchrun`` group that spans all of them.
        Tasks of a SLURM array never do (a later single run does)."""
        return self.index == 0 and self.group == self.count

    def owns(self, blocks: np.ndarray) -> np.ndarray:
        """Which of the blocks ``blocks`` (integers) are this worker's: ``block % count == index``."""
        return np.asarray(blocks) % self.count == self.index

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


def from_env(environ: Mapping[str, str]) -> Share:
    """This process's share, from the variables ``torchrun`` and SLURM arrays set (:data:`WHOLE`
    without them); a SLURM array's only with ``DISTILLRANK_SHARD_ARRAY=1``.

    Raises:
        ConfigError: a variable that is not an integer, a rank outside its world,
            ``DISTILLRANK_SHARD_ARRAY=1`` outside an array, or a SLURM array whose task ids are not
            consecutive (``--array=0-N`` or ``1-N``, no step or list).
    """
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
    the data-parallel training that may run next in the same process uses NCCL.
    """
    if share.group == 1:
        return device
    if device.type == "cuda":
        device = torch.device("cuda", share.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo")
    return device


def barrier(share: Share) -> None:
    """Wait for every rank of this worker's ``torchrun`` group (nothing without one). Runs on a CPU
    tensor when the group has gloo, so it needs no GPU."""
    if share.group == 1 or not dist.is_initialized():
        return
    if "gloo" in str(dist.get_backend()):
        dist.all_reduce(torch.zeros(1))
    else:
        dist.barrier()
