"""The queries stage: synthetic queries reach mine / score / train; the consistency filter; caching."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from distillrank import pipeline
from distillrank.builders import components
from distillrank.builders.training import passages, train_queries
from distillrank.errors import ConfigError
from distillrank.stages import mine, queries, score
from distillrank.workspace import stage_dir


def _table(cfg):
    return pq.read_table(stage_dir(cfg, "queries") / queries.OUTPUT).to_pandas()


def test_ict_queries_train_end_to_end_without_a_train_split(make_cfg):
    cfg = make_cfg("queries=ict", "queries.max_docs=20", "queries.remove_prob=1.0", "data.train_split=null", "train.max_steps=2",
                   "evaluate.systems=[student]", "evaluate.baseline=null", "evaluate.latency_queries=0")
    out = pipeline.run(cfg)
    assert list(out) == ["queries", "mine", "score", "train", "evaluate"]
    made = out["queries"].counts
    assert made["source_docs"] == 20 and made["queries_kept"] == made["queries_made"] > 0

    table = _table(cfg)
    assert table["qid"].str.startswith("syn-").all()
    training = dict(train_queries(cfg))
    assert set(training) == set(table["qid"])
    candidates = pq.read_table(stage_dir(cfg, "mine") / mine.OUTPUT).to_pandas()
    positives = candidates[candidates["label"] > 0]
    # each query's positive is its rewritten source passage; the source itself is never a negative
    rewritten = dict(zip(table["qid"], table["positive"], strict=True))
    source = dict(zip(table["qid"], table["source"], strict=True))
    assert (positives["docid"] == positives["qid"].map(rewritten)).all()
    negatives = candidates[candidates["label"] <= 0]
    assert not (negatives["docid"] == negatives["qid"].map(source)).any()
    # a rewritten positive is its source passage less the query sentence / span
    lookup = passages(cfg)
    for qid, pos in rewritten.items():
        if pos != source[qid]:
            (text,), (original,) = lookup([pos]), lookup([source[qid]])
            assert len(text.split()) == len(original.split()) - len(training[qid].split())
    assert out["score"].counts["pairs"] == len(candidates)


def test_consistency_filter_keeps_queries_whose_positive_the_teacher_ranks_high(make_cfg):
    cfg = make_cfg("queries=ict", "queries.max_docs=15", "queries.filter_top_k=2", "queries.filter_depth=5",
                   "data.train_split=null")
    m = queries.run(cfg)
    table = _table(cfg)
    assert (table["positive_rank"].between(1, 6)).all()
    assert (table["kept"] == (table["positive_rank"] <= 2)).all()
    assert m.counts["queries_kept"] == int(table["kept"].sum())
    assert set(dict(train_queries(cfg))) == set(table.loc[table["kept"], "qid"])
    # the filter's teacher scores went to the teacher's cache: scoring the positives again costs nothing
    mine.run(cfg)
    scored = score.run(cfg)
    assert scored.counts["pairs_reused"] >= m.counts["queries_kept"]

    again = queries.run(cfg)
    assert again.key == m.key  # cached
    looser = make_cfg("queries=ict", "queries.max_docs=15", "queries.filter_top_k=6", "queries.filter_depth=5",
                      "data.train_split=null")
    assert queries.stage_key(looser) != m.key
    assert queries.run(looser).counts["queries_kept"] == len(table)


def test_title_queries_and_their_stage_key(make_cfg):
    cfg = make_cfg("queries=title", "data.train_split=null")
    m = queries.run(cfg)
    table = _table(cfg)
    assert m.counts["queries_kept"] == len(table) > 0
    coll = components.collection(cfg)
    title = dict(zip(coll.corpus["_id"], coll.corpus["title"], strict=True))
    assert (table["text"] == table["source"].map(title)).all()
    assert mine.stage_key(cfg) != mine.stage_key(make_cfg())  # synthetic queries change mining


def test_generator_queries_with_a_tiny_seq2seq_model(make_cfg, tiny_t5):
    cfg = make_cfg("queries=generator", f"queries.generator.model={tiny_t5}", "queries.max_docs=4",
                   "queries.per_doc=2", "queries.filter_top_k=null", "queries.generator.max_new_tokens=6",
                   "data.train_split=null")
    m = queries.run(cfg)
    table = _table(cfg)
    assert 0 < m.counts["queries_made"] <= 8
    assert (table["positive"] == table["source"]).all()  # generated queries keep the source as positive
    assert m.counts["rewritten_positives"] == 0
    assert queries.run(cfg).key == m.key


def test_bad_settings_fail_as_config_errors(make_cfg):
    with pytest.raises(ConfigError, match="queries.method"):
        queries.stage_key(make_cfg("queries.method=magic"))
    with pytest.raises(ConfigError, match="filter_top_k=30 exceeds"):
        queries.stage_key(make_cfg("queries=ict", "queries.filter_top_k=30", "queries.filter_depth=5"))
    with pytest.raises(ConfigError, match="no synthetic queries"):
        queries.run(make_cfg())
    with pytest.raises(ConfigError, match="made no query"):
        queries.run(make_cfg("queries=ict", "queries.min_words=100000", "data.train_split=null"))
