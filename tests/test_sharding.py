"""A worker's share of a job, from the variables torchrun and SLURM arrays set."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from distillrank.errors import ConfigError
from distillrank.sharding import (
    ARRAY_ENV,
    WHOLE,
    Share,
    barrier,
    broadcast,
    from_env,
    gather,
    join_group,
    total,
    wait_until,
)

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


def test_a_torchrun_rank_from_the_environment_its_part_and_its_device(monkeypatch):
    """What the corpus encoding and DDP training read: the rank in the group, its contiguous part,
    its GPU; ``os.environ`` by default (moved from the former ``evaluation.ranks.Ranks``)."""
    import torch

    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", ARRAY_ENV):
        monkeypatch.delenv(key, raising=False)
    assert from_env() == WHOLE and not WHOLE.grouped and WHOLE.main
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    share = from_env()
    assert (share.rank, share.group, share.local_rank) == (3, 4, 1) and share == Share.rank_of(3, 4, 1)
    assert not share.main and not share.grouped  # no group joined
    assert list(share.span(10)) == [7, 8, 9] and list(Share.rank_of(0, 4).span(10)) == [0, 1]
    assert share.split(list("abcdefghij")) == ["h", "i", "j"] and WHOLE.split([1, 2]) == [1, 2]
    assert share.split_sizes(10) == [2, 3, 2, 3] and sum(share.split_sizes(3)) == 3
    assert share.device(torch.device("cuda")) == torch.device("cuda", 1)
    assert share.device(torch.device("cuda", 0)) == torch.device("cuda", 0)  # an explicit index is kept
    assert share.device(torch.device("cpu")) == torch.device("cpu")
    assert WHOLE.device(torch.device("cuda")) == torch.device("cuda")
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(ConfigError, match=r"RANK=4 is not in \[0, WORLD_SIZE=4\)"):
        from_env()


def test_the_rank_in_a_group_inside_an_array_task():
    env = {"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "2", "RANK": "1", "WORLD_SIZE": "4", **ARRAY}
    share = from_env(env)
    assert (share.index, share.rank, share.group) == (5, 1, 4)  # the corpus is split among the 4 ranks
    assert list(share.span(8)) == [2, 3]


def test_without_a_group_the_collectives_are_the_identity(tmp_path):
    import torch

    share = Share.rank_of(1, 2)  # a rank whose group was never joined
    assert broadcast(share, "mine") == "mine" and gather(share, 3) == [3]
    assert total(share, 2.5, torch.device("cpu")) == 2.5
    flag = tmp_path / "flag"
    calls = []

    def ready() -> bool:  # the file appears on the second look
        calls.append(1)
        if len(calls) == 2:
            flag.touch()
        return flag.exists()

    wait_until(ready, "the flag")
    assert len(calls) == 2


def _reducing_rank(rank: int, world: int, port: int, out) -> None:
    import os

    import numpy as np
    import torch.distributed as dist

    from distillrank.sharding import reduce_array

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        share = Share.rank_of(rank, world)
        mine = np.array([rank + 0.5, -rank, 7.0]), np.array([rank, 10 - rank], np.int64)
        got = {
            "fsum": reduce_array(share, mine[0]).tolist(),
            "fmax": reduce_array(share, mine[0], "max").tolist(),
            "imin": reduce_array(share, mine[1], "min").tolist(),
            "dtypes": [str(reduce_array(share, m).dtype) for m in mine],
            "untouched": mine[0].tolist(),
        }
        (out / f"rank{rank}.json").write_text(__import__("json").dumps(got))
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(sys.platform != "linux", reason="gloo on a Linux CPU")
def test_reduce_array_sums_and_takes_extremes_of_floats_and_integers(tmp_path):
    import json
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_reducing_rank, args=(2, port, tmp_path), nprocs=2, join=True)
    for rank in range(2):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert got["fsum"] == [2.0, -1.0, 14.0] and got["fmax"] == [1.5, 0.0, 7.0]
        assert got["imin"] == [0, 9] and got["dtypes"] == ["float64", "int64"]
        assert got["untouched"] == [rank + 0.5, -rank, 7.0]  # the caller's array is not reduced in place
    with pytest.raises(ValueError, match="expected one of"):
        from distillrank.sharding import reduce_array

        reduce_array(Share(), np.zeros(2), "mean")
