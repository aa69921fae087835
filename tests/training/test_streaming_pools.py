"""query_pools streamed from scores.parquet row group by row group equals the in-memory grouping."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from distillrank.errors import DataError
from distillrank.training.batching import query_pools


def _scores(n_queries: int, per_query: int, seed: int = 0, dropped: bool = True) -> pa.Table:
    """A score table with interleaved queries (a query's rows span row groups), shared docids,
    queries without positives or without negatives, and de-noised rows."""
    rng = np.random.default_rng(seed)
    rows = []
    for q in range(n_queries):
        for j in range(per_query):
            label = int(j == 0 and q % 7 != 3)  # every 7th query has no positive
            if q % 11 == 5:
                label = 1  # ... and every 11th has no negative
            rows.append((f"q{q}", f"d{rng.integers(0, 3 * per_query)}", label, float(rng.normal())))
    order = rng.permutation(len(rows))
    rows = [rows[i] for i in order]
    cols = {
        "qid": pa.array([r[0] for r in rows], pa.string()),
        "docid": pa.array([r[1] for r in rows], pa.string()),
        "label": pa.array([r[2] for r in rows], pa.int32()),
        "teacher": pa.array([r[3] for r in rows], pa.float32()),
    }
    if dropped:
        cols["dropped"] = pa.array(rng.random(len(rows)) < 0.1)
    return pa.table(cols)


@pytest.mark.parametrize("dropped", [True, False])
def test_streamed_pools_equal_the_whole_table_ones(tmp_path: Path, dropped: bool) -> None:
    table = _scores(60, 9, dropped=dropped)
    path = tmp_path / "scores.parquet"
    pq.write_table(table, path, row_group_size=50)
    assert pq.ParquetFile(path).num_row_groups > 5
    whole, whole_dropped = query_pools(table)
    for batch_rows in (7, 50, 10_000):
        streamed, streamed_dropped = query_pools(path, batch_rows=batch_rows)
        assert streamed == whole and streamed_dropped == whole_dropped
    assert whole_dropped > 0 and len(whole) > 30
    if dropped:  # the de-noised rows really were skipped
        kept = sum(len(p.positives) + len(p.negatives) for p in whole)
        assert kept < table.num_rows


def test_streamed_pools_hold_each_docid_once(tmp_path: Path) -> None:
    table = _scores(40, 9, dropped=False)
    path = tmp_path / "scores.parquet"
    pq.write_table(table, path, row_group_size=30)
    pools, _ = query_pools(path)
    assert pools.docids.to_pylist() == list(dict.fromkeys(table["docid"].to_pylist()))  # one dictionary
    assert pools.docs.dtype == np.int32 and pools.n_rows == len(pools.docs) < table.num_rows


def test_a_bad_score_file_is_a_data_error(tmp_path: Path) -> None:
    bad = tmp_path / "scores.parquet"
    bad.write_text("not parquet")
    with pytest.raises(DataError, match="scores.parquet"):
        query_pools(bad)
    pq.write_table(pa.table({"qid": ["q"], "docid": ["d"]}), bad)
    with pytest.raises(DataError, match=r"\['label', 'teacher'\]"):
        query_pools(bad)


def test_occurrence_ranks_equal_keys_in_order() -> None:
    from distillrank.training.batching import _occurrence

    keys = np.array([5, 2, 5, 5, 2, 9, 0])
    assert _occurrence(keys).tolist() == [0, 0, 1, 2, 1, 0, 0]
    assert _occurrence(np.zeros(0, np.int64)).tolist() == []


def test_rows_of_one_query_far_apart_land_in_table_order(tmp_path: Path) -> None:
    """A query's positives and negatives spread over many batches keep their table order, positives
    first, whatever the batch length of either pass."""
    rows = [("qa", f"d{i}", int(i % 5 == 0), float(i)) for i in range(40)]
    other = [("qb", f"e{i}", int(i == 3), -float(i)) for i in range(40)]
    rows = [r for pair in zip(rows, other, strict=True) for r in pair]
    table = pa.table(
        {
            "qid": [r[0] for r in rows],
            "docid": [r[1] for r in rows],
            "label": pa.array([r[2] for r in rows], pa.int64()),
            "teacher": pa.array([r[3] for r in rows], pa.float64()),
        }
    )
    path = tmp_path / "scores.parquet"
    pq.write_table(table, path, row_group_size=6)
    for batch_rows in (1, 4, 1000):
        pools, dropped = query_pools(path, batch_rows=batch_rows)
        assert dropped == 0 and pools.qids.to_pylist() == ["qa", "qb"]
        qa, qb = pools[0], pools[1]
        assert [d for d, _ in qa.positives] == [f"d{i}" for i in range(0, 40, 5)]
        assert [d for d, _ in qa.negatives] == [f"d{i}" for i in range(40) if i % 5]
        assert [s for _, s in qa.negatives] == [float(i) for i in range(40) if i % 5]
        assert qb.positives == [("e3", -3.0)] and len(qb.negatives) == 39
        assert pools.teacher.dtype == np.float64  # a float64 teacher column stays float64


def test_a_file_that_changes_between_the_passes_is_a_data_error(tmp_path: Path, monkeypatch) -> None:
    """The second pass writes each row where the first pass counted room for it: rows it did not
    count (another writer replaced the file meanwhile) are an error, not another query's data."""
    import distillrank.training.batching as batching

    table = _scores(20, 6, dropped=False)
    path = tmp_path / "scores.parquet"
    pq.write_table(table, path)
    read = batching._record_batches
    for second in (table.slice(0, table.num_rows - 5), pa.concat_tables([table, table.slice(0, 3)])):
        calls = []

        def twice(source, rows, second=second, calls=calls):
            calls.append(rows)
            return read(source if len(calls) == 1 else second, rows)

        monkeypatch.setattr(batching, "_record_batches", twice)
        with pytest.raises(DataError, match="changed while it was read"):
            query_pools(path)
    monkeypatch.setattr(batching, "_record_batches", read)
    assert query_pools(path)[0] == query_pools(table)[0]
