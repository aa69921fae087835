"""Hybrid fusion of a dense and a BM25 run: RRF and convex formulas on hand-made runs, choosing α."""

from __future__ import annotations

import numpy as np
import pytest

from distillrank.errors import ConfigError
from distillrank.evaluation.hybrid import (
    ALPHA_GRID,
    DEFAULT_ALPHA,
    choose_alpha,
    convex_runs,
    ranking,
    rrf_runs,
)
from distillrank.mining.fusion import convex_fuse, minmax_normalize


def test_grid_and_default() -> None:
    assert ALPHA_GRID[0] == 0.0 and ALPHA_GRID[-1] == 1.0 and len(ALPHA_GRID) == 21
    assert ALPHA_GRID[7] == 0.35 and DEFAULT_ALPHA == 0.5


def test_minmax_normalize() -> None:
    assert minmax_normalize({"a": 3.0, "b": 1.0, "c": 2.0}) == {"a": 1.0, "b": 0.0, "c": 0.5}
    assert minmax_normalize({"a": -4.0, "b": 6.0}) == {"a": 0.0, "b": 1.0}
    assert minmax_normalize({"only": 7.5}) == {"only": 1.0}  # a constant list: every doc is its best
    assert minmax_normalize({"x": 2.0, "y": 2.0}) == {"x": 1.0, "y": 1.0}
    assert minmax_normalize({}) == {}


def test_rrf_runs_hand_example() -> None:
    # Dense q1: a, b, c (by score). BM25 q1: c, a, d. k = 60:
    # a = 1/61 + 1/62, c = 1/63 + 1/61, b = 1/62, d = 1/63 -> a, c, b, d.
    dense = {"q1": {"a": 0.9, "b": 0.8, "c": 0.7}}
    bm25 = {"q1": {"c": 12.0, "a": 10.0, "d": 5.0}, "q2": {"z": 3.0, "y": 4.0}}
    fused = rrf_runs(dense, bm25, k=60)
    assert ranking(fused["q1"]) == ["a", "c", "b", "d"]
    expected = {"a": 1 / 61 + 1 / 62, "c": 1 / 63 + 1 / 61, "b": 1 / 62, "d": 1 / 63}
    assert fused["q1"] == pytest.approx(expected)
    # a query only one run has keeps that run's order: y (rank 1) then z (rank 2)
    assert fused["q2"] == pytest.approx({"y": 1 / 61, "z": 1 / 62})
    # depth keeps the best of the union; k = 0 is plain reciprocal ranks
    assert rrf_runs(dense, bm25, k=60, depth=2)["q1"] == pytest.approx({"a": expected["a"], "c": expected["c"]})
    assert rrf_runs(dense, bm25, k=0)["q1"]["d"] == pytest.approx(1 / 3)
    with pytest.raises(ConfigError, match="rrf_k"):
        rrf_runs(dense, bm25, k=-1)


def test_convex_runs_hand_example() -> None:
    # dense: a 0.9, b 0.5, c 0.1  -> normalised a 1, b 0.5, c 0   (d missing: 0)
    # bm25:  c 10,  d 6,   a 2    -> normalised c 1, d 0.5, a 0   (b missing: 0)
    dense = {"q": {"a": 0.9, "b": 0.5, "c": 0.1}}
    bm25 = {"q": {"c": 10.0, "d": 6.0, "a": 2.0}}
    fused = convex_runs(dense, bm25, alpha=0.3)["q"]
    # a = 0.3 * 1, b = 0.3 * 0.5, c = 0.7 * 1, d = 0.7 * 0.5
    assert fused == pytest.approx({"a": 0.3, "b": 0.15, "c": 0.7, "d": 0.35})
    assert ranking(fused) == ["c", "d", "a", "b"]
    assert convex_runs(dense, bm25, alpha=1.0)["q"] == pytest.approx({"a": 1.0, "b": 0.5, "c": 0.0, "d": 0.0})
    assert convex_runs(dense, bm25, alpha=0.0)["q"] == pytest.approx({"a": 0.0, "b": 0.0, "c": 1.0, "d": 0.5})
    assert list(convex_runs(dense, bm25, alpha=0.3, depth=2)["q"]) == ["c", "d"]
    with pytest.raises(ConfigError, match="alpha"):
        convex_fuse({"a": 1.0}, {"a": 1.0}, alpha=1.5)


def test_convex_with_alpha_one_or_zero_is_each_runs_order() -> None:
    rng = np.random.default_rng(0)
    docs = [f"d{i}" for i in range(30)]
    dense, bm25 = {}, {}
    for q in range(10):
        dense[f"q{q}"] = dict(zip(docs, rng.normal(size=len(docs)).tolist(), strict=True))
        bm25[f"q{q}"] = dict(zip(docs, rng.uniform(0, 20, size=len(docs)).tolist(), strict=True))
    only_dense = convex_runs(dense, bm25, alpha=1.0)
    only_bm25 = convex_runs(dense, bm25, alpha=0.0)
    for q in dense:
        assert ranking(only_dense[q]) == ranking(dense[q])
        assert ranking(only_bm25[q]) == ranking(bm25[q])
        assert ranking(convex_runs(dense, bm25, alpha=0.5)[q]) != ranking(dense[q])  # a real mix


def _query(lo: float, hi: float, a: float = 0.99, b: float = 0.9) -> tuple[dict, dict]:
    """One query whose relevant doc ``r`` the convex fusion ranks first exactly for α in (lo, hi).

    Scores, already min–max normalised (z is each list's 0): dense x 1, r a, y d, z 0; BM25 y 1,
    r b, x c, z 0. Fused: r = aα + b(1 − α), x = α + c(1 − α), y = dα + (1 − α).
    r > x iff α / (1 − α) < (b − c) / (1 − a): c = b − (1 − a) · hi / (1 − hi) puts the switch at hi;
    r > y iff α / (1 − α) > (1 − b) / (a − d): d = a − (1 − b) · (1 − lo) / lo puts it at lo.
    Elsewhere r is second (it beats x or y), so nDCG@10 is 1 inside and 1 / log2(3) outside.
    """
    c = b - (1 - a) * hi / (1 - hi)
    d = a - (1 - b) * (1 - lo) / lo
    assert 0 <= c <= 1 and 0 <= d <= 1
    return {"x": 1.0, "r": a, "y": d, "z": 0.0}, {"y": 1.0, "r": b, "x": c, "z": 0.0}


def _dev(*intervals: tuple[float, float]) -> tuple[dict, dict, dict]:
    dense, bm25, qrels = {}, {}, {}
    for i, (lo, hi) in enumerate(intervals):
        dense[f"q{i}"], bm25[f"q{i}"] = _query(lo, hi)
        qrels[f"q{i}"] = {"r": 1}
    return dense, bm25, qrels


def test_choose_alpha_picks_the_known_best() -> None:
    # r first in q0 for α in (0.53, 0.68), in q1 for α in (0.62, 0.93): both only at α = 0.65 of the grid
    dense, bm25, qrels = _dev((0.53, 0.68), (0.62, 0.93))
    choice = choose_alpha(dense, bm25, qrels, "nDCG@10")
    assert choice.alpha == 0.65
    assert choice.value == pytest.approx(1.0) and choice.queries == 2 and choice.measure == "nDCG@10"
    second = 1 / np.log2(3)  # r at rank 2 in one query
    assert choice.curve[0.6] == pytest.approx((1 + second) / 2)
    assert choice.curve[0.5] == pytest.approx(second)  # r second in both
    assert choice.curve[0.7] == pytest.approx((1 + second) / 2)
    assert max(choice.curve, key=choice.curve.get) == 0.65
    record = choice.to_dict()
    assert record["alpha"] == 0.65 and record["curve"]["0.65"] == pytest.approx(1.0) and len(record["curve"]) == 21


def test_choose_alpha_ties_go_to_the_default() -> None:
    # every α ranks r first in both queries: all equal -> the default
    dense = {"q0": {"r": 2.0, "x": 1.0}, "q1": {"r": 5.0, "y": 0.0}}
    bm25 = {"q0": {"r": 9.0, "x": 3.0}, "q1": {"r": 1.0}}
    qrels = {"q0": {"r": 1}, "q1": {"r": 1}}
    assert choose_alpha(dense, bm25, qrels).alpha == DEFAULT_ALPHA
    assert choose_alpha(dense, bm25, qrels, default=0.3).alpha == 0.3
    # best at 0.45 and at 0.55, equally far from 0.5: the smaller
    dense, bm25, qrels = _dev((0.42, 0.48), (0.52, 0.58))
    choice = choose_alpha(dense, bm25, qrels)
    assert choice.curve[0.45] == pytest.approx(choice.curve[0.55]) and choice.curve[0.5] < choice.curve[0.45]
    assert choice.alpha == 0.45


def test_choose_alpha_errors() -> None:
    dense, bm25, qrels = _dev((0.1, 0.2))
    with pytest.raises(ConfigError, match="no judged dev query"):
        choose_alpha(dense, bm25, {})
    with pytest.raises(ConfigError, match="grid is empty"):
        choose_alpha(dense, bm25, qrels, grid=())
    with pytest.raises(ConfigError, match="not an ir_measures measure"):
        choose_alpha(dense, bm25, qrels, measure="nope@10")
