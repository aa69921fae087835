"""The columnar pools give the very batches the list-of-objects code gave: the same examples, in the
same order, from the same draws of the generator (so a config trains the same weights as before).

``_reference_pools`` and ``_reference_examples`` are the replaced code (``QueryPool`` lists of
tuples, every epoch's ``Example`` objects made at once), kept here as the specification.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from distillrank.training.batching import (
    Example,
    Pools,
    QueryPool,
    epoch_examples,
    epoch_plan,
    examples_per_epoch,
    query_pools,
)


def _reference_pools(table: pa.Table) -> tuple[list[QueryPool], int]:
    pools: dict[str, QueryPool] = {}
    names = table.schema.names
    dropped = table["dropped"].to_pylist() if "dropped" in names else [False] * table.num_rows
    cols = (table[c].to_pylist() for c in ("qid", "docid", "label", "teacher"))
    for qid, docid, label, teacher, skip in zip(*cols, dropped, strict=True):
        pool = pools.get(qid)
        if pool is None:
            pool = pools[qid] = QueryPool(qid, [], [])
        if skip:
            continue
        (pool.positives if label > 0 else pool.negatives).append((docid, float(teacher)))
    usable = [p for p in pools.values() if p.positives and p.negatives]
    return usable, len(pools) - len(usable)


def _reference_examples(pools: list[QueryPool], n: int, rng: np.random.Generator) -> list[Example]:
    examples: list[Example] = []
    for pool in pools:
        order = rng.permutation(len(pool.negatives))
        if len(order) < n:
            order = rng.choice(len(pool.negatives), size=n, replace=True)
        groups = [order[i : i + n] for i in range(0, len(order) - n + 1, n)]
        pos_order = rng.permutation(len(pool.positives))
        for g, group in enumerate(groups):
            pos_id, pos_score = pool.positives[pos_order[g % len(pos_order)]]
            negs = [pool.negatives[j] for j in group]
            examples.append(
                Example(pool.qid, [pos_id] + [d for d, _ in negs], [pos_score] + [s for _, s in negs])
            )
    return [examples[i] for i in rng.permutation(len(examples))]


def _scores(seed: int = 0) -> pa.Table:
    """Interleaved queries with 1–3 positives, 1–9 negatives (some fewer than n), shared docids,
    queries without a positive or a negative, de-noised rows, float32 teacher scores."""
    rng = np.random.default_rng(seed)
    rows = []
    for q in range(40):
        n_pos, n_neg = int(rng.integers(1, 4)), int(rng.integers(1, 10))
        if q % 9 == 4:
            n_pos = 0
        if q % 13 == 6:
            n_neg = 0
        for j in range(n_pos + n_neg):
            rows.append(
                (f"q{q}", f"d{rng.integers(0, 60)}", int(j < n_pos) * int(rng.integers(1, 3)), rng.normal())
            )
    rows = [rows[i] for i in rng.permutation(len(rows))]
    return pa.table(
        {
            "qid": pa.array([r[0] for r in rows]),
            "docid": pa.array([r[1] for r in rows]),
            "label": pa.array([r[2] for r in rows], pa.int32()),
            "teacher": pa.array([r[3] for r in rows], pa.float32()),
            "dropped": pa.array(rng.random(len(rows)) < 0.1),
        }
    )


def _batches(examples: list[Example], size: int) -> list[list[tuple[str, list[str], list[float]]]]:
    return [
        [(e.qid, e.docids, e.teacher) for e in examples[i : i + size]] for i in range(0, len(examples), size)
    ]


@pytest.mark.parametrize("n", [1, 3, 4])
def test_batches_equal_the_list_of_objects_code(tmp_path: Path, n: int) -> None:
    table = _scores()
    path = tmp_path / "scores.parquet"
    pq.write_table(table, path, row_group_size=37)
    reference, ref_dropped = _reference_pools(table)
    pools, dropped = query_pools(path, batch_rows=29)
    assert dropped == ref_dropped > 0
    assert list(pools) == reference
    assert any(len(p.negatives) < n for p in reference) or n == 1
    old_rng, new_rng = np.random.default_rng(11), np.random.default_rng(11)
    batch_size = 5
    for _ in range(3):  # epochs: the generator carries over
        expected = _batches(_reference_examples(reference, n, old_rng), batch_size)
        plan = epoch_plan(pools, n, new_rng)
        assert len(plan) == examples_per_epoch(pools, n)
        got = [
            [(e.qid, e.docids, e.teacher) for e in plan.batch(pools, j, batch_size)[0]]
            for j in range(len(expected))
        ]
        assert got == expected
        assert (
            plan.batch(pools, len(expected), batch_size)[0] == plan.batch(pools, 0, batch_size)[0]
        )  # cycles
    assert old_rng.bit_generator.state == new_rng.bit_generator.state  # the same draws, no more, no fewer


def test_row_wise_pools_convert_exactly() -> None:
    reference, _ = _reference_pools(_scores(3))
    pools = Pools.from_query_pools(reference)
    assert list(pools) == reference
    rng_a, rng_b = np.random.default_rng(2), np.random.default_rng(2)
    assert epoch_examples(pools, 2, rng_a) == _reference_examples(reference, 2, rng_b)


def test_take_and_positives_and_margins() -> None:
    reference, _ = _reference_pools(_scores(5))
    pools = Pools.from_query_pools(reference)
    picked = [4, 0, 7]
    assert list(pools.take(picked)) == [reference[i] for i in picked]
    assert pools.positives([0, 4, 0]) == {
        reference[i].qid: {d for d, _ in reference[i].positives} for i in (0, 4)
    }
    margins = [abs(p.positives[0][1] - s) for p in reference for _, s in p.negatives]
    assert sorted(pools.first_positive_margins().tolist()) == sorted(margins)
    assert (
        pools.fingerprint()
        == Pools.from_query_pools(reference).fingerprint()
        != pools.take(picked).fingerprint()
    )


def test_an_empty_table_gives_no_pools() -> None:
    pools, dropped = query_pools(_scores().slice(0, 0))
    assert len(pools) == 0 and dropped == 0 and examples_per_epoch(pools, 2) == 0
