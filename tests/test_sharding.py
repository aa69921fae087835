"""A worker's share of a job, from the variables torchrun and SLURM arrays set."""

from __future__ import annotations

import numpy as np
import pytest

from distillrank.errors import ConfigError
from distillrank.sharding import ARRAY_ENV, WHOLE, Share, barrier, from_env, join_group

ARRAY = {ARRAY_ENV: "1"}


def test_no_launcher_variables_mean_one_process_doing_everything():
    share = from_env({})
    assert share == WHOLE and share.whole and share.assembles
    assert share.owns(np.arange(5)).all()


def test_torchrun_ranks_share_the_blocks_and_rank_0_assembles():
    shares = [from_env({"RANK": str(r), "WORLD_SIZE": "3", "LOCAL_RANK": str(r)}) for r in range(3)]
    assert [(s.index, s.count, s.group, s.local_rank) for s in shares] == [(r, 3, 3, r) for r in range(3)]
    assert [s.assembles for s in shares] == [True, False, False]
    blocks = np.arange(10)
    owned = np.stack([s.owns(blocks) for s in shares])
    assert (owned.sum(axis=0) == 1).all()  # every block is one worker's
    assert blocks[owned[1]].tolist() == [1, 4, 7]


def test_slurm_array_tasks_are_numbered_from_the_arrays_first_id_and_never_assemble():
    env = {"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_COUNT": "4", **ARRAY}
    share = from_env(env)
    assert (share.index, share.count, share.group) == (2, 4, 1)
    assert not from_env({**env, "SLURM_ARRAY_TASK_ID": "1"}).assembles  # task 0 too: a later run assembles


def test_array_variables_without_the_opt_in_are_a_sweep_job_doing_its_whole_work():
    """The submitit launcher runs a Hydra sweep as a SLURM array: each task is a job of its own."""
    assert from_env({"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "4"}) == WHOLE


def test_torchrun_inside_each_array_task_multiplies_the_workers():
    env = {"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "2", "RANK": "1", "WORLD_SIZE": "4", **ARRAY}
    share = from_env(env)
    assert (share.index, share.count, share.group) == (5, 8, 4)
    assert not from_env({**env, "SLURM_ARRAY_TASK_ID": "0", "RANK": "0"}).assembles


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"WORLD_SIZE": "two"}, "not an integer"),
        ({"RANK": "2", "WORLD_SIZE": "2"}, r"RANK=2 is not in \[0, WORLD_SIZE=2\)"),
        ({"SLURM_ARRAY_TASK_ID": "0", **ARRAY}, r"SLURM_ARRAY_TASK_COUNT is not set"),
        ({"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_COUNT": "3", **ARRAY}, "numbered consecutively"),
        (
            {
                "SLURM_ARRAY_TASK_ID": "2",
                "SLURM_ARRAY_TASK_COUNT": "2",
                "SLURM_ARRAY_TASK_STEP": "2",
                **ARRAY,
            },
            "consecutively",
        ),
        (ARRAY, "not a SLURM array task"),
        ({"DISTILLRANK_SHARD_ARRAY": "yes"}, "expected 1"),
    ],
)
def test_bad_variables_fail_in_one_line(env, message):
    with pytest.raises(ConfigError, match=message):
        from_env(env)


def test_a_share_outside_its_count_is_refused():
    with pytest.raises(ConfigError, match="not a valid share"):
        Share(index=2, count=2)


def test_without_a_group_joining_and_waiting_do_nothing():
    import torch

    share = from_env({"SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_COUNT": "2", **ARRAY})
    assert join_group(share, torch.device("cpu")) == torch.device("cpu")
    barrier(share)  # returns at once: no torch.distributed group
