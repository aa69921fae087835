"""False-negative de-noising rules on hand-made score tables."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from distillrank.errors import ConfigError
from distillrank.mining.denoise import DROPPED, check_settings, denoise, denoise_table

# one query: two positives (best 10), negatives at 12, 10 (tie with best positive), 9, 8, 5, -3
QIDS = ["q"] * 8
LABELS = [1, 1, 0, 0, 0, 0, 0, 0]
SCORES = [10.0, 4.0, 12.0, 10.0, 9.0, 8.0, 5.0, -3.0]


def _dropped(**rules: float | None) -> list[bool]:
    return denoise(QIDS, LABELS, SCORES, **rules).dropped.tolist()


def test_nothing_is_dropped_without_rules() -> None:
    result = denoise(QIDS, LABELS, SCORES)
    assert not result.dropped.any()
    assert result.counts() == {
        "negatives_dropped": 0,
        "negatives_dropped_by_margin": 0,
        "negatives_dropped_by_relative": 0,
        "queries_without_negatives_after_denoise": 0,
    }


def test_margin_drops_negatives_at_or_above_best_positive_minus_margin() -> None:
    # threshold 10 - 1 = 9: 12, 10 and 9 (tie) go; the weaker positive (4) sets nothing
    assert _dropped(margin=1.0) == [False, False, True, True, True, False, False, False]
    # margin 0: the tie with the best positive is dropped
    assert _dropped(margin=0.0) == [False, False, True, True, False, False, False, False]
    # a negative margin only drops negatives clearly above the best positive
    assert _dropped(margin=-1.5) == [False, False, True, False, False, False, False, False]


def test_margin_with_negative_scores() -> None:
    # logits: best positive -2, threshold -2 - 1 = -3 (tie dropped)
    result = denoise(["q"] * 4, [1, 0, 0, 0], [-2.0, -1.0, -3.0, -3.5], margin=1.0)
    assert result.dropped.tolist() == [False, True, True, False]


def test_margin_leaves_a_query_without_positives_alone() -> None:
    result = denoise(["a", "a", "b", "b"], [1, 0, 0, 0], [1.0, 5.0, 100.0, 200.0], margin=0.0)
    assert result.dropped.tolist() == [False, True, False, False]
    assert result.queries_without_negatives == 1  # "a" lost its only negative; "b" had no positive


def test_relative_drops_negatives_above_a_fraction_of_the_top_score() -> None:
    # top 12 (a negative), f = 0.75 -> threshold 9: 12 and 10 go, 9 (tie) stays
    assert _dropped(relative=0.75) == [False, False, True, True, False, False, False, False]
    # f = 1: nothing can be strictly above the top
    assert _dropped(relative=1.0) == [False] * 8
    # f = 0: every negative with a positive score goes; the positives (even 4 < top) stay
    assert _dropped(relative=0.0) == [False, False, True, True, True, True, True, False]


def test_relative_uses_the_top_over_all_candidates_and_never_drops_positives() -> None:
    # the top candidate is a positive (8); f = 0.5 -> threshold 4: 5 goes, 4 (tie) and 1 stay; the
    # positive at 2 (below the threshold) is kept
    result = denoise(["q"] * 5, [1, 1, 0, 0, 0], [8.0, 2.0, 5.0, 4.0, 1.0], relative=0.5)
    assert result.dropped.tolist() == [False, False, True, False, False]


def test_relative_with_negative_scores() -> None:
    # top > 0 with negative scores around: negatives below zero are below the threshold
    result = denoise(["q"] * 4, [1, 0, 0, 0], [2.0, 1.5, -0.5, -4.0], relative=0.6)
    assert result.dropped.tolist() == [False, True, False, False]
    # every candidate <= 0 (raw logits): the rule does not apply, nothing is dropped
    result = denoise(["q"] * 4, [1, 0, 0, 0], [-2.0, -1.0, -1.5, -5.0], relative=0.6)
    assert not result.dropped.any()
    result = denoise(["q"] * 3, [1, 0, 0], [0.0, 0.0, -1.0], relative=0.0)
    assert not result.dropped.any()


def test_either_rule_drops_and_queries_are_independent() -> None:
    qids = ["a", "b", "a", "b", "a", "b", "a"]
    labels = [1, 1, 0, 0, 0, 0, 0]
    scores = [10.0, 1.0, 9.5, 0.9, 7.0, 0.1, 2.0]
    # a: best positive 10, margin 1 (threshold 9) drops 9.5; relative 0.6 (threshold 6) drops 9.5, 7
    # b: best positive 1, margin 1 (threshold 0) drops 0.9 and 0.1; relative (threshold 0.6) drops 0.9
    result = denoise(qids, labels, scores, margin=1.0, relative=0.6)
    assert result.by_margin.tolist() == [False, False, True, True, False, True, False]
    assert result.by_relative.tolist() == [False, False, True, True, True, False, False]
    assert result.dropped.tolist() == [False, False, True, True, True, True, False]
    assert result.counts() == {
        "negatives_dropped": 4,
        "negatives_dropped_by_margin": 3,
        "negatives_dropped_by_relative": 3,
        "queries_without_negatives_after_denoise": 1,  # b
    }


def test_positives_are_never_dropped_whatever_their_score() -> None:
    rng = np.random.default_rng(0)
    qids = rng.integers(0, 20, size=500).astype(str)
    labels = rng.integers(0, 2, size=500)
    scores = rng.normal(size=500) * 5
    for margin, relative in [(0.0, None), (None, 0.0), (-10.0, 0.0), (5.0, 0.6)]:
        result = denoise(qids, labels, scores, margin=margin, relative=relative)
        assert not result.dropped[labels > 0].any()
        assert result.dropped.any()


def test_denoise_table_appends_a_boolean_column_and_keeps_every_row() -> None:
    table = pa.table(
        {
            "qid": pa.array(QIDS, pa.string()),
            "docid": pa.array([f"d{i}" for i in range(8)], pa.string()),
            "label": pa.array(LABELS, pa.int32()),
            "teacher": pa.array(SCORES, pa.float32()),
        }
    )
    out, result = denoise_table(table, margin=1.0)
    assert out.num_rows == table.num_rows and out.schema.field(DROPPED).type == pa.bool_()
    assert out[DROPPED].to_pylist() == result.dropped.tolist()
    again, _ = denoise_table(out, relative=1.0)  # an existing column is replaced
    assert again.column_names.count(DROPPED) == 1 and not any(again[DROPPED].to_pylist())
    empty, res = denoise_table(table.slice(0, 0), relative=0.6)
    assert empty.num_rows == 0 and res.counts()["negatives_dropped"] == 0


@pytest.mark.parametrize(("margin", "relative"), [(float("nan"), None), (None, 1.5), (None, -0.1)])
def test_bad_settings_are_config_errors(margin: float | None, relative: float | None) -> None:
    with pytest.raises(ConfigError, match="score.denoise_"):
        check_settings(margin, relative)


def test_denoise_by_slices_equals_it_whole(monkeypatch) -> None:
    """The rows are handled a slice at a time (float64 temporaries of one slice): a query whose
    rows span slices is de-noised exactly as with every row in one slice."""
    import distillrank.columns as columns

    rng = np.random.default_rng(3)
    n = 500
    codes = rng.integers(0, 40, n).astype(np.int32)
    labels = (rng.random(n) < 0.1).astype(np.int64)
    scores = rng.normal(size=n).astype(np.float32)
    whole = denoise(codes, labels, scores, margin=0.2, relative=0.5)
    monkeypatch.setattr(columns, "ROW_CHUNK", 7)
    sliced = denoise(codes, labels, scores, margin=0.2, relative=0.5)
    strings = denoise(np.array([f"q{c}" for c in codes], dtype=object), labels, scores, margin=0.2, relative=0.5)
    for got in (sliced, strings):
        assert np.array_equal(got.dropped, whole.dropped) and np.array_equal(got.by_margin, whole.by_margin)
        assert np.array_equal(got.by_relative, whole.by_relative)
        assert got.queries_without_negatives == whole.queries_without_negatives
    assert whole.by_margin.any() and whole.by_relative.any()
