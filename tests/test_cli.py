"""The command line, through Typer's runner: commands, Hydra overrides, multirun, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import tiny_overrides
from typer.testing import CliRunner

from distillrank.cli import app
from distillrank.config import conf_dir
from distillrank.validation import config_groups

runner = CliRunner()
EXPERIMENTS = sorted(p.stem for p in (conf_dir() / "exp").glob("*.yaml"))


def invoke(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


def test_help_lists_every_command():
    result = invoke("--help")
    assert result.exit_code == 0
    for command in ("mine", "score", "train", "evaluate", "run", "validate", "configs"):
        assert command in result.output


def test_configs_lists_groups_and_options():
    result = invoke("configs")
    assert result.exit_code == 0
    for group in ("data", "teacher", "student", "loss", "mining", "hardware", "exp"):
        assert f"{group}:" in result.output
    assert "cross_encoder" in result.output and "cuda" in result.output
    assert config_groups()["exp"] == EXPERIMENTS


@pytest.mark.parametrize("exp", EXPERIMENTS)
def test_every_experiment_validates(exp):
    result = invoke("validate", f"+exp={exp}")
    assert result.exit_code == 0, result.output
    assert f"experiment '{exp}'" in result.output


def test_cfg_job_prints_the_composed_config():
    result = invoke("train", "+exp=margin_mse", "train.lr=3e-5", "--cfg", "job")
    assert result.exit_code == 0, result.output
    assert "experiment: margin_mse" in result.output
    assert "lr: 3.0e-05" in result.output


def test_misspelt_key_names_the_valid_keys():
    result = runner.invoke(app, ["train", "train.lrr=3e-5"])
    assert result.exit_code == 2
    assert "train.lrr" in result.output and "valid keys:" in result.output and "lr" in result.output


def test_misspelt_value_names_the_valid_values():
    """A value outside its enumeration fails at compose, before any stage, in one line."""
    result = runner.invoke(app, ["validate", "+exp=margin_mse", "train.scheduler=cosin"])
    assert result.exit_code == 2, result.output
    assert result.output.strip() == "error: train.scheduler='cosin' is not a valid value; valid values: linear, cosine"


def test_misspelt_target_argument_names_the_valid_keys():
    result = runner.invoke(app, ["validate", "teacher.modle=x"])
    assert result.exit_code == 2
    assert "model" in result.output and "valid keys" in result.output


def test_unknown_option_names_the_available_ones():
    result = runner.invoke(app, ["mine", "teacher=nope"])
    assert result.exit_code == 2
    assert "Available options in 'teacher'" in result.output and "cross_encoder" in result.output


def test_missing_upstream_stage_is_a_message_not_a_traceback(tmp_path, tiny_beir, tiny_bi_encoder):
    args = tiny_overrides(tmp_path / "runs", tiny_beir, tiny_bi_encoder)
    result = runner.invoke(app, ["train", *args])
    assert result.exit_code == 2
    assert "distillrank score" in result.output and "Traceback" not in result.output


def test_stage_commands_and_multirun(tmp_path, tiny_beir, tiny_bi_encoder):
    args = tiny_overrides(tmp_path / "runs", tiny_beir, tiny_bi_encoder)
    for stage in ("mine", "score"):
        result = invoke(stage, "+exp=margin_mse", *args)
        assert result.exit_code == 0, result.output
    exp_dir = tmp_path / "runs" / "margin_mse"
    assert (exp_dir / "score" / "manifest.json").is_file()
    assert (exp_dir / "logs" / "score").is_dir()  # Hydra's log folder lives in the workspace

    result = invoke("train", "-m", "+exp=margin_mse", *args, "train.max_steps=2", "train.lr=1e-3,2e-3")
    assert result.exit_code == 0, result.output
    trained = sorted(p.parent.parent.name for p in exp_dir.glob("*/train/manifest.json"))
    assert trained == ["train.lr=0.001", "train.lr=0.002"]
    # each sweep job used the parent experiment's scores instead of re-mining
    assert not list(exp_dir.glob("train.lr=*/score"))

    result = invoke(
        "run", "+exp=margin_mse", *args, "evaluate.systems=[bm25,student]", "evaluate.baseline=bm25"
    )
    assert result.exit_code == 0, result.output
    assert "| student |" in result.output
    metrics = json.loads((exp_dir / "evaluate" / "metrics.json").read_text())
    assert set(metrics) == {"bm25", "student", "hybrid_rrf", "hybrid"}  # + the student fused with BM25


def test_conf_is_found_inside_the_package_layout():
    folder = conf_dir()
    assert (folder / "config.yaml").is_file()
    assert Path(folder, "exp", "margin_mse.yaml").is_file()
