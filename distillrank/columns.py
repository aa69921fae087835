"""Column helpers shared by the score cache (:mod:`distillrank.teachers.cache`) and the training
pools (:mod:`distillrank.training.batching`): both read millions of (qid, docid) rows in batches and
keep numbers, never a Python object per row.

Two costs that grow with the collection are avoided here rather than in each caller:

* ``pyarrow.compute.index_in`` / ``is_in`` hash their whole value set on every call, so coding a
  fixed number of rows at a time against 1M ids costs O(rows / batch x ids); :func:`coding_rows`
  says how long a batch must be for the hashing to stay linear in the rows.
* numpy 2.3+ takes a hash path for a plain ``np.unique`` of integers, 50x slower on millions of
  int64 keys than a sort and a mask (:func:`sorted_unique`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq


def sorted_unique(values: np.ndarray) -> np.ndarray:
    """``numpy.unique(values)`` of an integer array, by a sort and a mask (1.5 s against 0.03 s for
    2M int64 keys with numpy 2.4's hash path)."""
    out = np.sort(values)
    if len(out) > 1:
        keep = np.empty(len(out), bool)
        keep[0] = True
        np.not_equal(out[1:], out[:-1], out=keep[1:])
        out = out[keep]
    return out


def coding_rows(*value_sets: pa.Array) -> int:
    """Rows to code at once against ``value_sets`` (``index_in``): as many as the longest holds.

    Batches at least as long as the value set keep the hashing linear in the rows (at most twice
    their cost) — at MS MARCO's 8.8M passages and 45M pairs, a fixed 131k-row batch would build
    hundreds of hash tables of 8.8M strings — for O(distinct ids) memory, which the caller holds
    already."""
    return max((len(v) for v in value_sets), default=0)


class Distinct:
    """The distinct values of string batches, in order of first appearance, merged when the batches
    seen since the last merge are as many as the values so far (amortised: each merge costs at
    most twice what it adds). Memory: O(distinct values), whatever the rows."""

    def __init__(self) -> None:
        self._values: pa.Array = pa.array([], pa.string())
        self._pending: list[pa.Array] = []
        self._held = 0

    def add(self, batch: pa.Array) -> None:
        batch = pc.unique(batch)
        self._pending.append(batch)
        self._held += len(batch)
        if self._held >= len(self._values):
            self._merge()

    def _merge(self) -> None:
        if self._pending:
            self._values = pc.unique(pa.chunked_array([self._values, *self._pending]))
            self._pending, self._held = [], 0

    def values(self) -> pa.Array:
        self._merge()
        return self._values


Reduce = Callable[[np.ndarray, str], np.ndarray]
"""Combines per-group statistics (arrays, one entry per query) over workers that each hold part of
the rows: ``reduce(values, how)``, ``how`` one of ``sum``, ``min``, ``max`` — an all-reduce over the
ranks of a ``torchrun`` group (:func:`distillrank.sharding.reduce_array`) in the score stage."""



def one_worker(values: np.ndarray, how: str) -> np.ndarray:
    """The :data:`Reduce` of a single worker: its statistics are everyone's."""
    return values


ROW_CHUNK = 1 << 20  # rows per slice of per-row work: temporaries of one slice, not of every row


def row_slices(n: int, chunk: int | None = None, first_row: int = 0):
    """``slice`` objects covering ``range(n)`` in order, ``chunk`` rows each (default
    :data:`ROW_CHUNK`; the first and last may be shorter).

    ``first_row`` is the position of row 0 among a larger set of rows split into parts (the score
    stage's ranks each hold one row range of the candidates): the cuts fall where they fall for the
    whole set, at multiples of ``chunk`` of its numbering, so sums accumulated slice by slice add the
    same numbers in the same order whichever part holds them."""
    chunk = chunk or ROW_CHUNK
    start = 0
    while start < n:
        stop = min(n, start + chunk - (first_row + start) % chunk)
        yield slice(start, stop)
        start = stop


def group_codes(groups: np.ndarray) -> tuple[np.ndarray, int]:
    """Dense group ids of ``groups`` [N] and how many there are.

    Non-negative integer codes no larger than the rows (e.g. the query codes of
    :class:`distillrank.teachers.cache.RowScores`) are used as they are, without the int64 inverse
    and the sort of ``np.unique``; other values (strings, sparse integers) are coded by
    ``np.unique``. Empty groups may result from the former; callers only read groups that have rows.
    """
    values = np.asarray(groups)
    if np.issubdtype(values.dtype, np.integer):
        if not len(values):
            return values, 0
        low, high = int(values.min()), int(values.max())
        if low >= 0 and high <= 2 * len(values):
            return values, high + 1
    _, inverse = np.unique(values, return_inverse=True)
    inverse = inverse.reshape(-1)
    return inverse, int(inverse.max()) + 1 if len(inverse) else 0


def group_cuts(first: np.ndarray, last: np.ndarray, n: int, parts: int) -> list[int]:
    """Where to cut rows ``range(n)`` into ``parts`` consecutive ranges that split no group, each
    about ``n / parts`` rows: ``parts + 1`` non-decreasing positions from 0 to ``n``; range ``r`` is
    ``range(cuts[r], cuts[r + 1])``.

    Each cut is the first row at or after ``r * n // parts`` where no group has rows on both sides.
    Groups whose rows are contiguous (the mine stage writes each query's candidates together) can be
    cut anywhere between them; interleaved groups leave fewer places, and a range may be empty.

    Args:
        first / last: the first and last row of each group (-1 for a group without rows).
    """
    have = np.asarray(last) >= 0
    starts, ends = np.asarray(first)[have], np.asarray(last)[have]
    order = np.argsort(starts, kind="stable")
    starts, ends = starts[order], ends[order]
    reach = np.maximum.accumulate(ends) if len(ends) else ends  # the last row of the groups so far
    # before a group's first row, when every group that starts earlier has ended
    places = np.concatenate([[0], starts[1:][reach[:-1] < starts[1:]], [n]]).astype(np.int64)
    targets = np.array([r * n // parts for r in range(1, parts)], np.int64)
    return [0, *(int(c) for c in places[np.searchsorted(places, targets)]), n]


def open_parquet(path: str | Path) -> pq.ParquetFile:
    """``path`` opened to be read in batches, with Arrow's pre-buffering off.

    pyarrow 26 opens a ``ParquetFile`` with ``pre_buffer=True`` (coalesced reads, for object
    stores), and ``iter_batches`` then held what it had read of the file until the iteration ended:
    iterating every column of a 10M-row, 150 MB ``scores.parquet`` in batches of 1Mi rows peaked at
    255 MB above the start, 132 MB for 2M rows; with it off, 114 and 113 MB, in the same time
    (0.84 against 0.90 s; ``docs/TRAINING.md``, "Memory"). A stage reading a file in batches
    holds one batch, whatever the file's size."""
    return pq.ParquetFile(path, pre_buffer=False)


def range_batches(
    source: pq.ParquetFile, columns: list[str], rows: range | None, batch_rows: int
) -> Iterator[pa.RecordBatch]:
    """The record batches (``columns``, ``batch_rows`` rows or fewer) of the rows ``rows`` of an open
    Parquet file (all of them for None), in order: only the row groups that hold them are read."""
    groups, at, offset = [], 0, 0
    for g in range(source.metadata.num_row_groups):
        n = source.metadata.row_group(g).num_rows
        if rows is None or (at < rows.stop and at + n > rows.start):
            offset = offset if groups else at
            groups.append(g)
        at += n
    if not groups:
        return
    at = offset
    for batch in source.iter_batches(batch_size=batch_rows, columns=columns, row_groups=groups):
        lo, hi = at, at + batch.num_rows
        if rows is not None:
            lo, hi = max(rows.start, lo), min(rows.stop, hi)
        if hi > lo:
            yield batch if hi - lo == batch.num_rows else batch.slice(lo - at, hi - lo)
        at += batch.num_rows
