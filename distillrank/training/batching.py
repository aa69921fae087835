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

The train stage holds less: :func:`pool_layout` reads a score table's layout alone (per query, and
the docid dictionary; :class:`ScoreTable`), :func:`epoch_plan` with ``part`` draws one rank's share
of every global batch, and :meth:`Pools.holding` reads the rows that share uses — a rank's memory
per pair is O(pairs / ranks) (docs/TRAINING.md, "Memory").
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from distillrank.columns import Distinct, coding_rows, open_parquet, sorted_unique
from distillrank.errors import DataError
from distillrank.workspace import file_fingerprint


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
        held: np.ndarray | None = None,
        source: tuple[ScoreTable, np.ndarray] | None = None,
    ) -> None:
        self.qids = _strings(qids)
        self.offsets = np.asarray(offsets, dtype=np.int64)
        self.n_pos = np.asarray(n_pos, dtype=np.int64)
        self.docs = np.asarray(docs, dtype=np.int32)
        self.teacher = np.asarray(teacher)
        self.docids = _strings(docids)
        self.held = held  # None: docs/teacher are every row's; else the rows they are (sorted)
        self.source = source  # the ScoreTable and its usable queries these pools are, to read rows from
        if len(self.offsets) != len(self.qids) + 1 or len(self.n_pos) != len(self.qids):
            raise ValueError("Pools: offsets must have one entry more than qids, n_pos one per qid")
        if len(self.docs) != (self.offsets[-1] if held is None else len(held)) or len(self.teacher) != len(self.docs):
            raise ValueError("Pools: docs and teacher must hold one entry per row (per held row)")

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
        return int(self.offsets[-1])

    def n_negatives(self) -> np.ndarray:
        """Negatives per query [Q]."""
        return np.diff(self.offsets) - self.n_pos

    @property
    def whole(self) -> bool:
        """Whether every row is held (else only :attr:`held`: the layout is whole either way)."""
        return self.held is None

    def _whole(self, what: str) -> None:
        if self.held is not None:
            raise ValueError(f"Pools.{what} needs every row; these pools hold {len(self.held)} of {self.n_rows}")

    def _at(self, rows: np.ndarray | slice) -> np.ndarray | slice:
        """Where rows ``rows`` are in :attr:`docs` / :attr:`teacher`.

        Raises:
            KeyError: a row these pools do not hold.
        """
        if self.held is None:
            return rows
        rows = np.arange(*rows.indices(self.n_rows)) if isinstance(rows, slice) else np.asarray(rows)
        slot = np.minimum(np.searchsorted(self.held, rows), max(len(self.held) - 1, 0))
        if len(rows) and (not len(self.held) or np.any(self.held[slot] != rows)):
            raise KeyError("rows these pools do not hold (Pools.holding loads them)")
        return slot

    def teacher_at(self, rows: np.ndarray) -> np.ndarray:
        """The teacher scores of rows ``rows`` (any shape)."""
        rows = np.asarray(rows)
        return self.teacher[self._at(rows.reshape(-1))].reshape(rows.shape)

    def _decode(self, rows: np.ndarray | slice) -> list[str]:
        return self.docids.take(pa.array(self.docs[self._at(rows)])).to_pylist()

    def holding(self, rows: np.ndarray | None = None) -> Pools:
        """These pools holding the rows ``rows`` (row indices; any order, repeats allowed; None:
        every row) and no others: read from the score table they came from (:class:`ScoreTable`),
        or taken from the held ones. Pools that hold every row are returned as they are."""
        if self.held is None:
            return self
        if rows is None:
            if self.source is None:
                raise ValueError("Pools.holding() of pools holding some rows needs the score table")
            return self.source[0].pools(self.source[1])
        rows = sorted_unique(np.asarray(rows, dtype=np.int64))
        if self.source is None:  # held rows only: a subset of them
            slot = self._at(rows)
            return Pools(self.qids, self.offsets, self.n_pos, self.docs[slot], self.teacher[slot], self.docids, rows)
        table, queries = self.source
        return table.pools(queries, rows)

    def __getitem__(self, i: int) -> QueryPool:
        start, mid, end = int(self.offsets[i]), int(self.offsets[i] + self.n_pos[i]), int(self.offsets[i + 1])
        docids, scores = self._decode(slice(start, end)), self.teacher_at(np.arange(start, end)).tolist()
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
        self._whole("__eq__")
        other._whole("__eq__")
        return (
            self.qids.equals(other.qids)
            and np.array_equal(self.offsets, other.offsets)
            and np.array_equal(self.n_pos, other.n_pos)
            and np.array_equal(self.teacher, other.teacher)
            and self._decode(slice(None)) == other._decode(slice(None))
        )

    def take(self, indices: Sequence[int] | np.ndarray) -> Pools:
        """The pools of queries ``indices``, in that order (the docid dictionary shared). Pools read
        from a score table that hold only some rows give the layout alone (:meth:`holding` reads)."""
        idx = np.asarray(indices, dtype=np.int64)
        if self.held is not None:
            if self.source is None:
                raise ValueError("Pools.take of pools holding some rows needs the score table they came from")
            table, queries = self.source
            return table.pools(queries[idx], rows=np.zeros(0, np.int64))
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
            source=(self.source[0], self.source[1][idx]) if self.source is not None else None,
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
        self._whole("first_positive_margins")
        sizes = np.diff(self.offsets)
        query = np.repeat(np.arange(len(self)), sizes)
        rank = np.arange(self.n_rows) - self.offsets[query]
        negative = rank >= self.n_pos[query]
        teacher = self.teacher.astype(np.float64)
        return np.abs(teacher[self.offsets[query[negative]]] - teacher[negative])

    def fingerprint(self) -> str:
        """sha256 of the content (qids, layout, docid codes and dictionary, teacher scores). Pools
        holding some rows of a score table: of the table's content and which of its queries these
        are (:meth:`ScoreTable.fingerprint`), without reading the rows into memory."""
        digest = hashlib.sha256()
        if self.held is not None:
            if self.source is None:
                raise ValueError("Pools.fingerprint of pools holding some rows needs the score table")
            table, queries = self.source
            digest.update(b"score-table:" + table.fingerprint().encode())
            digest.update(queries.astype(np.int64).tobytes())
            return digest.hexdigest()
        _hash_strings(digest, self.qids)
        _hash_strings(digest, self.docids)
        for array in (self.offsets, self.n_pos, self.docs, self.teacher):
            digest.update(str(array.dtype).encode())
            digest.update(np.ascontiguousarray(array).tobytes())
        return digest.hexdigest()

    def nbytes(self) -> int:
        """Bytes held by the arrays and the two string dictionaries."""
        held = () if self.held is None else (self.held,)
        arrays = sum(a.nbytes for a in (self.offsets, self.n_pos, self.docs, self.teacher, *held))
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
        parquet = open_parquet(path)
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


class ScoreTable:
    """A score table read once to know its layout: every query's code (first-appearance order),
    kept candidates and positives, and the docid dictionary — Python state per query and Arrow state
    per distinct docid, nothing per row. :meth:`pools` then reads it again for the rows asked for.

    ``scores`` is an Arrow table or the path of a ``scores.parquet`` (columns qid, docid, label,
    teacher, optionally dropped), read in batches, never whole. Rows whose ``dropped`` column is true
    (negatives removed by the score stage's de-noising) are skipped; a query left without a positive
    or a negative is not *usable* (it counts in :attr:`dropped`). A table without the column (written
    before de-noising existed) keeps every row.

    Raises:
        DataError: a path that is not a Parquet file, or lacks one of the columns.
    """

    def __init__(self, scores: pa.Table | str | Path, batch_rows: int = BATCH_ROWS) -> None:
        self.scores = scores if isinstance(scores, pa.Table) else Path(scores)
        self.batch_rows = batch_rows
        self._stat = self._file_state()
        self.codes = _QueryCodes()
        distinct = Distinct()
        sizes = np.zeros(0, np.int64)  # kept rows per query
        n_pos = np.zeros(0, np.int64)
        self.teacher_type: pa.DataType | None = None
        for batch in _record_batches(self.scores, batch_rows):
            qcode = self.codes(batch.column("qid"))  # every row: a query all dropped still counts
            keep = _kept(batch)
            positive = _positive(batch)
            n = len(self.codes.slot)
            sizes = _grown(sizes, n) + np.bincount(qcode[keep], minlength=n)
            n_pos = _grown(n_pos, n) + np.bincount(qcode[keep & positive], minlength=n)
            distinct.add(batch.column("docid").filter(pa.array(keep)))
            self.teacher_type = batch.schema.field("teacher").type
        self.sizes, self.n_pos = sizes, n_pos
        self.docids = distinct.values()
        self.usable = np.flatnonzero((n_pos > 0) & (sizes > n_pos))  # codes of the usable queries
        self.all_qids = self.codes.qids()

    def _file_state(self) -> tuple[int, int] | None:
        if isinstance(self.scores, pa.Table):
            return None
        try:
            stat = self.scores.stat()
        except OSError as err:
            raise DataError(f"{self.scores}: not a readable Parquet score table ({err})") from None
        return stat.st_size, stat.st_mtime_ns

    def _changed(self) -> DataError:
        where = "the score table" if isinstance(self.scores, pa.Table) else str(self.scores)
        return DataError(f"{where} changed while it was read")

    def __len__(self) -> int:
        """The number of usable queries."""
        return len(self.usable)

    @property
    def dropped(self) -> int:
        """Queries without a positive or a negative among their kept candidates."""
        return len(self.all_qids) - len(self.usable)

    def fingerprint(self) -> str:
        """sha256 of the table's content as the pools see it (the file's bytes for a path)."""
        digest = hashlib.sha256()
        if isinstance(self.scores, pa.Table):
            for batch in _record_batches(self.scores, self.batch_rows):
                for name in batch.schema.names:
                    column = batch.column(name)
                    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
                        _hash_strings(digest, column)
                    else:
                        digest.update(pc.fill_null(column, 0).to_numpy(zero_copy_only=False).tobytes())
        else:  # the workspace's file hash, memoised per (path, size, mtime)
            digest.update(file_fingerprint(self.scores).encode())
        return digest.hexdigest()

    def pools(self, queries: np.ndarray | None = None, rows: np.ndarray | None = None) -> Pools:
        """The pools of the usable queries ``queries`` (indices into them, in that order; None: all,
        in first-appearance order), holding the rows ``rows`` (sorted row indices of the result; None:
        every row; an empty array: none, the layout alone, for :meth:`Pools.holding` to fill).

        The second pass codes each wanted row's docid and writes it and its teacher score straight to
        its place — by query, positives first, table order within each. Memory: the rows held (about
        8 bytes each), the dictionaries and one batch; batches are at least as long as the docid
        dictionary (:func:`distillrank.columns.coding_rows`). A table and its Parquet file give
        identical pools.

        Raises:
            DataError: the table changed since it was first read.
        """
        chosen = self.usable if queries is None else self.usable[np.asarray(queries, dtype=np.int64)]
        sizes, n_pos = self.sizes[chosen], self.n_pos[chosen]
        offsets = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])
        n_all = len(self.sizes)
        selected = np.zeros(n_all, bool)
        selected[chosen] = True
        # where each chosen query's positives and negatives start: key 2q (positives), 2q + 1 (negatives)
        starts = np.zeros((n_all, 2), np.int64)
        starts[chosen, 0], starts[chosen, 1] = offsets[:-1], offsets[:-1] + n_pos
        expected = np.zeros((n_all, 2), np.int64)
        expected[chosen, 0], expected[chosen, 1] = n_pos, sizes - n_pos
        starts, expected = starts.reshape(-1), expected.reshape(-1)
        held = None if rows is None else np.asarray(rows, dtype=np.int64)
        if held is not None and len(held) == offsets[-1] and (not len(held) or held[-1] == len(held) - 1):
            held = None  # every row (sorted, each once): whole pools
        n_held = int(offsets[-1]) if held is None else len(held)
        wide = self.teacher_type is not None and pa.types.is_float64(self.teacher_type)
        docs = np.empty(n_held, np.int32)
        teacher = np.empty(n_held, np.float64 if wide else np.float32)
        if n_held:
            self._fill(selected, starts, expected, held, docs, teacher)
        return Pools(
            self.all_qids.take(pa.array(chosen)),
            offsets,
            n_pos,
            docs,
            teacher,
            self.docids,
            held=held,
            source=(self, np.asarray(queries if queries is not None else np.arange(len(self)), np.int64)),
        )

    def _fill(self, selected, starts, expected, held, docs, teacher) -> None:
        """The second pass: every wanted row's docid code and teacher score to its place."""
        if self._file_state() != self._stat:
            raise self._changed()
        n_queries = len(self.codes.slot)
        filled = np.zeros(len(starts), np.int64)
        got = 0
        for batch in _record_batches(self.scores, max(self.batch_rows, coding_rows(self.docids))):
            qcode = self.codes(batch.column("qid"))  # the codes of the first pass: every qid is known
            if len(self.codes.slot) != n_queries:
                raise self._changed()
            keep = _kept(batch) & selected[qcode]
            if not keep.any():
                continue
            positive = _positive(batch)
            key = 2 * qcode[keep] + ~positive[keep]
            at = starts[key] + filled[key] + _occurrence(key)
            filled += np.bincount(key, minlength=len(filled))
            if np.any(filled > expected):  # more rows than counted: they would land in another query's
                raise self._changed()
            if held is not None:  # the rows asked for: their places among the held rows
                slot = np.minimum(np.searchsorted(held, at), max(len(held) - 1, 0))
                wanted = held[slot] == at
                if not wanted.any():
                    continue
                at = slot[wanted]
                keep[np.flatnonzero(keep)[~wanted]] = False
            mask = pa.array(keep)
            got += len(at)
            docs[at] = pc.index_in(batch.column("docid").filter(mask), value_set=self.docids).to_numpy(
                zero_copy_only=False
            )
            teacher[at] = batch.column("teacher").filter(mask).to_numpy(zero_copy_only=False)
        if not np.array_equal(filled, expected) or got != len(docs):
            raise self._changed()


def pool_layout(scores: pa.Table | str | Path, batch_rows: int = BATCH_ROWS) -> tuple[Pools, int]:
    """:func:`query_pools` without the rows: every usable query's layout (qid, where its rows start,
    how many are positives) and the docid dictionary — memory per query and per distinct docid, none
    per pair; :meth:`Pools.holding` reads the rows an epoch (or a rank's share of it) needs. One pass
    over ``scores``."""
    table = ScoreTable(scores, batch_rows)
    if table.teacher_type is None:
        return Pools.empty(), 0
    return table.pools(rows=np.zeros(0, np.int64)), table.dropped


def query_pools(scores: pa.Table | str | Path, batch_rows: int = BATCH_ROWS) -> tuple[Pools, int]:
    """Group the scores table by query; returns the pools (every row held) and the number of queries
    dropped (no positive or no negative among the candidates), queries in first-appearance order.

    ``scores`` is an Arrow table or the path of a ``scores.parquet``, read twice in batches, never
    whole (:class:`ScoreTable`): memory is the pools themselves (about 8 bytes a pair), the
    dictionaries and one batch.

    Raises:
        DataError: a path that is not a Parquet file, or lacks one of the columns; a table that
            changed between the passes.
    """
    table = ScoreTable(scores, batch_rows)
    if table.teacher_type is None:
        return Pools.empty(), 0
    return table.pools(), table.dropped


@dataclass
class EpochPlan:
    """One epoch's examples as rows of :class:`Pools`: example ``e`` is query ``query[e]`` with the
    positive row ``rows[e, 0]`` and the negative rows ``rows[e, 1:]``.

    A plan of every example has ``bounds`` None: micro-batch ``j`` is examples ``j·B:(j+1)·B``. A
    rank's plan (:func:`epoch_plan` with ``part``) holds only that rank's share of each global
    micro-batch — the contiguous part :meth:`distillrank.sharding.Share.split` gives it —
    ``bounds[j]:bounds[j + 1]`` being batch ``j``'s; where its share of a batch is empty it holds
    that batch's first example instead, flagged in ``stand_in`` (trained with weight 0, so that the
    rank still joins the step's reductions). ``total`` is the whole epoch's number of examples.
    """

    query: np.ndarray  # [E] query indices
    rows: np.ndarray  # [E, 1 + n] row indices
    total: int = -1  # examples in the whole epoch; -1: len(query)
    batch_size: int = 0  # the global micro-batch a rank's plan was cut for
    bounds: np.ndarray | None = None  # [batches + 1]: where each batch's held examples start
    stand_in: np.ndarray | None = None  # [batches] bool: the rank's share is empty, its one example a stand-in

    def __post_init__(self) -> None:
        if self.total < 0:
            self.total = len(self.query)

    def __len__(self) -> int:
        return len(self.query)

    def examples(self, pools: Pools, start: int, stop: int) -> list[Example]:
        """Held examples ``start:stop`` of the plan, made from the pools' arrays."""
        rows = self.rows[start:stop]
        qids = pools.qids.take(pa.array(self.query[start:stop])).to_pylist()
        docids = pools._decode(rows.reshape(-1))
        teacher = pools.teacher_at(rows).tolist()
        width = rows.shape[1]
        return [Example(qid, docids[b * width : (b + 1) * width], teacher[b]) for b, qid in enumerate(qids)]

    def batch(self, pools: Pools, j: int, batch_size: int) -> tuple[list[Example], np.ndarray, int, bool]:
        """Micro-batch ``j``: its held examples, their query indices, the size of the global batch
        and whether the examples are a stand-in (a rank's plan whose share of it is empty) — the
        batches starting over when the examples run out (an epoch can be longer than the ranking
        stream when feature texts are more); ([], [], 0, False) without examples."""
        if not self.total:
            return [], np.zeros(0, np.int64), 0, False
        if self.bounds is not None and batch_size != self.batch_size:
            raise ValueError(f"a rank's plan cut for batches of {self.batch_size} asked for {batch_size}")
        j %= -(-self.total // batch_size)
        size = min(batch_size, self.total - j * batch_size)
        if self.bounds is None:
            start, stop, stand_in = j * batch_size, j * batch_size + size, False
        else:
            assert self.stand_in is not None
            start, stop, stand_in = int(self.bounds[j]), int(self.bounds[j + 1]), bool(self.stand_in[j])
        return self.examples(pools, start, stop), self.query[start:stop], size, stand_in

    def rows_needed(self, pools: Pools, positives: bool) -> np.ndarray:
        """The rows this plan's examples read (and, with ``positives``, every positive row of their
        queries, for :meth:`Pools.positives`), sorted, each once."""
        parts = [self.rows.reshape(-1)]
        if positives and len(self.query):
            q = sorted_unique(self.query)
            parts.append(_ranges(pools.offsets[q], pools.n_pos[q]))
        return sorted_unique(np.concatenate(parts).astype(np.int64))


def _ranges(starts: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """The integers of ranges ``[starts[i], starts[i] + sizes[i])``, concatenated."""
    ends = np.cumsum(sizes, dtype=np.int64)
    return np.repeat(np.asarray(starts, np.int64) - (ends - sizes), sizes) + np.arange(ends[-1] if len(ends) else 0)


def examples_per_epoch(pools: Pools | Sequence[QueryPool], negatives_per_example: int) -> int:
    """How many examples :func:`epoch_plan` makes (no draw needed: max(1, negatives // n) per query)."""
    pools = as_pools(pools)
    return int(np.maximum(pools.n_negatives() // negatives_per_example, 1).sum()) if len(pools) else 0


def _draw(rng: np.random.Generator, n_pos: int, n_neg: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """One query's draws: its negatives' order (padded by a resample when fewer than ``n``) and its
    positives' order — in the order the list-of-objects code drew them."""
    order = rng.permutation(n_neg)
    if len(order) < n:
        order = rng.choice(n_neg, size=n, replace=True)
    return order, rng.permutation(n_pos)


def _shuffle(rng: np.random.Generator, total: int) -> np.ndarray:
    """``rng.permutation(total)`` — the same draws, the same order — in 4 bytes an example (int32)
    rather than 8 where ``total`` allows."""
    order = np.arange(total, dtype=np.int32 if total < 2**31 else np.int64)
    rng.shuffle(order)
    return order


def _layout(pools: Pools) -> zip:
    return zip(pools.offsets[:-1].tolist(), pools.n_pos.tolist(), pools.n_negatives().tolist(), strict=True)


def epoch_plan(
    pools: Pools | Sequence[QueryPool],
    negatives_per_example: int,
    rng: np.random.Generator,
    part: tuple[int, int, int] | None = None,
) -> EpochPlan:
    """This epoch's examples: each query's negatives reshuffled and split into groups of n, each group
    paired with one of the query's positives (in turn); the examples shuffled.

    Every mined negative is seen once per epoch (a query with fewer than n negatives yields one group
    padded by resampling), and the grouping changes from epoch to epoch. The generator is drawn from
    per query exactly as the list-of-objects code did (negatives permuted, padded by a resample when
    fewer than n, positives permuted), then once to shuffle the examples. Only the pools' layout is
    read (:attr:`Pools.offsets`, :attr:`Pools.n_pos`), never their rows.

    ``part=(rank, world, batch_size)``: the plan of one rank of ``world``, holding only its share of
    each global micro-batch of ``batch_size`` (:class:`EpochPlan`) — the same examples as the whole
    plan's, drawn from ``rng`` in the same way (the generator left in the same state), in a rank's
    memory: the per-query draws are made twice (once to reach the shuffle, once from the saved
    state to fill the rank's rows) so that nothing per example is kept but the shuffle itself
    (4 bytes an example, while the plan is made) and the rank's share.
    """
    pools = as_pools(pools)
    n = negatives_per_example
    total = examples_per_epoch(pools, n)
    q_type = np.int32 if len(pools) < 2**31 else np.int64
    r_type = np.int32 if pools.n_rows < 2**31 else np.int64
    if part is None or part[1] == 1:
        query = np.empty(total, dtype=q_type)
        rows = np.empty((total, 1 + n), dtype=r_type)
        e = 0
        for i, (start, n_pos, n_neg) in enumerate(_layout(pools)):
            order, pos_order = _draw(rng, n_pos, n_neg, n)
            k = len(order) // n
            query[e : e + k] = i
            rows[e : e + k, 0] = start + pos_order[np.arange(k) % n_pos]
            rows[e : e + k, 1:] = (start + n_pos) + order[: k * n].reshape(k, n)
            e += k
        perm = _shuffle(rng, total)
        return EpochPlan(query[perm], rows[perm])
    rank, world, batch_size = part
    saved = rng.bit_generator.state
    for _, n_pos, n_neg in _layout(pools):  # to the shuffle's draw
        _draw(rng, n_pos, n_neg, n)
    shuffle = _shuffle(rng, total)
    # this rank's positions in each global batch (Share.span), a stand-in where its share is empty
    first = np.arange(0, total, batch_size, dtype=np.int64)
    size = np.minimum(batch_size, total - first)
    lo, hi = first + rank * size // world, first + (rank + 1) * size // world
    stand_in = hi <= lo
    lo, hi = np.where(stand_in, first, lo), np.where(stand_in, first + 1, hi)
    bounds = np.concatenate([[0], np.cumsum(hi - lo)])
    example = shuffle[_ranges(lo, hi - lo)].astype(np.int64)  # each held position's unshuffled example
    del shuffle
    replay = np.random.Generator(type(rng.bit_generator)())
    replay.bit_generator.state = saved
    k_all = np.maximum(pools.n_negatives() // n, 1)
    begin = np.concatenate([[0], np.cumsum(k_all)])  # query i's unshuffled examples start at begin[i]
    by_example = np.argsort(example, kind="stable")
    sorted_examples = example[by_example]
    cut = np.searchsorted(sorted_examples, begin)  # held examples of query i: by_example[cut[i]:cut[i + 1]]
    query = np.empty(len(example), dtype=q_type)
    rows = np.empty((len(example), 1 + n), dtype=r_type)
    for i, (start, n_pos, n_neg) in enumerate(_layout(pools)):
        order, pos_order = _draw(replay, n_pos, n_neg, n)
        a, b = cut[i], cut[i + 1]
        if a == b:
            continue
        at = by_example[a:b]
        group = sorted_examples[a:b] - begin[i]
        query[at] = i
        rows[at, 0] = start + pos_order[group % n_pos]
        rows[at, 1:] = (start + n_pos) + order[: len(order) // n * n].reshape(-1, n)[group]
    return EpochPlan(query, rows, total, batch_size, bounds, stand_in)


def epoch_examples(
    pools: Pools | Sequence[QueryPool], negatives_per_example: int, rng: np.random.Generator
) -> list[Example]:
    """This epoch's examples as objects (:func:`epoch_plan` made whole; for tools and tests — the
    training loop makes each batch's alone)."""
    pools = as_pools(pools)
    plan = epoch_plan(pools, negatives_per_example, rng)
    return plan.examples(pools, 0, len(plan))
