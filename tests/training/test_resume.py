"""Checkpoints resume exactly: a killed run continued from its last checkpoint ends with the weights
(and the log) of an uninterrupted run, with dropout on or off; the train stage resumes too."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from distillrank.losses import MarginMSELoss
from distillrank.models.bi_encoder import BiEncoder
from distillrank.runtime import Runtime
from distillrank.stages import mine, score, train
from distillrank.training import loop
from distillrank.training.loop import LAST, RUN_FILE, train_student
from distillrank.workspace import read_manifest, stage_dir

from .test_loop import PASSAGES, QUERIES, _pools, _student

# 6 queries x 3 negatives, n=1: 18 examples per epoch, batch 3 -> 6 steps per epoch, 12 in all.
CFG = {
    "epochs": 2,
    "max_steps": None,
    "batch_size": 3,
    "grad_accum_steps": 1,
    "negatives_per_example": 1,
    "lr": 1e-3,
    "weight_decay": 0.01,
    "warmup_ratio": 0.2,
    "scheduler": "linear",
    "max_grad_norm": 1.0,
    "log_every": 1,
    "checkpoint_every": 2,
}


class KillAfter(nn.Module):
    """Margin-MSE that raises KeyboardInterrupt on call ``n + 1`` (one call per step here)."""

    def __init__(self, n: int | None) -> None:
        super().__init__()
        self.n, self.calls, self.inner = n, 0, MarginMSELoss()

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.n is not None and self.calls > self.n:
            raise KeyboardInterrupt(f"killed at call {self.calls}")
        return self.inner(student, teacher)


def _run(model: Path, work: Path, dropout: float, kill_after: int | None = None, **overrides) -> BiEncoder:
    cfg = OmegaConf.create({**CFG, **overrides})
    torch.manual_seed(0)  # each call starts like a fresh process would
    student = _student(model, dropout)
    train_student(
        student,
        KillAfter(kill_after),
        _pools(),
        QUERIES,
        lambda ids: [PASSAGES[d] for d in ids],
        cfg,
        Runtime(),
        seed=3,
        log_path=work / "log.jsonl",
        checkpoint_dir=work / "checkpoints",
    )
    return student


def _log(work: Path) -> list[dict]:
    return [json.loads(line) for line in (work / "log.jsonl").read_text().splitlines()]


def _assert_same_weights(a: BiEncoder, b: BiEncoder) -> None:
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        torch.testing.assert_close(x, y, atol=1e-7, rtol=0, msg=name)


@pytest.mark.parametrize("dropout", [0.0, 0.2])
@pytest.mark.parametrize(("kill_after", "resumed_from"), [(5, 4), (7, 6), (9, 8)])
def test_killed_run_resumes_to_the_uninterrupted_weights(
    tiny_bi_encoder, tmp_path, caplog, dropout, kill_after, resumed_from
):
    whole = _run(tiny_bi_encoder, tmp_path / "whole", dropout)
    untrained = _student(tiny_bi_encoder, dropout)
    assert any(not torch.equal(a, b) for a, b in zip(whole.parameters(), untrained.parameters(), strict=True))

    work = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        _run(tiny_bi_encoder, work, dropout, kill_after=kill_after)
    assert json.loads((work / "checkpoints" / LAST / RUN_FILE).read_text())["step"] == resumed_from
    assert _log(work)[-1]["step"] == kill_after  # lines after the checkpoint are dropped on resume

    with caplog.at_level(logging.INFO, logger=loop.__name__):
        resumed = _run(tiny_bi_encoder, work, dropout)
    assert f"train: resuming from step {resumed_from}" in caplog.text
    _assert_same_weights(whole, resumed)
    assert _log(work) == _log(tmp_path / "whole")


def test_resume_with_accumulation_and_max_steps(tiny_bi_encoder, tmp_path):
    overrides = {"batch_size": 2, "grad_accum_steps": 2, "max_steps": 8, "checkpoint_every": 3}
    whole = _run(tiny_bi_encoder, tmp_path / "whole", 0.1, **overrides)
    work = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        _run(tiny_bi_encoder, work, 0.1, kill_after=2 * 7, **overrides)  # two loss calls per step
    _assert_same_weights(whole, _run(tiny_bi_encoder, work, 0.1, **overrides))
    assert _log(work) == _log(tmp_path / "whole")


def test_checkpoint_of_another_config_or_incomplete_is_ignored(tiny_bi_encoder, tmp_path, caplog):
    work = tmp_path / "w"
    with pytest.raises(KeyboardInterrupt):
        _run(tiny_bi_encoder, work, 0.0, kill_after=5)
    fresh = _run(tiny_bi_encoder, tmp_path / "fresh", 0.0, lr=5e-4)
    with caplog.at_level(logging.INFO, logger=loop.__name__):
        other = _run(tiny_bi_encoder, work, 0.0, lr=5e-4)  # another lr: starts afresh
    assert "resuming" not in caplog.text
    _assert_same_weights(fresh, other)

    with pytest.raises(KeyboardInterrupt):
        _run(tiny_bi_encoder, work, 0.0, kill_after=5)
    (work / "checkpoints" / LAST / RUN_FILE).unlink()  # as if killed while writing it
    caplog.clear()
    with caplog.at_level(logging.INFO, logger=loop.__name__):
        _run(tiny_bi_encoder, work, 0.0)
    assert "resuming" not in caplog.text


def test_no_checkpoint_trigger_writes_nothing(tiny_bi_encoder, tmp_path):
    _run(tiny_bi_encoder, tmp_path, 0.0, checkpoint_every=0)  # 10 minutes by default: not reached
    assert not (tmp_path / "checkpoints").exists()
    _run(tiny_bi_encoder, tmp_path, 0.0, checkpoint_every=0, checkpoint_minutes=0)
    assert not (tmp_path / "checkpoints").exists()


def test_train_stage_resumes_a_killed_run(make_cfg, monkeypatch, caplog):
    cfg = make_cfg("train.checkpoint_every=1")
    assert train.stage_key(cfg) == train.stage_key(make_cfg())
    assert train.stage_key(cfg) != train.stage_key(make_cfg("train.lr=5e-4"))
    mine.run(cfg)
    score.run(cfg)
    folder = stage_dir(cfg, "train")

    real = loop.student_scores
    calls = {"n": 0}

    def dies_on_third_call(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "student_scores", dies_on_third_call)
    with pytest.raises(KeyboardInterrupt):
        train.run(cfg)
    assert read_manifest(folder) is None
    assert not (folder / train.MODEL).exists()
    assert (folder / train.CHECKPOINTS / LAST / RUN_FILE).is_file()

    monkeypatch.setattr(loop, "student_scores", real)
    with caplog.at_level(logging.INFO):
        manifest = train.run(cfg)
    assert "train: resuming from step 2" in caplog.text
    assert (folder / train.MODEL / "modules.json").is_file()
    assert not (folder / train.CHECKPOINTS).exists()
    assert manifest.key == train.stage_key(cfg)
    steps = [json.loads(line)["step"] for line in (folder / train.LOG).read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == manifest.counts["steps"]


@pytest.mark.parametrize("kind", ["cross_encoder", "colbert"])
def test_other_student_kinds_resume_exactly(tiny_bi_encoder, tmp_path, kind):
    from distillrank.models.colbert import ColBERTModel
    from distillrank.models.cross_encoder import CrossEncoderModel

    def build():
        torch.manual_seed(0)
        if kind == "cross_encoder":
            model = CrossEncoderModel.from_backbone(str(tiny_bi_encoder), num_layers=1, max_length=64)
        else:
            model = ColBERTModel.from_backbone(str(tiny_bi_encoder), dim=16, keep_layers=1, seed=0)
        for module in model.modules():
            if isinstance(module, nn.Dropout):
                module.p = 0.1
        return model

    def run(work: Path, kill_after: int | None):
        model = build()
        cfg = OmegaConf.create({**CFG, "epochs": 1})
        train_student(
            model,
            KillAfter(kill_after),
            _pools(),
            QUERIES,
            lambda ids: [PASSAGES[d] for d in ids],
            cfg,
            Runtime(),
            seed=3,
            log_path=work / "log.jsonl",
            checkpoint_dir=work / "checkpoints",
        )
        return model

    whole = run(tmp_path / "whole", None)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "killed", 3)
    resumed = run(tmp_path / "killed", None)
    _assert_same_weights(whole, resumed)
