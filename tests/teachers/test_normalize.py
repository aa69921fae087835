"""Score normalisation: hand-computed z-score / min-max, per query and global, degenerate groups."""

from __future__ import annotations

import numpy as np
import pytest

from distillrank.errors import ConfigError
from distillrank.teachers.normalize import normalize


def test_zscore_per_query_matches_hand_computation():
    scores = np.array([1.0, 3.0, 10.0, 10.0, 20.0])
    groups = np.array(["a", "a", "b", "b", "b"])
    out = normalize(scores, groups, "zscore", "query")
    # a: mean 2, std 1 -> [-1, 1]; b: mean 40/3, std sqrt(200/9)=4.714 -> [-0.7071, -0.7071, 1.4142]
    np.testing.assert_allclose(out, [-1.0, 1.0, -0.70710678, -0.70710678, 1.41421356], rtol=1e-6)


def test_minmax_global_and_per_query():
    scores = np.array([1.0, 3.0, 10.0, 20.0])
    np.testing.assert_allclose(normalize(scores, None, "minmax", "global"), [0.0, 2 / 19, 9 / 19, 1.0], rtol=1e-6)
    per_query = normalize(scores, np.array([0, 0, 1, 1]), "minmax", "query")
    np.testing.assert_allclose(per_query, [0.0, 1.0, 0.0, 1.0])


def test_constant_groups_do_not_divide_by_zero():
    scores = np.array([5.0, 5.0, 1.0, 2.0])
    groups = np.array([0, 0, 1, 1])
    np.testing.assert_allclose(normalize(scores, groups, "zscore"), [0.0, 0.0, -1.0, 1.0])
    np.testing.assert_allclose(normalize(scores, groups, "minmax"), [0.5, 0.5, 0.0, 1.0])


@pytest.mark.parametrize("method", ["zscore", "minmax"])
def test_order_within_a_query_is_kept_and_affine_shifts_vanish(method):
    rng = np.random.default_rng(0)
    scores = rng.normal(size=40)
    groups = np.repeat(np.arange(4), 10)
    out = normalize(scores, groups, method)
    shifted = normalize(3.0 * scores + 7.0, groups, method)
    np.testing.assert_allclose(out, shifted, atol=1e-5)
    for g in range(4):
        sel = groups == g
        assert (np.argsort(out[sel]) == np.argsort(scores[sel])).all()


def test_none_is_identity_and_unknown_method_fails():
    scores = np.array([0.3, -2.0])
    np.testing.assert_array_equal(normalize(scores, None, "none"), scores.astype(np.float32))
    with pytest.raises(ConfigError, match="expected one of"):
        normalize(scores, None, "softmax")
    with pytest.raises(ConfigError, match="scope"):
        normalize(scores, None, "zscore", "batch")


def test_score_stage_normalises_the_teacher_column_and_keeps_raw_scores(make_cfg):
    import pyarrow.parquet as pq

    from distillrank.stages import mine, score
    from distillrank.workspace import stage_dir

    plain = make_cfg()
    mine.run(plain)
    m0 = score.run(plain)
    cfg = make_cfg("score.normalize=zscore")
    assert score.stage_key(cfg) != score.stage_key(plain)
    m1 = score.run(cfg)
    assert m1.counts["pairs_scored"] == 0 and m1.counts["normalize"] == {"method": "zscore", "scope": "query"}
    assert m0.counts["normalize"]["method"] == "none"
    table = pq.read_table(stage_dir(cfg, "score") / score.OUTPUT)
    raw = table["teacher_raw"].to_numpy()
    groups = table["qid"].to_numpy(zero_copy_only=False)
    np.testing.assert_allclose(table["teacher"].to_numpy(), normalize(raw, groups, "zscore"), rtol=1e-6)
    with pytest.raises(ConfigError, match="score.normalize"):
        score.run(make_cfg("score.normalize=softmax"))


@pytest.mark.parametrize("method", ["zscore", "minmax"])
@pytest.mark.parametrize("scope", ["query", "global"])
def test_normalize_by_slices_equals_it_whole(monkeypatch, method: str, scope: str) -> None:
    """Statistics are summed slice by slice (float64 temporaries of one slice): the same scores up
    to float32 rounding of a differently ordered float64 sum."""
    import distillrank.columns as columns

    rng = np.random.default_rng(4)
    groups = rng.integers(0, 30, 400).astype(np.int32)
    scores = (rng.normal(size=400) * 5 + 2).astype(np.float32)
    whole = normalize(scores, groups, method, scope)
    monkeypatch.setattr(columns, "ROW_CHUNK", 9)
    sliced = normalize(scores, groups, method, scope)
    assert sliced.dtype == np.float32
    np.testing.assert_allclose(sliced, whole, rtol=1e-6, atol=1e-6)
    by_group = normalize(scores, np.array([f"q{g}" for g in groups], dtype=object), method, scope)
    np.testing.assert_allclose(by_group, whole, rtol=1e-6, atol=1e-6)
