"""One of several SLURM tasks becomes a torchrun rank (distillrank/launch.py): the variables it
exports from fake SLURM ones, what it leaves alone, and two ``srun``-like tasks of
``python -m distillrank score`` that shard the pairs and equal one process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from distillrank import launch
from distillrank.errors import ConfigError
from distillrank.stages import mine, score
from distillrank.validation import compose
from distillrank.workspace import cache_dir, read_manifest, stage_dir

TORCH_VARS = launch.EXPORTED


def _slurm_task(
    procid: int, *, nodes: int = 2, per_node: int = 2, nodelist: str = "gpu[07-08]"
) -> dict[str, str]:
    """The variables srun gives task ``procid`` of a step of ``nodes`` x ``per_node`` tasks."""
    return {
        "SLURM_JOB_ID": "4242",
        "SLURM_NTASKS": str(nodes * per_node),
        "SLURM_STEP_NUM_TASKS": str(nodes * per_node),
        "SLURM_JOB_NUM_NODES": str(nodes),
        "SLURM_NODEID": str(procid // per_node),
        "SLURM_PROCID": str(procid),
        "SLURM_LOCALID": str(procid % per_node),
        "SLURM_JOB_NODELIST": nodelist,
    }


@pytest.fixture
def clean_env():
    """No torch.distributed, SLURM or submitit variable of the test runner leaks in, and none that a
    test sets (export_torch_env writes os.environ itself) leaks out: the whole environment is
    restored afterwards."""
    saved = dict(os.environ)
    for name in list(os.environ):
        if name in TORCH_VARS or name.startswith(("SLURM_", "SUBMITIT_")):
            del os.environ[name]

    def set_env(values: dict[str, str]) -> None:
        os.environ.update(values)

    yield set_env
    os.environ.clear()
    os.environ.update(saved)


def _exported() -> dict[str, str]:
    return {name: os.environ[name] for name in TORCH_VARS if name in os.environ}


@pytest.mark.parametrize("submitit_job", [False, True], ids=["srun", "submitit"])
def test_two_nodes_of_two_tasks_become_four_ranks(clean_env, submitit_job):
    if submitit_job:
        pytest.importorskip("submitit")
    seen = []
    for procid in range(4):
        for name in TORCH_VARS:
            os.environ.pop(name, None)  # the previous task's
        clean_env({**_slurm_task(procid), **({"SUBMITIT_EXECUTOR": "slurm"} if submitit_job else {})})
        assert launch.export_torch_env() == _exported()
        seen.append(_exported())
    assert [(e["RANK"], e["LOCAL_RANK"]) for e in seen] == [("0", "0"), ("1", "1"), ("2", "0"), ("3", "1")]
    assert {(e["WORLD_SIZE"], e["LOCAL_WORLD_SIZE"], e["MASTER_ADDR"], e["MASTER_PORT"]) for e in seen} == {
        ("4", "2", "gpu07", seen[0]["MASTER_PORT"])
    }  # every task meets at the first node, on one port
    assert 20000 <= int(seen[0]["MASTER_PORT"]) <= 60000


def test_the_fallback_gives_what_submitit_gives(clean_env):
    pytest.importorskip("submitit")
    for procid in (0, 3):
        clean_env(_slurm_task(procid, nodelist="rack[1-2]-n[03-04,09],cpu1"))
        ours = launch.torch_env()
        clean_env({"SUBMITIT_EXECUTOR": "slurm"})
        assert launch.torch_env() == ours
        os.environ.pop("SUBMITIT_EXECUTOR")
    assert ours["MASTER_ADDR"] == "rack1-n03"


def test_a_master_address_and_port_already_set_are_kept(clean_env):
    clean_env({**_slurm_task(1), "MASTER_ADDR": "10.0.0.5", "MASTER_PORT": "29511"})
    launch.export_torch_env()
    assert (os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"], os.environ["RANK"]) == (
        "10.0.0.5",
        "29511",
        "1",
    )


@pytest.mark.parametrize(
    "case",
    ["torchrun", "one task", "batch script", "no slurm"],
)
def test_nothing_is_exported_under_torchrun_for_one_task_or_outside_a_step(clean_env, case):
    env = {
        "torchrun": {**_slurm_task(3), "RANK": "5", "WORLD_SIZE": "16"},  # srun torchrun: torchrun's ranks
        "one task": _slurm_task(0, nodes=1, per_node=1),  # a sweep job on hydra/launcher=slurm
        # sbatch --ntasks=4 running distillrank without srun: the batch step is one process
        "batch script": {k: v for k, v in _slurm_task(0).items() if k != launch.STEP_TASKS},
        "no slurm": {},
    }[case]
    clean_env(env)
    before = dict(os.environ)
    assert launch.export_torch_env() is None
    assert dict(os.environ) == before


@pytest.mark.parametrize(
    ("nodes", "first"),
    [
        ("node5", "node5"),
        ("gpu[003-004,010],cpu1", "gpu003"),
        ("a1,a2", "a1"),
        ("gpu[10,2-3]", "gpu10"),
        ("rack[1-2]-n[07-08]", "rack1-n07"),
        ("  host-a.cluster  ", "host-a.cluster"),
    ],
)
def test_first_host_of_a_compressed_node_list(nodes, first):
    assert launch.first_host(nodes) == first


@pytest.mark.parametrize("nodes", ["gpu[1-2", "gpu1]", "", "[]"])
def test_a_malformed_node_list_is_a_one_line_error(nodes):
    with pytest.raises(ConfigError, match="node list"):
        launch.first_host(nodes)


def test_bad_slurm_variables_are_one_line_errors(clean_env):
    clean_env({**_slurm_task(0), "SLURM_PROCID": "x"})
    with pytest.raises(ConfigError, match=r"SLURM_PROCID='x' is not an integer"):
        launch.torch_env()
    clean_env({**_slurm_task(0), "SLURM_PROCID": "4"})
    with pytest.raises(ConfigError, match=r"SLURM task 4 is not in \[0, 4\)"):
        launch.torch_env()
    clean_env(_slurm_task(0))
    os.environ.pop("SLURM_LOCALID")
    with pytest.raises(ConfigError, match=r"\$SLURM_LOCALID is not set"):
        launch.torch_env()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(sys.platform != "linux", reason="gloo on a Linux CPU")
def test_two_srun_tasks_of_the_command_shard_the_score_stage_and_equal_one_process(
    clean_env, tiny_args, tiny_cross_encoder, tmp_path
):
    """``srun --ntasks=2 python -m distillrank score ...`` (the SLURM variables faked): the command
    exports the ranks, the two tasks join a gloo group, each scores its blocks and rank 0 writes
    scores.parquet, byte-identical to one process's. A cross-encoder teacher, as in the torchrun test
    (tests/stages/test_sharded_score.py): ranks of a bi-encoder teacher would each build its corpus
    embeddings entry."""
    teacher = ["teacher=cross_encoder", f"teacher.model={tiny_cross_encoder}", "teacher.max_length=96"]
    overrides = [*tiny_args, "score.shard_size=16", *teacher]  # 6 blocks of 16 pairs, 3 per task
    single = compose([*overrides, f"workspace={tmp_path / 'single'}"])
    mine.run(single)
    score.run(single)
    cfg = compose(overrides)
    mine.run(cfg)
    port = _free_port()
    base = {
        k: v
        for k, v in os.environ.items()
        if k not in TORCH_VARS and not k.startswith(("SLURM_", "SUBMITIT_"))
    }
    tasks = []
    for procid in (0, 1):
        env = {
            **base,
            **_slurm_task(procid, nodes=1, per_node=2, nodelist="localhost"),
            "MASTER_PORT": str(port),
            "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
        }
        args = [sys.executable, "-m", "distillrank", "score", *overrides]
        tasks.append(
            subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        )
    try:
        outputs = [task.communicate(timeout=300)[0].decode(errors="replace") for task in tasks]
    finally:
        for task in tasks:  # a rank left waiting for a crashed peer
            if task.poll() is None:
                task.kill()
                task.wait()
    assert [task.returncode for task in tasks] == [0, 0], "\n".join(o[-3000:] for o in outputs)
    names = [p.name for p in sorted((cache_dir(cfg) / "scores").glob("*/shard-*.parquet"))]
    assert (
        sum("-w0." in n for n in names) == 3 and sum("-w1." in n for n in names) == 3
    )  # sharded by the ranks
    manifest = read_manifest(stage_dir(cfg, "score"))
    # the ranks scored every pair between them (summed), then wrote the output from the cache
    assert manifest is not None and manifest.counts["pairs_scored"] == manifest.counts["pairs"]
    assert (stage_dir(cfg, "score") / score.OUTPUT).read_bytes() == (
        stage_dir(single, "score") / score.OUTPUT
    ).read_bytes()
