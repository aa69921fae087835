"""Dev evaluation: re-ranking metrics, early stopping, best weights, the dev set of the stage, trackers."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from omegaconf import OmegaConf

from distillrank.errors import ConfigError
from distillrank.losses import MarginMSELoss
from distillrank.runtime import Runtime
from distillrank.stages import mine, score, train
from distillrank.students import as_student
from distillrank.students.base import Student
from distillrank.training import loop
from distillrank.training.dev import DevSet, carve_dev_pools, evaluate_dev, held_out_count
from distillrank.training.loop import train_student
from distillrank.training.trackers import check_logger, make_tracker
from distillrank.workspace import stage_dir

from .test_loop import PASSAGES, QUERIES, _pools, _student


class _Lookup(Student):
    """Scores (query, passage) pairs from a table; for metric tests."""

    kind = "lookup"

    def __init__(self, table: dict[tuple[str, str], float]) -> None:
        super().__init__(torch.nn.Linear(1, 1))
        self.table = table

    def score_pairs(self, pairs, runtime, *, batch_size=None, progress=False):
        return np.array([self.table[pair] for pair in zip(pairs.query_texts(), pairs.passage_texts(), strict=True)],
                        np.float32)


def test_evaluate_dev_reranks_the_candidates():
    dev = DevSet(
        queries={"q1": "Q1", "q2": "Q2"},
        candidates={"q1": ["a", "b", "c"], "q2": ["c", "d"]},
        qrels={"q1": {"b": 1}, "q2": {"d": 1, "x": 1}},  # x was never a candidate
    )
    table = {("Q1", "A"): 3.0, ("Q1", "B"): 2.0, ("Q1", "C"): 1.0, ("Q2", "C"): 0.0, ("Q2", "D"): 5.0}
    metrics = evaluate_dev(_Lookup(table), dev, lambda ids: [i.upper() for i in ids], ["nDCG@10", "RR@10"])
    q1 = 1 / np.log2(3)  # b at rank 2
    q2 = 1.0 / (1 + 1 / np.log2(3))  # d at rank 1 of two judged positives (ideal: ranks 1 and 2)
    assert metrics["nDCG@10"] == pytest.approx((q1 + q2) / 2, rel=1e-6)
    assert metrics["RR@10"] == pytest.approx((0.5 + 1.0) / 2)


def test_carved_dev_pools_are_seeded_and_disjoint():
    pools = _pools()
    train_a, dev_a = carve_dev_pools(pools, 2, seed=7)
    train_b, dev_b = carve_dev_pools(pools, 2, seed=7)
    assert [p.qid for p in dev_a] == [p.qid for p in dev_b] and len(dev_a) == 2
    assert {p.qid for p in train_a} | {p.qid for p in dev_a} == {p.qid for p in pools}
    assert not {p.qid for p in train_a} & {p.qid for p in dev_a}
    assert carve_dev_pools(pools, 0, seed=7) == (pools, [])


CFG = {
    "epochs": 2,
    "max_steps": None,
    "batch_size": 3,
    "grad_accum_steps": 1,
    "negatives_per_example": 1,
    "lr": 1e-3,
    "weight_decay": 0.0,
    "warmup_ratio": 0.0,
    "scheduler": "linear",
    "max_grad_norm": 1.0,
    "log_every": 1,
    "eval_every": 1,
    "dev_measure": "nDCG@10",
    "early_stopping_patience": 2,
}
DEV = DevSet({"q0": QUERIES["q0"]}, {"q0": ["d0", "d1"]}, {"q0": {"d0": 1}})


class _StopAfter(MarginMSELoss):
    """Margin-MSE that interrupts the run on call ``n + 1`` (the student keeps step n's weights)."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n, self.calls = n, 0

    def forward(self, student, teacher):
        self.calls += 1
        if self.calls > self.n:
            raise KeyboardInterrupt
        return super().forward(student, teacher)


def _train(model, tmp_path, loss=None, **overrides):
    student = _student(model)
    result = train_student(
        student,
        loss or MarginMSELoss(),
        _pools(),
        QUERIES,
        lambda ids: [PASSAGES[d] for d in ids],
        OmegaConf.create({**CFG, **overrides}),
        Runtime(),
        seed=3,
        log_path=tmp_path / "log.jsonl",
        dev=DEV,
    )
    return student, result


def test_early_stopping_keeps_the_best_weights(tiny_bi_encoder, tmp_path, monkeypatch):
    scripted = iter([0.5, 0.7, 0.6, 0.65, 0.9])
    monkeypatch.setattr(loop, "evaluate_dev", lambda *a, **k: {"nDCG@10": next(scripted)})
    student, result = _train(tiny_bi_encoder, tmp_path / "es")
    assert result.stopped_early and result.steps == 4  # two evaluations without improvement after step 2
    assert result.best_step == 2 and result.best_dev == {"nDCG@10": 0.7}
    assert [h["nDCG@10"] for h in result.dev_history] == [0.5, 0.7, 0.6, 0.65]
    log = [json.loads(line) for line in (tmp_path / "es" / "log.jsonl").read_text().splitlines()]
    assert [r["dev"]["nDCG@10"] for r in log] == [0.5, 0.7, 0.6, 0.65] and log[0]["loss"] > 0

    two_steps = _student(tiny_bi_encoder)
    with pytest.raises(KeyboardInterrupt):  # same schedule, no dev set, stopped after step 2
        train_student(
            two_steps,
            _StopAfter(2),
            _pools(),
            QUERIES,
            lambda ids: [PASSAGES[d] for d in ids],
            OmegaConf.create(CFG),
            Runtime(),
            seed=3,
            log_path=tmp_path / "two.jsonl",
        )
    for (name, a), b in zip(student.state_dict().items(), two_steps.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, msg=name)  # the exported weights are those of step 2


def test_real_dev_evaluation_in_the_loop(tiny_bi_encoder, tmp_path):
    student, result = _train(tiny_bi_encoder, tmp_path, max_steps=3, eval_every=2, early_stopping_patience=0)
    assert [h["step"] for h in result.dev_history] == [2, 3]  # every 2 steps and the last one
    # one dev query whose relevant passage ranks first or second of two: nDCG@10 is 1 or 1 / log2(3)
    possible = (pytest.approx(1.0), pytest.approx(1 / np.log2(3)))
    assert all(h["nDCG@10"] in possible for h in result.dev_history)
    assert result.best_dev["nDCG@10"] == max(h["nDCG@10"] for h in result.dev_history)
    # the student holds the best evaluation's weights: evaluating it again gives the best value
    again = evaluate_dev(as_student(student), DEV, lambda ids: [PASSAGES[d] for d in ids], ["nDCG@10"])
    assert again["nDCG@10"] == pytest.approx(result.best_dev["nDCG@10"])


def test_trackers(tmp_path):
    tracker = make_tracker("tensorboard", tmp_path / "tb")
    tracker.log({"train/loss": 1.0}, 1)
    tracker.close()
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    with pytest.raises(ConfigError, match="train.logger"):
        check_logger("mlflow")
    try:
        import wandb  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match="wandb package is not installed"):
            check_logger("wandb")


def test_stage_with_carved_dev_queries_and_tensorboard(make_cfg):
    cfg = make_cfg(
        "train.dev_queries=4", "train.eval_every=2", "train.max_steps=4", "train.logger=tensorboard"
    )
    assert train.stage_key(cfg) != train.stage_key(make_cfg("train.max_steps=4"))
    assert train.stage_key(make_cfg("train.logger=tensorboard")) == train.stage_key(make_cfg())
    mine.run(cfg)
    score.run(cfg)
    manifest = train.run(cfg)
    counts = manifest.counts
    assert counts["dev_queries"] == 4 and counts["best_step"] in (2, 4)
    assert counts["queries"] + 4 + counts["queries_dropped"] >= 4
    folder = stage_dir(cfg, "train")
    log = [json.loads(line) for line in (folder / train.LOG).read_text().splitlines()]
    assert [r["step"] for r in log if "dev" in r] == [2, 4]
    assert list((folder / train.TENSORBOARD).glob("events.out.tfevents.*"))
    assert "best_dev" in (folder / train.MODEL / "README.md").read_text()


def test_stage_dev_split_and_config_errors(make_cfg):
    cfg = make_cfg("train.dev_split=test", "train.dev_depth=5", "train.eval_every=2", "train.max_steps=2")
    mine.run(cfg)
    score.run(cfg)
    assert train.run(cfg).counts["dev_queries"] > 0
    with pytest.raises(ConfigError, match="needs a dev set"):
        train.run(make_cfg("train.eval_every=2", "train.max_steps=1"))
    with pytest.raises(ConfigError, match="set one of"):
        train.run(make_cfg("train.dev_split=test", "train.dev_queries=2", "train.max_steps=1"))
    with pytest.raises(ConfigError, match="set one of"):
        train.run(make_cfg("train.dev_fraction=0.2", "train.dev_queries=2", "train.max_steps=1"))


def test_dev_fraction_sets_aside_that_share_as_dev_queries_would(make_cfg):
    """``train.dev_fraction=F`` holds out round(F × training queries), at least 1: the very queries
    ``train.dev_queries`` of that count would."""
    assert [held_out_count(16, f) for f in (0.0, 0.01, 0.1, 0.25, 0.5)] == [0, 1, 2, 4, 8]
    by_fraction = make_cfg("train.dev_fraction=0.25", "train.max_steps=1")
    mine.run(by_fraction)
    score.run(by_fraction)
    counts = train.run(by_fraction).counts
    held = (stage_dir(by_fraction, train.STAGE) / train.DEV_QUERIES).read_text()
    assert counts["dev_queries"] == 4 and counts["queries"] == 12
    by_count = make_cfg("train.dev_queries=4", "train.max_steps=1")
    assert train.stage_key(by_count) != train.stage_key(by_fraction)
    train.run(by_count)
    assert (stage_dir(by_count, train.STAGE) / train.DEV_QUERIES).read_text() == held


def test_dev_candidates_are_those_of_the_dev_queries_only_in_table_order(tmp_path):
    """The carved dev queries' candidates come from a filtered read: every row of those queries, in
    table order, and no Python string for any other query's rows."""
    qids = ["q1", "q2", "q1", "q3", "q2", "q1", "q4"]
    docids = ["a", "b", "c", "a", "d", "e", "f"]
    table = pa.table({"qid": qids, "docid": docids, "teacher": np.arange(7, dtype=np.float32)})
    path = tmp_path / "scores.parquet"
    pq.write_table(table, path, row_group_size=3)  # a query's rows in several row groups
    want = {"q1": ["a", "c", "e"], "q2": ["b", "d"]}
    assert train._candidates(path, pa.array(["q2", "q1", "q9"])) == want
    assert train._candidates(table, pa.array(["q2", "q1", "q9"])) == want
