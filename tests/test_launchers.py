"""Sweep launchers: conf/hydra/launcher/{local,slurm,slurm_ddp}.yaml compose, and a 2-job joblib sweep runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from typer.testing import CliRunner

from distillrank.cli import app
from distillrank.config import conf_dir, register_configs
from distillrank.validation import compose, config_groups
from distillrank.workspace import read_manifest

pytest.importorskip("hydra_plugins.hydra_joblib_launcher", reason="pip install 'distillrank[sweep]'")
pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="pip install 'distillrank[sweep]'")


def _hydra_config(*overrides: str):
    """The composed config with its ``hydra`` node (what a launcher receives)."""
    register_configs()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(str(conf_dir()), version_base="1.3"):
            return hydra_compose("config", overrides=list(overrides), return_hydra_config=True)
    finally:
        GlobalHydra.instance().clear()


def test_local_launcher_is_joblib_with_jobs_from_the_environment(monkeypatch):
    monkeypatch.delenv("DISTILLRANK_JOBS", raising=False)
    launcher = _hydra_config("hydra/launcher=local", "+exp=margin_mse").hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"
    assert launcher.n_jobs == 2 and launcher.prefer == "processes"
    monkeypatch.setenv("DISTILLRANK_JOBS", "5")
    assert _hydra_config("hydra/launcher=local").hydra.launcher.n_jobs == 5
    assert _hydra_config("hydra/launcher=local", "hydra.launcher.n_jobs=3").hydra.launcher.n_jobs == 3


def test_slurm_launcher_is_submitit_with_its_placeholders(monkeypatch):
    monkeypatch.setenv("DISTILLRANK_SLURM_PARTITION", "gpu")
    monkeypatch.delenv("DISTILLRANK_SLURM_ACCOUNT", raising=False)
    cfg = _hydra_config(
        "hydra/launcher=slurm", "hydra.launcher.timeout_min=30", "hydra.launcher.gpus_per_node=2"
    )
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert (launcher.partition, launcher.account, launcher.timeout_min, launcher.gpus_per_node) == (
        "gpu",
        None,
        30,
        2,
    )
    assert (launcher.cpus_per_task, launcher.mem_gb, launcher.nodes, launcher.tasks_per_node) == (8, 32, 1, 1)
    assert launcher.submitit_folder.endswith("/.submitit/%j") and list(launcher.setup) == []


def test_slurm_ddp_launcher_runs_one_task_per_gpu_on_every_node(monkeypatch):
    monkeypatch.delenv("DISTILLRANK_SLURM_PARTITION", raising=False)
    launcher = _hydra_config("hydra/launcher=slurm_ddp", "+exp=margin_mse").hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert (launcher.nodes, launcher.gpus_per_node, launcher.tasks_per_node, launcher.partition) == (
        1,
        8,
        8,
        None,
    )
    launcher = _hydra_config(
        "hydra/launcher=slurm_ddp", "hydra.launcher.nodes=2", "hydra.launcher.gpus_per_node=4"
    ).hydra.launcher
    assert (launcher.nodes, launcher.gpus_per_node, launcher.tasks_per_node) == (2, 4, 4)  # tasks follow GPUs
    assert (launcher.cpus_per_task, launcher.mem_gb, launcher.timeout_min, launcher.array_parallelism) == (
        8,
        256,
        720,
        1,
    )
    assert launcher.submitit_folder.endswith("/.submitit/%j") and list(launcher.setup) == []


def test_slurm_ddp_launcher_gives_sbatch_two_nodes_and_one_srun_step(tmp_path, monkeypatch):
    """The launcher's parameters, handed to submitit's executor as the Hydra plugin hands them
    (``SlurmLauncher.launch``: its generic keys as they are, the others prefixed ``slurm_``), make an sbatch script of 2 nodes
    with 4 tasks and 4 GPUs each, whose command is one srun step over every task."""
    import submitit
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from omegaconf import OmegaConf

    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "srun").write_text("#!/bin/sh\nexit 1\n")  # submitit only checks that srun exists
    (fake / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")
    params = OmegaConf.to_container(
        _hydra_config(
            "hydra/launcher=slurm_ddp", "hydra.launcher.nodes=2", "hydra.launcher.gpus_per_node=4"
        ).hydra.launcher,
        resolve=True,
    )
    generic = set(OmegaConf.structured(BaseQueueConf).keys())
    init = {"_target_", "submitit_folder", "max_num_timeout"}  # the plugin passes these to the constructor
    executor = submitit.AutoExecutor(
        folder=tmp_path / "%j", cluster="slurm", slurm_max_num_timeout=params["max_num_timeout"]
    )
    executor.update_parameters(
        **{k if k in generic else f"slurm_{k}": v for k, v in params.items() if k not in init}
    )
    script = executor._executor._make_submission_file_text("python -m submitit.core._submit x", "uid")
    lines = script.splitlines()
    for line in (
        "#SBATCH --nodes=2",
        "#SBATCH --ntasks-per-node=4",
        "#SBATCH --gpus-per-node=4",
        "#SBATCH --mem=256GB",
    ):
        assert line in lines, script
    assert "export SUBMITIT_EXECUTOR=slurm" in lines
    assert sum(line.startswith("srun ") for line in lines) == 1, (
        script
    )  # every task: one step (SLURM_STEP_NUM_TASKS=8)


def test_launcher_override_passes_distillrank_compose_and_validate():
    cfg = compose(["hydra/launcher=local", "+exp=margin_mse"])  # the dry composition of every command
    assert "hydra" not in cfg and cfg.experiment == "margin_mse"
    assert "hydra" not in config_groups()  # launchers are not a pipeline group
    result = CliRunner().invoke(app, ["validate", "hydra/launcher=slurm", "+exp=listwise_kl"])
    assert result.exit_code == 0, result.output


def test_two_job_sweep_with_the_local_launcher_gives_each_job_its_folder(tmp_path, tiny_beir):
    """``distillrank mine -m ... hydra/launcher=local``: two jobs in joblib worker processes."""
    ws = tmp_path / "runs"
    cli = Path(sys.executable).with_name("distillrank")
    args = [
        str(cli),
        "mine",
        "-m",
        f"workspace={ws}",
        "data=beir",
        f"data.path={tiny_beir}",
        "data.name=tiny",
        "teacher.model=unused",
        "student.model=unused",
        "mining.depth=20",
        "mining.window_end=20",
        "mining.num_negatives=2,3",
        "hardware=cpu",
        "hydra/launcher=local",
    ]
    env = {**os.environ, "DISTILLRANK_JOBS": "2", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Joblib.Parallel(n_jobs=2" in done.stdout + done.stderr  # the joblib launcher ran the jobs
    for n in (2, 3):
        manifest = read_manifest(ws / "default" / f"mining.num_negatives={n}" / "mine")
        assert manifest is not None and manifest.config["mining"]["num_negatives"] == n
    assert not (ws / "default" / "mine").exists()  # no job wrote into the parent experiment
