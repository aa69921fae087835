"""Training examples from the scored candidates: one query, one positive, n negatives."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from distillrank.errors import DataError


@dataclass
class QueryPool:
    """One training query's scored candidates."""

    qid: str
    positives: list[tuple[str, float]]  # (docid, teacher score)
    negatives: list[tuple[str, float]]


@dataclass
class Example:
    """A training group: ``docids[0]`` is the positive; teacher scores aligned with ``docids``."""

    qid: str
    docids: list[str]
    teacher: list[float]


SCORE_COLUMNS = ("qid", "docid", "label", "teacher")
BATCH_ROWS = 65_536


def _record_batches(scores: pa.Table | str | Path, batch_rows: int) -> Iterator[pa.RecordBatch]:
    """Record batches of the needed columns: a table's own chunks, or a Parquet file read row group
    by row group (``batch_rows`` rows at a time), never the whole file."""
    if isinstance(scores, pa.Table):
        yield from scores.to_batches(max_chunksize=batch_rows)
        return
    path = Path(scores)
    try:
        parquet = pq.ParquetFile(path)
    except (OSError, pa.ArrowInvalid) as err:
        raise DataError(f"{path}: not a readable Parquet score table ({err})") from None
    names = parquet.schema_arrow.names
    missing = [c for c in SCORE_COLUMNS if c not in names]
    if missing:
        raise DataError(f"{path}: the score table lacks the columns {missing}; expected {list(SCORE_COLUMNS)} (+ dropped)")
    columns = list(SCORE_COLUMNS) + (["dropped"] if "dropped" in names else [])
    yield from parquet.iter_batches(batch_size=batch_rows, columns=columns)


def query_pools(scores: pa.Table | str | Path, batch_rows: int = BATCH_ROWS) -> tuple[list[QueryPool], int]:
    """Group the scores table by query; returns the pools and the number of queries dropped
    (no positive or no negative among the candidates), in first-appearance order.

    ``scores`` is an Arrow table or the path of a ``scores.parquet`` (columns qid, docid, label,
    teacher, optionally dropped). A path is streamed ``batch_rows`` rows at a time, so memory is
    the pools themselves (one ``(docid, score)`` tuple per kept row, docid strings shared between
    queries) plus one batch, not the whole table in Arrow and again as Python lists. Both give
    identical pools.

    Rows whose ``dropped`` column is true (negatives removed by the score stage's de-noising) are
    skipped; a query left without negatives by them counts as dropped. A table without the column
    (written before de-noising existed) keeps every row.

    Raises:
        DataError: a path that is not a Parquet file, or lacks one of the columns.
    """
    pools: dict[str, QueryPool] = {}
    docids: dict[str, str] = {}  # one string object per distinct docid
    for batch in _record_batches(scores, batch_rows):
        n = batch.num_rows
        names = batch.schema.names
        dropped = batch.column(names.index("dropped")).to_pylist() if "dropped" in names else [False] * n
        qid_col, doc_col, label_col, teacher_col = (batch.column(names.index(c)).to_pylist() for c in SCORE_COLUMNS)
        for qid, docid, label, teacher, skip in zip(qid_col, doc_col, label_col, teacher_col, dropped, strict=True):
            pool = pools.get(qid)
            if pool is None:
                pool = pools[qid] = QueryPool(qid, [], [])
            if skip:
                continue
            docid = docids.setdefault(docid, docid)
            (pool.positives if label > 0 else pool.negatives).append((docid, float(teacher)))
    usable = [p for p in pools.values() if p.positives and p.negatives]
    return usable, len(pools) - len(usable)


def epoch_examples(pools: list[QueryPool], negatives_per_example: int, rng: np.random.Generator) -> list[Example]:
    """This epoch's examples: each query's negatives reshuffled and split into groups of n, each group
    paired with one of the query's positives (in turn); the examples shuffled.

    Every mined negative is seen once per epoch (a query with fewer than n negatives yields one group
    padded by resampling), and the grouping changes from epoch to epoch.
    """
    n = negatives_per_example
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
