"""De-noising in the score stage: the ``dropped`` column, the manifest counts, the key, the cache."""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from distillrank.errors import ConfigError
from distillrank.stages import mine, score, train
from distillrank.training.batching import query_pools
from distillrank.workspace import stage_dir


def _recount(cfg, relative: float) -> tuple[int, int]:
    """Negatives dropped and queries left without negatives, recomputed from scores.parquet."""
    df = pq.read_table(stage_dir(cfg, "score") / score.OUTPUT).to_pandas()
    teacher = df["teacher"].astype(np.float64)
    top = teacher.groupby(df["qid"]).transform("max")
    want = (df["label"] <= 0) & (top > 0) & (teacher > relative * top)
    assert (df["dropped"] == want).all()
    assert not df.loc[df["label"] > 0, "dropped"].any()
    neg = df[df["label"] <= 0]
    kept = neg[~neg["dropped"]].groupby("qid").size().reindex(neg["qid"].unique(), fill_value=0)
    return int(want.sum()), int((kept == 0).sum())


def test_score_stage_reports_dropped_negatives_and_reuses_every_teacher_score(make_cfg, caplog):
    plain = make_cfg()
    mine.run(plain)
    m0 = score.run(plain)
    assert m0.counts["negatives_dropped"] == 0
    assert not any(pq.read_table(stage_dir(plain, "score") / score.OUTPUT)["dropped"].to_pylist())

    cfg = make_cfg("score.denoise_relative=0.6")
    assert score.stage_key(cfg) != score.stage_key(plain)
    with caplog.at_level(logging.INFO, logger="distillrank.stages.score"):
        m1 = score.run(cfg)
    assert m1.key == score.stage_key(cfg) and m1.key != m0.key
    assert m1.counts["pairs_reused"] == m1.counts["pairs"] and m1.counts["pairs_scored"] == 0
    dropped, without = _recount(cfg, 0.6)
    assert m1.counts["negatives_dropped"] == dropped > 0
    assert f"de-noising (margin=None, relative=0.6) dropped {dropped} of" in caplog.text
    assert m1.counts["negatives_dropped_by_relative"] == dropped
    assert m1.counts["queries_without_negatives_after_denoise"] == without
    assert pq.read_table(stage_dir(cfg, "score") / score.OUTPUT).num_rows == m0.counts["pairs"]

    changed = make_cfg("score.denoise_relative=0.9", "score.denoise_margin=0.0")
    assert score.stage_key(changed) not in {m0.key, m1.key}
    m2 = score.run(changed)
    assert m2.counts["pairs_reused"] == m2.counts["pairs"] and m2.counts["pairs_scored"] == 0
    assert m2.config["score"]["denoise_margin"] == 0.0


def test_training_skips_dropped_negatives(make_cfg):
    # the tiny random teacher scores every candidate within ~10% of its query's top (0.6 drops every
    # negative): a fraction of 0.95 drops some negatives and keeps others
    cfg = make_cfg("score.denoise_relative=0.95", "train.max_steps=1")
    mine.run(cfg)
    score.run(cfg)
    table = pq.read_table(stage_dir(cfg, "score") / score.OUTPUT)
    pools, lost = query_pools(table)
    dropped = {
        (q, d)
        for q, d, x in zip(*(table[c].to_pylist() for c in ("qid", "docid", "dropped")), strict=True)
        if x
    }
    assert 0 < len(dropped) < sum(1 for label in table["label"].to_pylist() if label <= 0)
    assert pools and not any((p.qid, d) in dropped for p in pools for d, _ in p.negatives)
    assert lost == score.run(cfg).counts["queries_without_negatives_after_denoise"]
    assert train.run(cfg).counts["queries_dropped"] == lost


def test_query_pools_skips_dropped_rows_on_a_hand_made_table():
    table = pa.table(
        {
            "qid": pa.array(["a", "a", "a", "a", "b", "b"], pa.string()),
            "docid": pa.array(["p", "n1", "n2", "n3", "p", "n1"], pa.string()),
            "label": pa.array([1, 0, 0, 0, 1, 0], pa.int32()),
            "teacher": pa.array([5.0, 4.5, 1.0, 0.5, 3.0, 2.9], pa.float32()),
            "dropped": pa.array([False, True, False, True, False, True]),
        }
    )
    pools, lost = query_pools(table)
    assert [p.qid for p in pools] == ["a"] and lost == 1  # b lost its only negative
    assert pools[0].positives == [("p", 5.0)] and pools[0].negatives == [("n2", 1.0)]
    # a table written before de-noising (no column) keeps every row
    pools, lost = query_pools(table.drop_columns(["dropped"]))
    assert lost == 0 and [len(p.negatives) for p in pools] == [3, 1]


def test_a_bad_fraction_fails_before_scoring(make_cfg):
    cfg = make_cfg("score.denoise_relative=1.5")
    with pytest.raises(ConfigError, match="denoise_relative"):
        score.run(cfg)
