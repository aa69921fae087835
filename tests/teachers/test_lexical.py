"""The BM25 teacher: its scores are BM25 retrieval's, passages outside the index score the same way,
and it works as an ensemble member through the score stage and as the evaluated teacher."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from distillrank.builders import components
from distillrank.errors import ConfigError
from distillrank.mining.bm25 import BM25Index
from distillrank.ranking import Pairs
from distillrank.runtime import Runtime
from distillrank.stages import evaluate, mine, score, train
from distillrank.teachers.cache import ScoreCache
from distillrank.teachers.lexical import BM25Teacher
from distillrank.validation import compose
from distillrank.workspace import cache_dir, stage_dir

CPU = torch.device("cpu")


@pytest.fixture
def with_teacher(tiny_args):
    """``with_teacher("teacher=bm25", ...)``: the tiny config with another teacher group."""

    def make(*extra: str):
        return compose([*(a for a in tiny_args if not a.startswith("teacher.")), *extra])

    return make


@pytest.fixture
def bound(with_teacher):
    cfg = with_teacher("teacher=bm25")
    teacher = components.teacher(cfg)
    return cfg, teacher, components.collection(cfg)


def test_scores_equal_bm25_retrieval_scores(bound):
    cfg, teacher, coll = bound
    queries = [coll.queries[i]["text"] for i in range(3)]
    index = components.bm25_index(cfg, coll)
    rows, expected = index.search(queries, 5, progress=False)
    doc_ids = coll.doc_ids()
    pairs = [(qi, int(r)) for qi in range(len(queries)) for r in rows[qi] if r >= 0]
    assert pairs, "the tiny queries match no passage"
    docids = sorted({doc_ids[r] for _, r in pairs})
    col = {d: i for i, d in enumerate(docids)}
    pair_q = np.array([q for q, _ in pairs])
    pair_p = np.array([col[doc_ids[r]] for _, r in pairs])
    passages = coll.passage_texts([coll.doc_row(d) for d in docids])
    scored = Pairs(queries, passages, pair_q, pair_p, docids=docids, collection=coll, cache_root=cache_dir(cfg))
    got = teacher.score_pairs(scored, Runtime(), progress=False)
    want = np.array([expected[q][list(rows[q]).index(r)] for q, r in pairs], dtype=np.float32)
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_passages_outside_the_index_score_as_if_they_were_in_it(bound):
    cfg, teacher, coll = bound
    queries = [coll.queries[i]["text"] for i in range(4)]
    docids = coll.doc_ids()[:6]
    passages = coll.passage_texts(range(6))
    pair_q = np.repeat(np.arange(4), 6)
    pair_p = np.tile(np.arange(6), 4)
    corpus = {"collection": coll, "cache_root": cache_dir(cfg)}
    indexed = teacher.score_pairs(Pairs(queries, passages, pair_q, pair_p, docids=docids, **corpus), Runtime())
    unknown = [f"{d}#rewritten" for d in docids]  # same texts, ids the index does not know
    from_text = teacher.score_pairs(Pairs(queries, passages, pair_q, pair_p, docids=unknown, **corpus), Runtime())
    assert indexed.max() > 0
    np.testing.assert_allclose(from_text, indexed, rtol=1e-4, atol=1e-5)


def test_index_cached_before_its_statistics_gets_them(make_cfg, tmp_path):
    cfg = make_cfg()
    coll = components.collection(cfg)
    index = BM25Index.build_or_load(coll, tmp_path, progress=False)
    stats = next(tmp_path.glob("bm25/*/distillrank_stats.json"))
    stats.unlink()  # as an index built by an earlier version
    again = BM25Index.build_or_load(coll, tmp_path, progress=False)
    assert again.avg_doc_len == pytest.approx(index.avg_doc_len)
    assert json.loads(stats.read_text())["avg_doc_len"] == pytest.approx(index.avg_doc_len)


def test_pairs_without_their_collection_are_a_config_error():
    with pytest.raises(ConfigError, match="scores over a collection"):
        BM25Teacher().score_pairs(Pairs(["q"], ["p"], np.array([0]), np.array([0]), docids=["d"]), Runtime(), progress=False)


def test_fingerprint_follows_parameters_not_precision():
    assert BM25Teacher().fingerprint() == BM25Teacher().fingerprint(Runtime(precision="int8"))
    assert BM25Teacher(k1=1.2).fingerprint() != BM25Teacher().fingerprint()


def test_ensemble_with_a_bm25_member_scores_and_trains_through_the_stages(with_teacher):
    members = (
        "teacher.members=[{_target_: distillrank.teachers.BiEncoderTeacher, model: ${student.model}, "
        "passage_max_length: 64}, {_target_: distillrank.teachers.BM25Teacher}]"
    )
    cfg = with_teacher("teacher=ensemble", members, "train.max_steps=2")
    mine.run(cfg)
    manifest = score.run(cfg)
    table = pq.read_table(stage_dir(cfg, "score") / score.OUTPUT).to_pandas()
    assert manifest.counts["members"] == 2
    assert np.isfinite(table["teacher"]).all() and table["teacher"].std() > 0
    # the BM25 member's cache holds exactly BM25's scores of the candidates
    bm25 = BM25Teacher()
    bm25_cache = ScoreCache.for_teacher(cache_dir(cfg), bm25.fingerprint(), components.collection(cfg).fingerprint).load()
    assert len(bm25_cache) == len(table)
    train.run(cfg)  # the model card names the ensemble (an ensemble config has no teacher.model)
    card = (stage_dir(cfg, "train") / train.MODEL / "README.md").read_text()
    assert "from the teacher `ensemble of " in card and "BM25 (k1=0.9, b=0.4)" in card


def test_bm25_teacher_evaluated_as_a_reranker_equals_bm25(with_teacher):
    cfg = with_teacher("teacher=bm25", "evaluate.systems=[bm25,teacher]", "evaluate.latency_queries=0")
    manifest = evaluate.run(cfg)
    metrics = json.loads((stage_dir(cfg, "evaluate") / "metrics.json").read_text())
    assert manifest is not None
    for measure, value in metrics["bm25"]["metrics"].items():
        assert metrics["teacher"]["metrics"][measure] == pytest.approx(value, abs=1e-9), measure
    assert (cache_dir(cfg) / "bm25").is_dir()
