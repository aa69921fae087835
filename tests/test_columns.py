"""distillrank.columns: the column helpers the score cache and the training pools share."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from distillrank.columns import Distinct, coding_rows, sorted_unique


def test_sorted_unique_is_numpy_unique() -> None:
    rng = np.random.default_rng(0)
    for values in (rng.integers(-50, 50, 1000), np.zeros(0, np.int64), np.array([7]), np.array([3, 3, 3])):
        got = sorted_unique(values)
        assert np.array_equal(got, np.unique(values)) and got.dtype == values.dtype


def test_distinct_keeps_first_appearance_order_across_merges() -> None:
    rng = np.random.default_rng(1)
    batches = [[f"d{v}" for v in rng.integers(0, 300, size)] for size in (1, 40, 3, 200, 7, 500, 2)]
    distinct = Distinct()
    for batch in batches:
        distinct.add(pa.array(batch, pa.string()))
    every = [v for batch in batches for v in batch]
    assert distinct.values().to_pylist() == list(dict.fromkeys(every))
    assert Distinct().values().to_pylist() == []


def test_coding_rows_is_the_longest_value_set() -> None:
    assert coding_rows(pa.array(["a", "b"]), pa.array(["x", "y", "z"])) == 3
    assert coding_rows() == 0
