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


def test_group_codes_keeps_dense_codes_and_codes_the_rest() -> None:
    from distillrank.columns import group_codes

    dense = np.array([2, 0, 2, 1], np.int32)
    codes, n = group_codes(dense)
    assert codes is dense and n == 3  # no copy, no sort
    codes, n = group_codes(np.array([10**12, 5, 10**12]))
    assert codes.tolist() == [1, 0, 1] and n == 2
    codes, n = group_codes(np.array(["q2", "q1", "q2"], dtype=object))
    assert codes.tolist() == [1, 0, 1] and n == 2
    assert group_codes(np.zeros(0, np.int64))[1] == 0


def test_row_slices_cover_the_rows_in_order() -> None:
    from distillrank.columns import row_slices

    assert [(s.start, s.stop) for s in row_slices(10, 4)] == [(0, 4), (4, 8), (8, 10)]
    assert list(row_slices(0, 4)) == []


def test_row_slices_of_a_part_are_cut_where_the_whole_is_cut() -> None:
    from distillrank.columns import row_slices

    # rows 6..15 of a whole cut every 4 rows (at 8, 12): the part's slices end there too
    assert [(s.start, s.stop) for s in row_slices(10, 4, first_row=6)] == [(0, 2), (2, 6), (6, 10)]
    assert list(row_slices(0, 4, first_row=3)) == []


def test_group_cuts_split_no_group_and_balance_the_rows() -> None:
    from distillrank.columns import group_cuts

    # groups of 3, 3, 4 rows, together: cut only between them
    first, last = np.array([0, 3, 6]), np.array([2, 5, 9])
    assert group_cuts(first, last, 10, 2) == [0, 6, 10]
    assert group_cuts(first, last, 10, 4) == [0, 3, 6, 10, 10]
    assert group_cuts(first, last, 10, 1) == [0, 10]
    # the first group's rows at both ends: nowhere to cut
    assert group_cuts(np.array([0, 1]), np.array([9, 8]), 10, 3) == [0, 10, 10, 10]
    # a group without rows (-1) is ignored; groups in any order of their codes
    assert group_cuts(np.array([5, -1, 0]), np.array([9, -1, 4]), 10, 2) == [0, 5, 10]
    assert group_cuts(np.zeros(0, np.int64), np.zeros(0, np.int64), 0, 2) == [0, 0, 0]


def test_range_batches_read_the_rows_of_a_range_only(tmp_path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from distillrank.columns import range_batches

    pq.write_table(pa.table({"x": np.arange(100)}), tmp_path / "t.parquet", row_group_size=30)
    with pq.ParquetFile(tmp_path / "t.parquet") as f:
        for rows in (range(0, 100), range(25, 61), range(30, 60), range(99, 100), range(40, 40)):
            got = [b.column(0).to_numpy() for b in range_batches(f, ["x"], rows, 7)]
            assert all(len(b) <= 7 for b in got)
            np.testing.assert_array_equal(np.concatenate(got) if got else np.zeros(0), np.arange(100)[rows.start : rows.stop])
        assert sum(b.num_rows for b in range_batches(f, ["x"], None, 64)) == 100


def test_open_parquet_reads_one_batch_not_the_whole_file(tmp_path) -> None:
    """Arrow's pre-buffering (pyarrow's default) held what it read of the file until the iteration
    ended: a stage streaming scores.parquet held O(file). open_parquet reads a batch at a time."""
    import pyarrow.parquet as pq

    from distillrank.columns import open_parquet

    rng = np.random.default_rng(0)
    rows = 400_000
    table = pa.table({"docid": pa.array(rng.integers(0, 10**9, rows).astype(str)), "teacher": rng.normal(size=rows)})
    path = tmp_path / "scores.parquet"
    pq.write_table(table, path, row_group_size=10_000)  # 40 row groups
    size = path.stat().st_size
    del table

    def held_after_one_batch(parquet) -> int:
        before = pa.total_allocated_bytes()
        batches = parquet.iter_batches(batch_size=10_000)
        next(batches)
        held = pa.total_allocated_bytes() - before
        del batches
        return held

    assert held_after_one_batch(open_parquet(path)) < size / 4
    assert held_after_one_batch(pq.ParquetFile(path, pre_buffer=True)) > size / 2  # pyarrow 26's default
