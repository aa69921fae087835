"""Training pools read by rank: the layout of every query alone, each epoch's rows read from
scores.parquet for the examples a rank trains on, and a rank's plan its share of every global batch
— the same examples as one process's, in a rank's memory (O(pairs / ranks))."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from distillrank.errors import DataError
from distillrank.sharding import Share
from distillrank.training.batching import Pools, ScoreTable, epoch_plan, pool_layout, query_pools


def _table(n_queries: int = 40, seed: int = 0) -> pa.Table:
    """Queries with 1-3 positives and 0-30 negatives (some without either), rows interleaved."""
    rng = np.random.default_rng(seed)
    rows = []
    for q in range(n_queries):
        for p in range(int(rng.integers(1, 4)) if q % 7 else 0):
            rows.append((f"q{q}", f"p{q}-{p}", 1, float(rng.normal(3, 1))))
        for _ in range(int(rng.integers(0, 31))):
            rows.append((f"q{q}", f"n{int(rng.integers(0, 200))}", 0, float(rng.normal())))
    order = rng.permutation(len(rows))
    rows = [rows[i] for i in order]
    qid, docid, label, teacher = zip(*rows, strict=True)
    dropped = rng.random(len(rows)) < 0.1
    return pa.table(
        {
            "qid": list(qid),
            "docid": list(docid),
            "label": pa.array(label, pa.int32()),
            "teacher": pa.array(teacher, pa.float32()),
            "dropped": pa.array(dropped & (np.asarray(label) == 0)),
        }
    )


@pytest.fixture
def scores(tmp_path: Path) -> Path:
    path = tmp_path / "scores.parquet"
    pq.write_table(_table(), path, row_group_size=97)
    return path


def test_the_layout_holds_no_rows_and_reads_any_of_them_as_the_whole_pools_have_them(scores: Path) -> None:
    whole, dropped = query_pools(scores, batch_rows=50)
    layout, layout_dropped = pool_layout(scores, batch_rows=50)
    assert dropped == layout_dropped > 0
    assert not layout.whole and len(layout.docs) == 0 and layout.n_rows == whole.n_rows > 0
    assert np.array_equal(layout.offsets, whole.offsets) and np.array_equal(layout.n_pos, whole.n_pos)
    assert layout.qids.equals(whole.qids)
    rows = np.random.default_rng(1).choice(whole.n_rows, 60)  # repeats and any order
    held = layout.holding(rows)
    assert len(held.docs) == len(np.unique(rows))  # each row once
    assert held._decode(rows) == whole._decode(rows)
    assert np.array_equal(held.teacher_at(rows.reshape(6, 10)), whole.teacher[rows].reshape(6, 10))
    # a subset of the held rows, without reading; every row: whole pools, equal to query_pools'
    assert held.holding(rows[:5])._decode(rows[:5]) == whole._decode(rows[:5])
    assert layout.holding(np.arange(layout.n_rows)) == whole
    missing = np.setdiff1d(np.arange(whole.n_rows), rows)[:1]
    with pytest.raises(KeyError, match="do not hold"):
        held._decode(missing)
    with pytest.raises(ValueError, match="needs every row"):
        layout.first_positive_margins()


def test_positives_of_held_queries_equal_the_whole_pools(scores: Path) -> None:
    whole, _ = query_pools(scores)
    layout, _ = pool_layout(scores)
    q = np.array([0, 3, 5])
    plan = epoch_plan(layout, 2, np.random.default_rng(0))
    plan.query, plan.rows = plan.query[np.isin(plan.query, q)], plan.rows[np.isin(plan.query, q)]
    held = layout.holding(plan.rows_needed(layout, positives=True))
    assert held.positives(q) == whole.positives(q)
    assert len(held.docs) < whole.n_rows


def test_taking_queries_of_the_layout_equals_taking_them_of_the_whole_pools(scores: Path) -> None:
    whole, _ = query_pools(scores)
    layout, _ = pool_layout(scores)
    idx = np.array([7, 2, 11, 0])  # any order
    taken = layout.take(idx)
    assert not taken.whole and taken.qids.equals(whole.take(idx).qids)
    assert taken.holding(np.arange(taken.n_rows)) == whole.take(idx)
    # a second take of a take: the score table's query indices compose
    assert taken.take([3, 1]).holding(np.arange(taken.take([3, 1]).n_rows)) == whole.take(idx[[3, 1]])


@pytest.mark.parametrize(("world", "batch_size", "n"), [(2, 5, 1), (3, 7, 2), (4, 2, 3), (4, 64, 1), (5, 3, 4)])
def test_a_ranks_plan_is_its_share_of_every_batch_of_the_whole_plan(scores: Path, world, batch_size, n) -> None:
    layout, _ = pool_layout(scores)
    rng = np.random.default_rng(5)
    whole = epoch_plan(layout, n, rng)
    after = rng.bit_generator.state
    n_batches = -(-len(whole) // batch_size)
    shares = []
    for rank in range(world):
        rank_rng = np.random.default_rng(5)
        plan = epoch_plan(layout, n, rank_rng, (rank, world, batch_size))
        assert rank_rng.bit_generator.state == after  # the generator goes on as one process's
        assert plan.total == len(whole)
        shares.append(plan)
    share_of = [Share.rank_of(r, world) for r in range(world)]
    held_rows = 0
    for r, plan in enumerate(shares):
        pools = layout.holding(plan.rows_needed(layout, positives=False))
        held_rows += len(pools.docs)
        for j in range(n_batches + 2):  # past the end: the batches start over, as the whole plan's
            examples, queries, size, stand_in = plan.batch(pools, j, batch_size)
            whole_examples, whole_queries, whole_size, _ = whole.batch(layout.holding(whole.rows.reshape(-1)), j, batch_size)
            assert size == whole_size
            if stand_in:  # an empty share: the global batch's first example, trained with weight 0
                assert share_of[r].split(whole_examples) == [] and examples == whole_examples[:1]
            else:
                assert examples == share_of[r].split(whole_examples)
                assert np.array_equal(queries, share_of[r].split(list(whole_queries)))
    # together the ranks hold each negative once (a query's positives go with each of its groups,
    # on any rank; stand-ins aside)
    negatives, positives = len(np.unique(whole.rows[:, 1:])), len(np.unique(whole.rows[:, 0]))
    assert held_rows <= negatives + world * positives + n_batches * (1 + n) * world


def test_a_rank_holds_its_share_of_the_rows(scores: Path) -> None:
    layout, _ = pool_layout(scores)
    whole = epoch_plan(layout, 1, np.random.default_rng(0))
    rows = [
        epoch_plan(layout, 1, np.random.default_rng(0), (rank, 4, 16)).rows_needed(layout, positives=False)
        for rank in range(4)
    ]
    assert max(len(r) for r in rows) < 0.45 * len(np.unique(whole.rows))
    assert np.array_equal(np.unique(np.concatenate(rows)), np.unique(whole.rows))


def test_the_layouts_fingerprint_follows_the_file(scores: Path, tmp_path: Path) -> None:
    layout, _ = pool_layout(scores)
    again, _ = pool_layout(scores)
    assert layout.fingerprint() == again.fingerprint()
    assert layout.take([0, 1]).fingerprint() != layout.fingerprint()
    other = tmp_path / "other.parquet"
    table = _table()
    pq.write_table(table.set_column(3, "teacher", pa.array(np.asarray(table["teacher"]) + 1, pa.float32())), other)
    assert pool_layout(other)[0].fingerprint() != layout.fingerprint()


def test_a_score_file_replaced_after_its_layout_was_read_is_a_data_error(scores: Path) -> None:
    layout, _ = pool_layout(scores)
    table = _table(seed=1)
    pq.write_table(table, scores)
    os.utime(scores, ns=(1, 1))  # another size and time than when the layout was read
    with pytest.raises(DataError, match="changed while it was read"):
        layout.holding(np.arange(5))


def test_an_arrow_table_source_reads_like_its_parquet_file(scores: Path) -> None:
    table = ScoreTable(pq.read_table(scores))
    from_file = ScoreTable(scores)
    assert len(table) == len(from_file) and table.dropped == from_file.dropped
    rows = np.arange(0, from_file.pools(rows=np.zeros(0, np.int64)).n_rows, 3)
    assert table.pools(rows=rows)._decode(rows) == from_file.pools(rows=rows)._decode(rows)
    assert isinstance(table.pools(), Pools) and table.pools() == from_file.pools()


def test_pool_memory_script_measures_one_ranks_share(tmp_path: Path) -> None:
    """scripts/pool_memory.py --world N (docs/TRAINING.md "Memory"): rank 0 of 4 holds about a
    quarter of the examples and of the rows, measured on a table it writes once and then reuses."""
    import json
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[2] / "scripts" / "pool_memory.py"
    scores = tmp_path / "scores.parquet"

    def run(*args: str) -> dict:
        out = subprocess.run(
            [sys.executable, str(script), "--rows", "20000", "--queries", "200", "--negatives", "1",
             "--scores", str(scores), *args],
            check=True, capture_output=True, text=True,
        ).stdout  # fmt: skip
        return json.loads(out.strip().splitlines()[-1])

    one, rank = run("--world", "1"), run("--world", "4", "--rank", "3")
    assert scores.exists() and one["rows"] == rank["rows"] == 20_000
    assert one["examples_held"] == one["examples"] == rank["examples"]
    assert rank["examples_held"] == pytest.approx(one["examples"] / 4, abs=32)
    assert rank["rows_held"] < 0.35 * one["rows_held"]
