"""Config safety (issue 13): every bad input is one clear line, exit code != 0, and nothing runs.

Targets outside distillrank are refused before their module is imported, numeric settings are
range-checked at composition, names never become paths outside the workspace, ids with
whitespace are refused at load with file:line, and an unexpected exception is one line too.
"""

from __future__ import annotations

import copy
import shutil
import sys
from pathlib import Path

import pytest
from conftest import tiny_overrides
from omegaconf import OmegaConf, open_dict
from typer.testing import CliRunner

from distillrank.builders import components
from distillrank.cli import app
from distillrank.errors import ConfigError, DataError
from distillrank.validation import check_config, compose, instantiate_checked

runner = CliRunner()

# (config groups, {key: value} set on the composed config, a fragment the one line must hold):
# each is checked as `distillrank run` checks a config before its first stage.
BAD_INPUTS = [
    # _target_ outside distillrank, at the top of a group, nested, or behind a distillrank prefix
    ((), {"teacher._target_": "torch.load"}, "outside distillrank"),
    ((), {"student._target_": "subprocess.run"}, "outside distillrank"),
    ((), {"teacher.extra": {"_target_": "builtins.exec", "source": "x"}}, "teacher.extra._target_"),
    ((), {"teacher._target_": "distillrank.training.loop.torch.load"}, "resolves to torch.serialization"),
    ((), {"teacher._target_": "distillrank.builders.components.OmegaConf.load"}, "outside distillrank"),
    ((), {"teacher._target_": "distillrank.no_such_module.X"}, "cannot be imported"),
    (("queries=generator",), {"queries.generator._target_": "os.system"}, "queries.generator._target_"),
    (("loss=kl_infonce",), {"loss.terms.kl.loss._target_": "torch.nn.KLDivLoss"}, "loss.terms.kl.loss._target_"),
    (("teacher=ensemble",), {"teacher.members.0._target_": "os.system"}, "teacher.members[0]._target_"),
    ((), {"evaluate.checkpoints": {"x": {"_target_": "os.system"}}}, "evaluate.checkpoints.x._target_"),
    # numeric settings out of range
    ((), {"train.lr": -1.0}, "train.lr=-1.0; expected a number > 0"),
    ((), {"train.lr": 0.0}, "train.lr=0.0; expected a number > 0"),
    ((), {"train.lr": float("nan")}, "train.lr=nan"),
    ((), {"train.lr": float("inf")}, "train.lr=inf"),
    ((), {"train.batch_size": 0}, "train.batch_size=0; expected an integer >= 1"),
    ((), {"train.grad_accum_steps": 0}, "train.grad_accum_steps=0"),
    ((), {"train.epochs": 0}, "train.epochs=0; expected an integer >= 1"),
    ((), {"train.max_steps": -1}, "train.max_steps=-1; expected an integer >= 1 or null"),
    ((), {"train.max_steps": 0}, "train.max_steps=0"),
    ((), {"train.warmup_ratio": 1.5}, "train.warmup_ratio=1.5"),
    ((), {"train.max_grad_norm": 0.0}, "train.max_grad_norm=0.0"),
    ((), {"train.log_every": 0}, "train.log_every=0"),
    ((), {"train.checkpoint_every": -5}, "train.checkpoint_every=-5"),
    ((), {"train.dev_depth": 0}, "train.dev_depth=0"),
    ((), {"mining.num_negatives": -1}, "mining.num_negatives=-1"),
    ((), {"mining.depth": 0}, "mining.depth=0; expected an integer >= 1"),
    ((), {"mining.b": 2.0}, "mining.b=2.0"),
    ((), {"mining.window_start": 120}, "mining window [120, 100] holds no rank"),
    ((), {"score.shard_size": 0}, "score.shard_size=0"),
    ((), {"score.denoise_relative": 2.0}, "score.denoise_relative=2.0"),
    ((), {"evaluate.top_k": 0}, "evaluate.top_k=0; expected an integer >= 1"),
    ((), {"evaluate.rerank_depth": 0}, "evaluate.rerank_depth=0"),
    ((), {"evaluate.alpha": 1.0}, "evaluate.alpha=1.0"),
    ((), {"evaluate.hybrid_alpha": 1.5}, "evaluate.hybrid_alpha=1.5"),
    ((), {"data.max_docs": 0}, "data.max_docs=0"),
    ((), {"hardware.num_threads": -2}, "hardware.num_threads=-2"),
    (("queries=ict",), {"queries.remove_prob": 1.5}, "queries.remove_prob=1.5"),
    (("queries=ict",), {"queries.span_words": [5, 2]}, "queries.span_words=[5, 2]"),
    (("queries=generator",), {"queries.generator.top_p": 0.0}, "queries.generator.top_p=0.0"),
    ((), {"teacher.batch_size": 0}, "teacher.batch_size=0"),
    ((), {"student.dropout": 1.0}, "student.dropout=1.0"),
    (("loss=infonce",), {"loss.temperature": 0.0}, "loss.temperature=0.0"),
    (("loss=kl_infonce",), {"loss.terms.kl.weight": -1.0}, "loss.terms.kl.weight=-1.0"),
    # more negatives per example than mining keeps per query
    ((), {"train.negatives_per_example": 9}, "set train.negatives_per_example<=8 or raise mining.num_negatives"),
    ((), {"mining.sampling": "all", "train.negatives_per_example": 99}, "train.negatives_per_example<=98"),
    # names that would become paths outside the workspace, the cache or the data root
    ((), {"experiment": "../../x"}, "experiment='../../x' could name a folder outside"),
    ((), {"experiment": "/tmp/x"}, "experiment='/tmp/x' could name a folder outside"),
    ((), {"experiment": "a//b"}, "experiment='a//b'"),
    ((), {"experiment": "a/./b"}, "experiment='a/./b'"),
    ((), {"experiment": "a\\..\\b"}, "backslash"),
    ((), {"experiment": ".hidden"}, "experiment='.hidden'"),
    ((), {"experiment": ""}, "experiment='' is empty"),
    ((), {"experiment": "_cache"}, "'_cache' is a folder the workspace uses itself"),
    ((), {"data.name": "../../x"}, "data.name='../../x' could name a folder outside"),
    ((), {"data.name": "/etc"}, "data.name='/etc'"),
    # a missing student model
    ((), {"student.model": None}, "student.model is required by distillrank.students.bi_encoder but is null"),
]

# Given on the command line of `distillrank run` (tiny fixtures): refused before any stage, cache
# or Hydra job folder exists.
CLI_INPUTS = [
    (["teacher._target_=torch.load", "+teacher.f=evil.pt", "+teacher.weights_only=false"], "outside distillrank"),
    (["queries=generator", "queries.generator._target_=os.system"], "queries.generator._target_"),
    (["train.lr=-1"], "train.lr=-1.0; expected a number > 0"),
    (["train.max_steps=-1"], "train.max_steps=-1"),
    (["train.negatives_per_example=9"], "set train.negatives_per_example<=4"),
    (["experiment=../../x"], "experiment='../../x'"),
    (["data.name=../../x"], "data.name='../../x'"),
    (["student.model=null"], "student.model is required"),
    (["-m", "train.lr=1e-3,-1"], "train.lr=-1.0"),  # one bad job of a sweep: no job runs
]
_BASES: dict[tuple[str, ...], object] = {}


def _one_clear_line(result, fragment: str) -> None:
    """Exit code != 0, no traceback, and the error as the last line (log lines of work done before
    a data error may precede it)."""
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output
    assert lines and lines[-1].startswith("error: "), result.output
    assert fragment in lines[-1], result.output


@pytest.mark.parametrize(("groups", "values", "fragment"), BAD_INPUTS, ids=[str(v) for _, v, _ in BAD_INPUTS])
def test_bad_config_is_one_clear_line(groups, values, fragment):
    if groups not in _BASES:
        _BASES[groups] = compose(list(groups))
    cfg = copy.deepcopy(_BASES[groups])
    with open_dict(cfg):
        for key, value in values.items():
            OmegaConf.update(cfg, key, value, force_add=True)
    with pytest.raises(ConfigError) as err:
        check_config(cfg)
    message = str(err.value)
    assert fragment in message
    assert "\n" not in message, message  # one problem, one line


@pytest.mark.parametrize(("overrides", "fragment"), CLI_INPUTS, ids=[" ".join(o) for o, _ in CLI_INPUTS])
def test_bad_input_on_the_command_line_runs_nothing(overrides, fragment, tmp_path, tiny_beir, tiny_bi_encoder):
    workspace = tmp_path / "runs"
    result = runner.invoke(app, ["run", *tiny_overrides(workspace, tiny_beir, tiny_bi_encoder), *overrides])
    _one_clear_line(result, fragment)
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
    assert not workspace.exists(), sorted(workspace.rglob("*"))  # no stage, no cache, no Hydra log


def test_several_problems_are_listed_one_a_line():
    result = runner.invoke(app, ["validate", "train.epochs=0", "evaluate.top_k=0", "~student.model"])
    assert result.exit_code == 2
    assert "train.epochs=0" in result.output and "evaluate.top_k=0" in result.output
    result = runner.invoke(app, ["validate", "~student.model"])
    assert result.exit_code == 2
    assert result.output.strip() == "error: invalid config: student.model is required by distillrank.students.bi_encoder"


@pytest.fixture
def planted_module(tmp_path, monkeypatch):
    """A module on sys.path that leaves a marker file when it is imported."""
    marker = tmp_path / "imported"
    (tmp_path / "h2_planted.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\ndef build(**kw):\n    return kw\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield marker
    sys.modules.pop("h2_planted", None)


def test_external_target_is_not_imported(make_cfg, planted_module):
    cfg = make_cfg("teacher._target_=h2_planted.build")
    with pytest.raises(ConfigError, match="outside distillrank"):
        check_config(cfg)
    with pytest.raises(ConfigError, match="outside distillrank"):  # library use: stages check too
        components.teacher(cfg)
    with pytest.raises(ConfigError, match="outside distillrank"):
        instantiate_checked(OmegaConf.create({"a": [{"_target_": "h2_planted.build"}]}), "x", False)
    assert not planted_module.exists()


def test_allow_external_targets_lets_a_trusted_target_build(make_cfg, planted_module):
    cfg = make_cfg("allow_external_targets=true", "+queries.generator={_target_: h2_planted.build, k: 1}")
    check_config(cfg)  # names, ranges and signatures still checked; the target is allowed
    assert instantiate_checked(cfg.queries.generator, "queries.generator", True) == {"k": 1}
    assert planted_module.exists()
    assert "allow_external_targets" in compose([]) and compose([]).allow_external_targets is False


def test_sweep_folders_and_ir_datasets_ids_are_valid_names(make_cfg):
    cfg = make_cfg("data.name=beir/scifact")
    cfg.experiment = "margin_mse/train.lr=0.001,train.batch_size=8"  # what a sweep job is named (cli._prepare)
    check_config(cfg)


def test_unexpected_exception_is_one_line_with_the_hint(tiny_args, monkeypatch):
    from distillrank import pipeline

    def boom(cfg):
        raise RuntimeError("disk on fire\nsecond line")

    monkeypatch.setattr(pipeline, "run", boom)
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    result = runner.invoke(app, ["run", *tiny_args])
    assert result.exit_code == 1
    assert result.output.strip() == "error: RuntimeError: disk on fire (set HYDRA_FULL_ERROR=1 for the traceback)"
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    result = runner.invoke(app, ["run", *tiny_args])
    assert result.exit_code == 1 and isinstance(result.exception, RuntimeError)


def _beir_copy(tiny_beir: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "beir"
    shutil.copytree(tiny_beir, folder)
    return folder


def _replace_line(path: Path, lineno: int, old: str, new: str) -> None:
    lines = path.read_text().splitlines(keepends=True)
    assert old in lines[lineno - 1]
    lines[lineno - 1] = lines[lineno - 1].replace(old, new, 1)
    path.write_text("".join(lines))


def _first_id(path: Path, lineno: int) -> str:
    import json

    return json.loads(path.read_text().splitlines()[lineno - 1])["_id"]


@pytest.mark.parametrize("where", ["corpus.jsonl", "queries.jsonl", "qrels/train.tsv"])
def test_id_with_whitespace_is_refused_at_load(where, tiny_beir, tiny_bi_encoder, tmp_path):
    folder = _beir_copy(tiny_beir, tmp_path)
    path = folder / where
    if where.endswith(".jsonl"):
        old = _first_id(path, 3)
        _replace_line(path, 3, f'"{old}"', f'"{old} x"')
        line = 3
    else:
        line = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if "\t" in text and i > 1)
        qid = path.read_text().splitlines()[line - 1].split("\t")[0]
        _replace_line(path, line, qid + "\t", qid + " x\t")
    workspace = tmp_path / "runs"
    result = runner.invoke(app, ["mine", *tiny_overrides(workspace, folder, tiny_bi_encoder)])
    _one_clear_line(result, f"{path}, line {line}:")
    assert "contains whitespace" in result.output and result.exit_code == 2
    assert not list(workspace.glob("*/mine/manifest.json"))


def test_ids_with_whitespace_from_ir_datasets_name_the_item():
    from distillrank.data.beir import id_problem

    assert id_problem("doc\t1", "doc_id") and id_problem("d 1", "query id") and id_problem("d1", "doc_id") is None
    with pytest.raises(DataError, match=r"qrels.tsv, line 2: query id 'q 1' contains whitespace"):
        from distillrank.data.beir import _qrel_from_columns

        _qrel_from_columns(["q 1", "d1", "1"], Path("qrels.tsv"), 2)


def test_every_numeric_setting_of_the_schema_has_a_range():
    import dataclasses

    from distillrank import config
    from distillrank.validation import RANGES

    numeric = [
        f"{section}.{f.name}"
        for section, cls in {
            "data": config.DataConfig,
            "mining": config.MiningConfig,
            "hardware": config.HardwareConfig,
            "train": config.TrainConfig,
            "queries": config.QueriesConfig,
            "score": config.ScoreConfig,
            "evaluate": config.EvaluateConfig,
        }.items()
        for f in dataclasses.fields(cls)
        if any(t in str(f.type) for t in ("int", "float")) and not str(f.type).startswith(("list", "dict"))
    ]
    assert len(numeric) >= 50 and sorted(numeric) == sorted(RANGES)
