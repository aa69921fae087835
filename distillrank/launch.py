"""The ``torch.distributed`` environment of a process started as one of several SLURM tasks.

``torchrun`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``, and
every engine of distillrank reads those through :mod:`distillrank.sharding`: the sharded score and
mine stages, data-parallel training (:mod:`distillrank.training.distributed`) and the corpus
encoding by ranks (:mod:`distillrank.evaluation.dense`). A job step of several SLURM tasks (``srun --ntasks=N``, or
submitit with ``tasks_per_node`` × ``nodes`` tasks: ``hydra/launcher=slurm_ddp``) starts one
process per task instead, with SLURM's variables only. :func:`export_torch_env`, called by the CLI
before any stage runs, translates them, so such a task is the rank of a ``torchrun`` job:

* ``RANK``: ``SLURM_PROCID``; ``WORLD_SIZE``: ``SLURM_NTASKS``;
* ``LOCAL_RANK``: ``SLURM_LOCALID`` (each rank then takes ``cuda:LOCAL_RANK``);
  ``LOCAL_WORLD_SIZE``: ``SLURM_NTASKS`` / ``SLURM_JOB_NUM_NODES``;
* ``MASTER_ADDR``: the first host of the job's node list (rank 0 runs there), unless already set;
* ``MASTER_PORT``: ``MASTER_PORT`` if set, else a port in [20000, 60000] drawn from the job id.

Inside a submitit job (``SUBMITIT_EXECUTOR=slurm``) the values are submitit's own
(:class:`submitit.helpers.TorchDistributedEnvironment`: the node list parsed by submitit, the port
it derives from the job id). Elsewhere (a plain ``srun``, or submitit not installed) they are read
here from the same variables, the same way: the node list in SLURM's compressed form
(``gpu[003-004,010],cpu1``) needs no ``scontrol``, since only its first host is used.
The variables are written by this module rather than by ``TorchDistributedEnvironment.export``,
which would set ``CUDA_VISIBLE_DEVICES`` to the rank's GPU alone (the engines address
``cuda:LOCAL_RANK`` among all of the node's GPUs) and either refuses to run or overwrites
``MASTER_ADDR`` when the user has set ``MASTER_ADDR`` / ``MASTER_PORT``.

Nothing changes for a process that ``torchrun`` started (``RANK`` is set), for one task (a Hydra
sweep on ``hydra/launcher=slurm``, a one-task ``srun``, an array task) or outside SLURM. Only a job
*step* counts (``SLURM_STEP_NUM_TASKS``, which ``srun`` sets): a batch script of an allocation with
``--ntasks=8`` that runs ``distillrank`` itself, without ``srun``, is one process, not rank 0 of 8.
"""

from __future__ import annotations

import logging
import os
import random
import re
from collections.abc import Mapping

from distillrank.errors import ConfigError

log = logging.getLogger(__name__)

STEP_TASKS = "SLURM_STEP_NUM_TASKS"  # tasks of this job step; set by srun (submitit runs one srun step)
PORT_RANGE = (20000, 60000)  # submitit's range for a port drawn from the job id
EXPORTED = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def _int(environ: Mapping[str, str], name: str, default: int | None = None) -> int:
    value = environ.get(name, "")
    if value == "":
        if default is None:
            raise ConfigError(f"${name} is not set, but this process runs as one of several SLURM tasks")
        return default
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"${name}={value!r} is not an integer") from None


def first_host(node_list: str) -> str:
    """The first host of a SLURM node list in its compressed form: ``gpu[003-004,010],cpu1`` gives
    ``gpu003``, ``rack[1-2]-n[07-08]`` gives ``rack1-n07``, ``node5`` itself.

    Raises:
        ConfigError: an empty list or unbalanced brackets.
    """
    host, depth, rest = [], 0, node_list.strip()
    i = 0
    while i < len(rest):
        c = rest[i]
        if c == "," and depth == 0:
            break
        if c == "[":
            end = rest.find("]", i)
            if end < 0:
                raise ConfigError(f"SLURM node list {node_list!r} has an unclosed '['")
            first = re.split(r"[,-]", rest[i + 1 : end], maxsplit=1)[0]  # "003-004,010" -> "003"
            host.append(first)
            i = end + 1
            continue
        if c == "]":
            raise ConfigError(f"SLURM node list {node_list!r} has a ']' without its '['")
        host.append(c)
        i += 1
    name = "".join(host)
    if not name:
        raise ConfigError(f"SLURM node list {node_list!r} names no host")
    return name


def _job_id(environ: Mapping[str, str]) -> str:
    """The job id as submitit names it (``<array job>_<task>`` for an array task)."""
    array_job, array_task = environ.get("SLURM_ARRAY_JOB_ID"), environ.get("SLURM_ARRAY_TASK_ID")
    if array_job and array_task:
        return f"{array_job}_{array_task}"
    return environ.get("SLURM_JOB_ID", "")


def _port(environ: Mapping[str, str]) -> int:
    if environ.get("MASTER_PORT"):
        return _int(environ, "MASTER_PORT")
    # the same draw as submitit's: every task of the job computes the same port, and two jobs on one
    # node most likely differ
    return random.Random(_job_id(environ)).randint(*PORT_RANGE)


def _is_multi_task(environ: Mapping[str, str]) -> bool:
    """Whether this process is one of several tasks of a SLURM job step, not started by torchrun."""
    if environ.get("RANK", "") != "":
        return False  # torchrun (or the user) has set the ranks already
    return _int(environ, STEP_TASKS, 1) > 1


def _from_slurm(environ: Mapping[str, str]) -> dict[str, str]:
    """The ``torch.distributed`` variables read from SLURM's (no submitit)."""
    world = _int(environ, "SLURM_NTASKS")
    nodes = _int(environ, "SLURM_JOB_NUM_NODES", 1)
    node_list = environ.get("SLURM_STEP_NODELIST") or environ.get("SLURM_JOB_NODELIST") or ""
    if not node_list:
        raise ConfigError(
            "$SLURM_JOB_NODELIST is not set, but this process runs as one of several SLURM tasks"
        )
    return {
        "RANK": str(_int(environ, "SLURM_PROCID")),
        "WORLD_SIZE": str(world),
        "LOCAL_RANK": str(_int(environ, "SLURM_LOCALID")),
        "LOCAL_WORLD_SIZE": str(world // max(nodes, 1)),
        "MASTER_ADDR": first_host(node_list),
        "MASTER_PORT": str(_port(environ)),
    }


def _from_submitit() -> dict[str, str] | None:
    """submitit's values, inside a submitit job on SLURM (``None`` elsewhere or without submitit)."""
    if os.environ.get("SUBMITIT_EXECUTOR") != "slurm":
        return None
    try:
        from submitit.helpers import TorchDistributedEnvironment
    except ImportError:
        return None
    env = TorchDistributedEnvironment()
    return {
        "RANK": str(env.rank),
        "WORLD_SIZE": str(env.world_size),
        "LOCAL_RANK": str(env.local_rank),
        "LOCAL_WORLD_SIZE": str(env.local_world_size),
        "MASTER_ADDR": str(env.master_addr),
        "MASTER_PORT": str(env.master_port),
    }


def torch_env() -> dict[str, str] | None:
    """The ``torch.distributed`` variables this process should have, from SLURM's (``None`` when it
    is not one of several tasks of a SLURM job step, or ``torchrun`` started it). A ``MASTER_ADDR``
    already set is kept.

    Raises:
        ConfigError: a SLURM variable that is missing or not an integer, a rank outside the world.
    """
    environ = os.environ
    if not _is_multi_task(environ):
        return None
    values = _from_submitit() or _from_slurm(environ)
    rank, world = int(values["RANK"]), int(values["WORLD_SIZE"])
    if not 0 <= rank < world:
        raise ConfigError(f"SLURM task {rank} is not in [0, {world}) (SLURM_PROCID, SLURM_NTASKS)")
    if environ.get("MASTER_ADDR"):
        values["MASTER_ADDR"] = environ["MASTER_ADDR"]
    return values


def export_torch_env() -> dict[str, str] | None:
    """Set the ``torch.distributed`` variables of :func:`torch_env` in ``os.environ``, so the stages
    see a ``torchrun`` rank; returns them (``None``: nothing was set).

    Called by the CLI at the start of every stage command, in the process that runs the stage.
    """
    values = torch_env()
    if values is None:
        return None
    os.environ.update(values)
    visible = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    if visible and len(visible) < int(values["LOCAL_WORLD_SIZE"]):
        log.warning(
            "this SLURM task sees %d GPU(s) (CUDA_VISIBLE_DEVICES=%s) but each of the node's %s ranks takes "
            "cuda:LOCAL_RANK: request GPUs per node (--gpus-per-node / gpus_per_node), not per task",
            len(visible),
            os.environ["CUDA_VISIBLE_DEVICES"],
            values["LOCAL_WORLD_SIZE"],
        )
    log.info(
        "SLURM task: rank %s of %s (local rank %s), rendezvous at %s:%s",
        values["RANK"],
        values["WORLD_SIZE"],
        values["LOCAL_RANK"],
        values["MASTER_ADDR"],
        values["MASTER_PORT"],
    )
    return values
