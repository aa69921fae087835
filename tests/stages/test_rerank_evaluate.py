"""Evaluation by re-ranking: non-bi-encoder teachers and students re-rank BM25 or a dense first stage."""

from __future__ import annotations

import json

import pytest

from distillrank import keys, pipeline
from distillrank.builders import components, evaluation
from distillrank.errors import ConfigError
from distillrank.stages import evaluate
from distillrank.validation import compose
from distillrank.workspace import stage_dir


def _run_lists(cfg, system: str) -> dict[str, list[str]]:
    lists: dict[str, list[str]] = {}
    for line in (stage_dir(cfg, "evaluate") / system / "run.trec").read_text().splitlines():
        qid, _, docid, *_ = line.split()
        lists.setdefault(qid, []).append(docid)
    return lists


def _bm25_top(cfg, depth: int) -> dict[str, set[str]]:
    coll = components.collection(cfg)
    queries = [(q, t) for q, t in coll.split_queries(cfg.data.test_split) if q in coll.qrels[cfg.data.test_split]]
    rows, _ = components.bm25_index(cfg, coll).search([t for _, t in queries], depth, progress=False)
    ids = coll.doc_ids()
    return {q: {ids[r] for r in rows[i] if r >= 0} for i, (q, _) in enumerate(queries)}


def _cross_encoder_student(tiny_args: list[str], *extra: str):
    kept = [a for a in tiny_args if not a.startswith(("student.passage_max_length=", "student.num_layers="))]
    return compose([*kept, "student=cross_encoder", "student.max_length=64", "student.num_layers=1",
                    "train.max_steps=2", "evaluate.latency_queries=2", *extra])


def test_cross_encoder_student_re_ranks_bm25_and_keeps_its_candidates(tiny_args):
    cfg = _cross_encoder_student(tiny_args, "evaluate.rerank_depth=7",
                                 "evaluate.systems=[bm25,student_init,student]", "evaluate.baseline=bm25")
    assert evaluation.reranks(cfg, "student") and evaluation.reranks(cfg, "student_init")
    assert not evaluation.reranks(cfg, "bm25")
    pipeline.run(cfg)
    first = _bm25_top(cfg, 7)
    for system in ("student_init", "student"):
        lists = _run_lists(cfg, system)
        assert set(lists) == set(first)
        for qid, docs in lists.items():
            assert set(docs) == first[qid]  # BM25's top 7, re-ordered
    metrics = json.loads((stage_dir(cfg, "evaluate") / "metrics.json").read_text())
    assert metrics["student"]["parameters"] > 0 and metrics["student"]["latency"]["queries"] == 2
    assert metrics["student"]["disk_mb"] > 0
    assert "significance" in metrics["student"]


def test_dense_first_stage_and_its_key(tiny_args, tiny_bi_encoder):
    bm25_cfg = _cross_encoder_student(tiny_args, "evaluate.systems=[student_init]", "evaluate.baseline=null",
                                      "evaluate.rerank_depth=5")
    dense_cfg = _cross_encoder_student(tiny_args, "evaluate.systems=[student_init]", "evaluate.baseline=null",
                                       "evaluate.rerank_depth=5", "evaluate.first_stage=dense",
                                       f"evaluate.first_stage_model={tiny_bi_encoder}")
    assert keys.system_key(bm25_cfg, "student_init") != keys.system_key(dense_cfg, "student_init")
    evaluate.run(dense_cfg)
    lists = _run_lists(dense_cfg, "student_init")
    assert all(len(docs) == 5 for docs in lists.values())  # dense search always fills its depth


def test_colbert_teacher_is_evaluated_by_re_ranking(tiny_args, tiny_colbert):
    args = [a for a in tiny_args if not a.startswith("teacher.")]
    cfg = compose([*args, "teacher=colbert", f"teacher.model={tiny_colbert}", "evaluate.systems=[bm25,teacher]",
                   "evaluate.rerank_depth=4", "evaluate.latency_queries=0"])
    assert evaluation.reranks(cfg, "teacher")
    evaluate.run(cfg)
    first = _bm25_top(cfg, 4)
    assert {q: set(d) for q, d in _run_lists(cfg, "teacher").items()} == first


def test_ensemble_teacher_with_bm25_is_evaluated_by_re_ranking(tiny_args, tiny_bi_encoder):
    """The demo's teacher kind (a bi-encoder + BM25 ensemble, which cannot retrieve): it re-ranks
    BM25's candidates and is timed per query, its disk size that of no single folder."""
    args = [a for a in tiny_args if not a.startswith("teacher.")]
    member = f"{{_target_: distillrank.teachers.BiEncoderTeacher, model: '{tiny_bi_encoder}'}}"
    cfg = compose([*args, "teacher=ensemble_bm25", f"teacher.members=[{member},{{_target_: distillrank.teachers.BM25Teacher}}]",
                   "evaluate.systems=[bm25,teacher]", "evaluate.rerank_depth=4", "evaluate.latency_queries=2"])
    assert evaluation.reranks(cfg, "teacher")
    evaluate.run(cfg)
    assert {q: set(d) for q, d in _run_lists(cfg, "teacher").items()} == _bm25_top(cfg, 4)
    teacher = json.loads((stage_dir(cfg, "evaluate") / "metrics.json").read_text())["teacher"]
    assert teacher["latency"]["queries"] == 2 and teacher["passages_per_s"] > 0


def test_rerank_mode_makes_bi_encoders_re_rank_too(make_cfg):
    cfg = make_cfg("evaluate.mode=rerank", "evaluate.rerank_depth=6", "evaluate.systems=[bm25,teacher]",
                   "evaluate.latency_queries=0")
    assert evaluation.reranks(cfg, "teacher")
    evaluate.run(cfg)
    first = _bm25_top(cfg, 6)
    for qid, docs in _run_lists(cfg, "teacher").items():
        assert set(docs) == first[qid]
    with pytest.raises(ConfigError, match="evaluate.mode"):
        evaluation.reranks(make_cfg("evaluate.mode=sometimes"), "teacher")
    with pytest.raises(ConfigError, match="first_stage"):
        evaluate.run(make_cfg("evaluate.mode=rerank", "evaluate.first_stage=splade", "experiment=x"))
