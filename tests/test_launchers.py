"""Sweep launchers: conf/hydra/launcher/{local,slurm}.yaml compose, and a 2-job joblib sweep runs."""

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
    cfg = _hydra_config("hydra/launcher=slurm", "hydra.launcher.timeout_min=30", "hydra.launcher.gpus_per_node=2")
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert (launcher.partition, launcher.account, launcher.timeout_min, launcher.gpus_per_node) == (
        "gpu", None, 30, 2
    )
    assert (launcher.cpus_per_task, launcher.mem_gb, launcher.nodes, launcher.tasks_per_node) == (8, 32, 1, 1)
    assert launcher.submitit_folder.endswith("/.submitit/%j") and list(launcher.setup) == []


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
        str(cli), "mine", "-m", f"workspace={ws}", "data=beir", f"data.path={tiny_beir}", "data.name=tiny",
        "teacher.model=unused", "student.model=unused", "mining.depth=20", "mining.window_end=20",
        "mining.num_negatives=2,3", "hydra/launcher=local",
    ]
    env = {**os.environ, "DISTILLRANK_JOBS": "2", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Joblib.Parallel(n_jobs=2" in done.stdout + done.stderr  # the joblib launcher ran the jobs
    for n in (2, 3):
        manifest = read_manifest(ws / "default" / f"mining.num_negatives={n}" / "mine")
        assert manifest is not None and manifest.config["mining"]["num_negatives"] == n
    assert not (ws / "default" / "mine").exists()  # no job wrote into the parent experiment
