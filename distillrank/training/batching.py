"""Training examples from the scored candidates: one query, one positive, n negatives.

The scored candidates are held columnar (:class:`Pools`): every usable query's rows grouped in one
CSR layout of numpy arrays — ``offsets`` (where each query's rows start), ``n_pos`` (how many of them,
first, are positives), ``docs`` (int32 codes into one docid dictionary, an Arrow string array) and
``teacher`` (the teacher's scores) — about 8 bytes per scored pair plus the distinct docids once,
where a list of Python tuples took 110–250 bytes. An epoch's examples are an :class:`EpochPlan` of
row indices into those arrays (a few bytes per pair); each batch's :class:`Example` objects are made
from it when the batch is trained on, never the whole epoch's.

The draws are those of the list-of-objects code this replaced, in the same order from the same
generator, so a seed gives the same examples in the same order (``tests/training/test_columnar_pools.py``
pins it against a reference implementation of the old code).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from distillrank.columns import Distinct, coding_rows
from distillrank.errors import DataError


@dataclass
class QueryPool:
    """One training query's scored candidates (the row view of one query of :class:`Pools`)."""

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
BATCH_ROWS = 1 << 20  # a row group as pyarrow writes it: ~40 MB a batch; fewer merges of the docid set (6.1 -> 4.5 s at 10M rows)


def _strings(values: Sequence[str] | pa.Array) -> pa.Array:
    return values if isinstance(values, pa.Array) else pa.array(list(values), pa.string())


def _hash_strings(digest, values: pa.Array) -> None:
    """Feed an Arrow string array's content (offsets relative to its first value, then its bytes)."""
    if not len(values):
        return
    kind = np.int64 if pa.types.is_large_string(values.type) else np.int32
    buffer = values.buffers()[1]
    offsets = np.frombuffer(buffer, dtype=kind)[values.offset : values.offset + len(values) + 1].astype(
        np.int64
    )
    digest.update((offsets - offsets[0]).tobytes())
    data = values.buffers()[2]
    if data is not None:
        digest.update(memoryview(data)[int(offsets[0]) : int(offsets[-1])])


class Pools:
    """Every usable training query's scored candidates, columnar.

    Query ``i`` (``qids[i]``) owns rows ``offsets[i]:offsets[i + 1]``; the first ``n_pos[i]`` of them
    are its positives, the rest its negatives, each group in table order. Row ``r`` is the candidate
    ``docids[docs[r]]`` with teacher score ``teacher[r]``.
    """

    def __init__(
        self,
        qids: Sequence[str] | pa.Array,
        offsets: np.ndarray,
        n_pos: np.ndarray,
        docs: np.ndarray,
        teacher: np.ndarray,
        docids: Sequence[str] | pa.Array,
    ) -> None:
        self.qids = _strings(qids)
        self.offsets = np.asarray(offsets, dtype=np.int64)
        self.n_pos = np.asarray(n_pos, dtype=np.int64)
        self.docs = np.asarray(docs, dtype=np.int32)
        self.teacher = np.asarray(teacher)
        self.docids = _strings(docids)
        if len(self.offsets) != len(self.qids) + 1 or len(self.n_pos) != len(self.qids):
            raise ValueError("Pools: offsets must have one entry more than qids, n_pos one per qid")

    @classmethod
    def from_query_pools(cls, pools: Sequence[QueryPool]) -> Pools:
        """The columnar form of row-wise pools (tests, benchmarks; teacher scores kept as float64)."""
        slot: dict[str, int] = {}
        docs: list[int] = []
        teacher: list[float] = []
        sizes, n_pos = [], []
        for pool in pools:
            for docid, score in pool.positives + pool.negatives:
                docs.append(slot.setdefault(docid, len(slot)))
                teacher.append(score)
            sizes.append(len(pool.positives) + len(pool.negatives))
            n_pos.append(len(pool.positives))
        offsets = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])
        return cls([p.qid for p in pools], offsets, n_pos, docs, np.asarray(teacher, np.float64), list(slot))

    @classmethod
    def empty(cls) -> Pools:
        return cls([], np.zeros(1, np.int64), [], [], np.zeros(0, np.float32), [])

    def __len__(self) -> int:
        return len(self.qids)

    @property
    def n_rows(self) -> int:
        return len(self.docs)

    def n_negatives(self) -> np.ndarray:
        """Negatives per query [Q]."""
        return np.diff(self.offsets) - self.n_pos

    def _decode(self, rows: np.ndarray | slice) -> list[str]:
        return self.docids.take(pa.array(self.docs[rows])).to_pylist()

    def __getitem__(self, i: int) -> QueryPool:
        start, mid, end = int(self.offsets[i]), int(self.offsets[i] + self.n_pos[i]), int(self.offsets[i + 1])
        docids, scores = self._decode(slice(start, end)), self.teacher[start:end].tolist()
        k = mid - start
        return QueryPool(
            self.qids[i].as_py(),
            list(zip(docids[:k], scores[:k], strict=True)),
            list(zip(docids[k:], scores[k:], strict=True)),
        )

    def __iter__(self) -> Iterator[QueryPool]:
        return (self[i] for i in range(len(self)))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Pools):
            return NotImplemented
        return (
            self.qids.equals(other.qids)
            and np.array_equal(self.offsets, other.offsets)
            and np.array_equal(self.n_pos, other.n_pos)
            and np.array_equal(self.teacher, other.teacher)
            and self._decode(slice(None)) == other._decode(slice(None))
        )

    def take(self, indices: Sequence[int] | np.ndarray) -> Pools:
        """The pools of queries ``indices``, in that order (the docid dictionary shared)."""
        idx = np.asarray(indices, dtype=np.int64)
        starts, sizes = self.offsets[idx], np.diff(self.offsets)[idx]
        offsets = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])
        rows = np.repeat(starts - offsets[:-1], sizes) + np.arange(offsets[-1], dtype=np.int64)
        return Pools(
            self.qids.take(pa.array(idx)),
            offsets,
            self.n_pos[idx],
            self.docs[rows],
            self.teacher[rows],
            self.docids,
        )

    def positives(self, queries: Sequence[int] | np.ndarray) -> dict[str, set[str]]:
        """qid -> its positive docids, for the queries ``queries`` (indices)."""
        out: dict[str, set[str]] = {}
        for i in np.unique(np.asarray(queries, dtype=np.int64)).tolist():
            start = int(self.offsets[i])
            out[self.qids[i].as_py()] = set(self._decode(slice(start, start + int(self.n_pos[i]))))
        return out

    def first_positive_margins(self) -> np.ndarray:
        """|teacher(first positive) - teacher(negative)| for every negative of every query (float64)."""
        sizes = np.diff(self.offsets)
        query = np.repeat(np.arange(len(self)), sizes)
        rank = np.arange(self.n_rows) - self.offsets[query]
        negative = rank >= self.n_pos[query]
        teacher = self.teacher.astype(np.float64)
        return np.abs(teacher[self.offsets[query[negative]]] - teacher[negative])

    def fingerprint(self) -> str:
        """sha256 of the content (qids, layout, docid codes and dictionary, teacher scores)."""
        digest = hashlib.sha256()
        _hash_strings(digest, self.qids)
        _hash_strings(digest, self.docids)
        for array in (self.offsets, self.n_pos, self.docs, self.teacher):
            digest.update(str(array.dtype).encode())
            digest.update(np.ascontiguousarray(array).tobytes())
        return digest.hexdigest()

    def nbytes(self) -> int:
        """Bytes held by the arrays and the two string dictionaries."""
        arrays = sum(a.nbytes for a in (self.offsets, self.n_pos, self.docs, self.teacher))
        return arrays + self.qids.nbytes + self.docids.nbytes


def as_pools(pools: Pools | Sequence[QueryPool]) -> Pools:
    """``pools`` columnar (row-wise :class:`QueryPool` lists converted)."""
    return pools if isinstance(pools, Pools) else Pools.from_query_pools(list(pools))


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
        raise DataError(
            f"{path}: the score table lacks the columns {missing}; expected {list(SCORE_COLUMNS)} (+ dropped)"
        )
    columns = list(SCORE_COLUMNS) + (["dropped"] if "dropped" in names else [])
    yield from parquet.iter_batches(batch_size=batch_rows, columns=columns)


class _QueryCodes:
    """Every qid's code, in order of first appearance (the queries of a table are few against its
    rows: one Python dict entry a query, the rows coded through each batch's own dictionary)."""

    def __init__(self) -> None:
        self.slot: dict[str, int] = {}

    def __call__(self, qids: pa.Array) -> np.ndarray:
        encoded = pc.dictionary_encode(qids)
        local = np.fromiter(
            (self.slot.setdefault(q, len(self.slot)) for q in encoded.dictionary.to_pylist()), np.int64
        )
        return local[encoded.indices.to_numpy(zero_copy_only=False)] if len(local) else np.zeros(0, np.int64)

    def qids(self) -> pa.Array:
        return pa.array(list(self.slot), pa.string())


def _kept(batch: pa.RecordBatch) -> np.ndarray:
    """Rows not removed by the score stage's de-noising (every row without a ``dropped`` column)."""
    if "dropped" in batch.schema.names:
        return ~pc.fill_null(batch.column("dropped"), False).to_numpy(zero_copy_only=False)
    return np.ones(batch.num_rows, dtype=bool)


def _positive(batch: pa.RecordBatch) -> np.ndarray:
    """Rows whose label is above 0 (a null label is not a positive)."""
    return pc.fill_null(pc.greater(batch.column("label"), 0), False).to_numpy(zero_copy_only=False)


def _grown(counts: np.ndarray, n: int) -> np.ndarray:
    return counts if len(counts) >= n else np.concatenate([counts, np.zeros(n - len(counts), counts.dtype)])


def _occurrence(keys: np.ndarray) -> np.ndarray:
    """For each element, how many equal keys come before it (its rank among its equals, in order)."""
    order = np.argsort(keys, kind="stable")
    ranked = keys[order]
    first = np.empty(len(ranked), bool)
    first[:1] = True
    np.not_equal(ranked[1:], ranked[:-1], out=first[1:])
    starts = np.flatnonzero(first)
    sizes = np.diff(np.append(starts, len(ranked)))
    out = np.empty(len(keys), np.int64)
    out[order] = np.arange(len(ranked)) - np.repeat(starts, sizes)
    return out


def query_pools(scores: pa.Table | str | Path, batch_rows: int = BATCH_ROWS) -> tuple[Pools, int]:
    """Group the scores table by query; returns the pools and the number of queries dropped
    (no positive or no negative among the candidates), queries in first-appearance order.

    ``scores`` is an Arrow table or the path of a ``scores.parquet`` (columns qid, docid, label,
    teacher, optionally dropped), read twice in batches, never whole: the first pass counts each
    query's candidates and positives and collects the docid dictionary (Python state per query and
    Arrow state per distinct docid, nothing per row); the second codes every row's docid and writes
    it and its teacher score straight to its place in the pools' arrays — by query, positives first,
    table order within each. Memory: the pools themselves (about 8 bytes a pair), the dictionaries
    and one batch; batches of the second pass are at least as long as the docid dictionary
    (:func:`distillrank.columns.coding_rows`). A table and its Parquet file give identical pools.

    Rows whose ``dropped`` column is true (negatives removed by the score stage's de-noising) are
    skipped; a query left without negatives by them counts as dropped. A table without the column
    (written before de-noising existed) keeps every row.

    Raises:
        DataError: a path that is not a Parquet file, or lacks one of the columns.
    """
    codes = _QueryCodes()
    distinct = Distinct()
    sizes = np.zeros(0, np.int64)  # kept rows per query
    n_pos = np.zeros(0, np.int64)
    teacher_type = None
    for batch in _record_batches(scores, batch_rows):
        qcode = codes(batch.column("qid"))  # every row: a query all dropped still counts
        keep = _kept(batch)
        positive = _positive(batch)
        n = len(codes.slot)
        sizes = _grown(sizes, n) + np.bincount(qcode[keep], minlength=n)
        n_pos = _grown(n_pos, n) + np.bincount(qcode[keep & positive], minlength=n)
        distinct.add(batch.column("docid").filter(pa.array(keep)))
        teacher_type = batch.schema.field("teacher").type
    if teacher_type is None:
        return Pools.empty(), 0
    docids = distinct.values()
    usable = (n_pos > 0) & (sizes > n_pos)
    offsets = np.concatenate([[0], np.cumsum(np.where(usable, sizes, 0), dtype=np.int64)])
    # where each query's positives and negatives start: key 2q (positives) and 2q + 1 (negatives)
    starts = np.stack([offsets[:-1], offsets[:-1] + n_pos], axis=1).reshape(-1)
    expected = np.stack([n_pos, sizes - n_pos], axis=1).reshape(-1) * np.repeat(usable, 2)
    filled = np.zeros(len(starts), np.int64)
    docs = np.empty(offsets[-1], np.int32)
    teacher = np.empty(offsets[-1], np.float64 if pa.types.is_float64(teacher_type) else np.float32)
    n_queries = len(codes.slot)
    changed = DataError(f"{scores if not isinstance(scores, pa.Table) else 'the score table'} changed while it was read")
    for batch in _record_batches(scores, max(batch_rows, coding_rows(docids))):
        qcode = codes(batch.column("qid"))  # the codes of the first pass: every qid is known
        if len(codes.slot) != n_queries:
            raise changed
        keep = _kept(batch) & usable[qcode]
        if not keep.any():
            continue
        positive = _positive(batch)
        key = 2 * qcode[keep] + ~positive[keep]
        at = starts[key] + filled[key] + _occurrence(key)
        filled += np.bincount(key, minlength=len(filled))
        if np.any(filled > expected):  # more rows than counted: they would land in another query's
            raise changed
        mask = pa.array(keep)
        docs[at] = pc.index_in(batch.column("docid").filter(mask), value_set=docids).to_numpy(zero_copy_only=False)
        teacher[at] = batch.column("teacher").filter(mask).to_numpy(zero_copy_only=False)
    if not np.array_equal(filled, expected):
        raise changed
    qids = codes.qids()
    ends = offsets[np.concatenate([[True], usable])]  # an unusable query adds no rows
    pools = Pools(qids.filter(pa.array(usable)), ends, n_pos[usable], docs, teacher, docids)
    return pools, int(len(qids) - usable.sum())


@dataclass
class EpochPlan:
    """One epoch's examples as rows of :class:`Pools`: example ``e`` is query ``query[e]`` with the
    positive row ``rows[e, 0]`` and the negative rows ``rows[e, 1:]``."""

    query: np.ndarray  # [E] query indices
    rows: np.ndarray  # [E, 1 + n] row indices

    def __len__(self) -> int:
        return len(self.query)

    def examples(self, pools: Pools, start: int, stop: int) -> list[Example]:
        """Examples ``start:stop`` of the epoch, made from the pools' arrays."""
        rows = self.rows[start:stop]
        qids = pools.qids.take(pa.array(self.query[start:stop])).to_pylist()
        docids = pools._decode(rows.reshape(-1))
        teacher = pools.teacher[rows].tolist()
        width = rows.shape[1]
        return [Example(qid, docids[b * width : (b + 1) * width], teacher[b]) for b, qid in enumerate(qids)]

    def batch(self, pools: Pools, j: int, batch_size: int) -> tuple[list[Example], np.ndarray]:
        """Micro-batch ``j`` (its examples and their query indices), starting over when the
        examples run out (an epoch can be longer than the ranking stream when feature texts are
        more); ([], []) without examples."""
        if not len(self):
            return [], np.zeros(0, np.int64)
        n = -(-len(self) // batch_size)
        start = (j % n) * batch_size
        stop = min(start + batch_size, len(self))
        return self.examples(pools, start, stop), self.query[start:stop]


def examples_per_epoch(pools: Pools | Sequence[QueryPool], negatives_per_example: int) -> int:
    """How many examples :func:`epoch_plan` makes (no draw needed: max(1, negatives // n) per query)."""
    pools = as_pools(pools)
    return int(np.maximum(pools.n_negatives() // negatives_per_example, 1).sum()) if len(pools) else 0


def epoch_plan(
    pools: Pools | Sequence[QueryPool], negatives_per_example: int, rng: np.random.Generator
) -> EpochPlan:
    """This epoch's examples: each query's negatives reshuffled and split into groups of n, each group
    paired with one of the query's positives (in turn); the examples shuffled.

    Every mined negative is seen once per epoch (a query with fewer than n negatives yields one group
    padded by resampling), and the grouping changes from epoch to epoch. The generator is drawn from
    per query exactly as the list-of-objects code did (negatives permuted, padded by a resample when
    fewer than n, positives permuted), then once to shuffle the examples.
    """
    pools = as_pools(pools)
    n = negatives_per_example
    total = examples_per_epoch(pools, n)
    query = np.empty(total, dtype=np.int32 if len(pools) < 2**31 else np.int64)
    rows = np.empty((total, 1 + n), dtype=np.int32 if pools.n_rows < 2**31 else np.int64)
    e = 0
    for i, (start, n_pos, n_neg) in enumerate(
        zip(pools.offsets[:-1].tolist(), pools.n_pos.tolist(), pools.n_negatives().tolist(), strict=True)
    ):
        order = rng.permutation(n_neg)
        if len(order) < n:
            order = rng.choice(n_neg, size=n, replace=True)
        k = len(order) // n
        pos_order = rng.permutation(n_pos)
        query[e : e + k] = i
        rows[e : e + k, 0] = start + pos_order[np.arange(k) % n_pos]
        rows[e : e + k, 1:] = (start + n_pos) + order[: k * n].reshape(k, n)
        e += k
    perm = rng.permutation(total)
    return EpochPlan(query[perm], rows[perm])


def epoch_examples(
    pools: Pools | Sequence[QueryPool], negatives_per_example: int, rng: np.random.Generator
) -> list[Example]:
    """This epoch's examples as objects (:func:`epoch_plan` made whole; for tools and tests — the
    training loop makes each batch's alone)."""
    pools = as_pools(pools)
    plan = epoch_plan(pools, negatives_per_example, rng)
    return plan.examples(pools, 0, len(plan))
