"""query_pools and epoch_examples: grouping of the scores table into training examples."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pyarrow as pa
import pytest

from distillrank.training.batching import QueryPool, epoch_examples, query_pools


def _table(rows: list[tuple[str, str, int, float]]) -> pa.Table:
    qid, docid, label, teacher = zip(*rows, strict=True)
    return pa.table(
        {
            "qid": pa.array(qid, pa.string()),
            "docid": pa.array(docid, pa.string()),
            "label": pa.array(label, pa.int32()),
            "teacher": pa.array(teacher, pa.float32()),
        }
    )


def _teacher_score(qid: str, docid: str) -> float:
    """A distinct, exactly representable score per (query, doc)."""
    return float(int(qid[1:]) * 100 + int(docid.split("_")[1])) / 4


def _pool(q: int, n_pos: int, n_neg: int) -> QueryPool:
    qid = f"q{q}"
    pos = [(f"p{q}_{i}", _teacher_score(qid, f"p_{i}")) for i in range(n_pos)]
    neg = [(f"n{q}_{i}", _teacher_score(qid, f"n_{50 + i}")) for i in range(n_neg)]
    return QueryPool(qid, pos, neg)


def test_query_pools_groups_and_drops() -> None:
    table = _table(
        [
            ("q1", "a", 1, 5.0),
            ("q2", "x", 0, 1.0),  # q2 has no positive
            ("q1", "b", 0, 2.0),
            ("q3", "y", 2, 4.0),  # q3 has no negative
            ("q1", "c", 0, -1.0),
            ("q4", "z", 0, 0.5),
            ("q4", "w", 1, 3.0),
            ("q1", "d", 2, 4.5),
        ]
    )
    pools, dropped = query_pools(table)
    assert dropped == 2
    assert [p.qid for p in pools] == ["q1", "q4"]  # first-appearance order
    q1 = pools[0]
    assert q1.positives == [("a", 5.0), ("d", 4.5)]  # any label > 0 is a positive
    assert q1.negatives == [("b", 2.0), ("c", -1.0)]
    assert pools[1] == QueryPool("q4", [("w", 3.0)], [("z", 0.5)])
    assert all(isinstance(s, float) for p in pools for _, s in p.positives + p.negatives)


def test_query_pools_all_usable() -> None:
    pools, dropped = query_pools(_table([("q1", "a", 1, 1.0), ("q1", "b", 0, 0.0)]))
    assert dropped == 0 and len(pools) == 1


def _check_alignment(pools: list[QueryPool], examples, n: int) -> None:
    by_qid = {p.qid: p for p in pools}
    for ex in examples:
        pool = by_qid[ex.qid]
        pos = dict(pool.positives)
        neg = dict(pool.negatives)
        assert len(ex.docids) == len(ex.teacher) == n + 1
        assert ex.docids[0] in pos
        assert ex.teacher[0] == pos[ex.docids[0]]
        for docid, score in zip(ex.docids[1:], ex.teacher[1:], strict=True):
            assert docid in neg
            assert score == neg[docid]


@pytest.mark.parametrize("n", [1, 2, 4])
def test_each_negative_once_per_epoch_when_divisible(n: int) -> None:
    pools = [_pool(1, 1, 8), _pool(2, 3, 4), _pool(3, 2, 12)]
    examples = epoch_examples(pools, n, np.random.default_rng(0))
    _check_alignment(pools, examples, n)
    per_query = Counter(ex.qid for ex in examples)
    assert per_query == {"q1": 8 // n, "q2": 4 // n, "q3": 12 // n}
    used = Counter(d for ex in examples for d in ex.docids[1:])
    expected = Counter(d for p in pools for d, _ in p.negatives)
    assert used == expected  # every negative exactly once


def test_positives_are_used_in_turn() -> None:
    pool = _pool(1, 3, 6)
    examples = epoch_examples([pool], 1, np.random.default_rng(5))
    counts = Counter(ex.docids[0] for ex in examples)
    assert counts == {"p1_0": 2, "p1_1": 2, "p1_2": 2}


def test_fewer_negatives_than_n_gives_one_padded_example() -> None:
    pool = _pool(1, 1, 2)
    examples = epoch_examples([pool], 5, np.random.default_rng(0))
    assert len(examples) == 1
    _check_alignment([pool], examples, 5)


def test_not_divisible_still_gives_full_distinct_groups() -> None:
    pool = _pool(1, 1, 7)
    examples = epoch_examples([pool], 3, np.random.default_rng(0))
    _check_alignment([pool], examples, 3)
    assert len(examples) >= 2
    for ex in examples:
        assert len(set(ex.docids[1:])) == 3
    assert len({d for ex in examples for d in ex.docids[1:]}) >= 6


def test_deterministic_for_a_seed_and_changes_between_epochs() -> None:
    pools = [_pool(q, 2, 6) for q in range(1, 6)]
    first = epoch_examples(pools, 2, np.random.default_rng(42))
    again = epoch_examples(pools, 2, np.random.default_rng(42))
    assert first == again

    rng = np.random.default_rng(42)
    epoch1 = epoch_examples(pools, 2, rng)
    epoch2 = epoch_examples(pools, 2, rng)
    assert epoch1 == first
    assert epoch1 != epoch2
    # Not just another order: the grouping of negatives into examples changes too.
    groups = lambda exs: {(ex.qid, frozenset(ex.docids[1:])) for ex in exs}  # noqa: E731
    assert groups(epoch1) != groups(epoch2)
    assert epoch_examples(pools, 2, np.random.default_rng(43)) != first


def test_examples_are_shuffled_across_queries() -> None:
    pools = [_pool(q, 1, 4) for q in range(1, 9)]
    examples = epoch_examples(pools, 1, np.random.default_rng(0))
    qids = [ex.qid for ex in examples]
    assert qids != sorted(qids, key=lambda q: int(q[1:]))
    assert Counter(qids) == {f"q{q}": 4 for q in range(1, 9)}
