"""Teacher scores of (qid, docid) pairs, cached per teacher and collection, scored only where missing.

Scores are cached per (teacher fingerprint, collection) in ``<cache root>/scores/`` as Parquet
shards of ``qid, docid, score``: any later run — another experiment, a deeper mining, the queries
stage's consistency filter — scores only the pairs missing there, and a killed run resumes after
its last complete shard. An ensemble teacher is scored member by member, each through its own cache.

Pairs are held as columns, never as a Python object per pair: the ids as Arrow arrays, each
distinct pair as one int64 key (:class:`PairIndex`), the cache joined to them shard by shard with
integer keys (:meth:`ScoreCache.lookup`); texts are looked up one shard at a time.

The work can be shared by several workers (:mod:`distillrank.sharding`): the distinct pairs, in
``(docid, qid)`` order, are cut into blocks of ``shard_size`` pairs and block ``b`` is worker
``b % count``'s; each worker scores the missing pairs of its blocks into shards of its own
(:func:`score_share`). With an empty cache each shard is one whole block, as in a single process,
so the scores do not depend on the number of workers. A bi-encoder teacher that scores through its
corpus embeddings has them encoded once, the ranks of a ``torchrun`` group each encoding a part.

The ranks of a ``torchrun`` group that spans every worker need not hold every pair: given the pairs
as a Parquet file (:class:`PairFile`), each rank reads in batches and keeps only a share of them
(:func:`_share_of`), so its memory is O(pairs / ranks) plus O(distinct ids). It first counts, per
passage, the missing pairs of its queries (a pair belongs to one query, so to one rank); the counts,
summed over the ranks (one all-reduce of an array per passage), place every missing pair in the
``(docid, qid)`` order above without any rank seeing them all. The rank then reads every pair of the
passages its blocks span, and scores exactly the blocks it would have been given with every pair in
memory: the same shards, the same scores.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from tqdm.auto import tqdm

from distillrank.columns import Distinct, Reduce, coding_rows, open_parquet, range_batches, sorted_unique
from distillrank.errors import DataError, DistillrankError
from distillrank.evaluation.dense import (
    CORPUS_CHUNK,
    EMBEDDINGS_META,
    cached_corpus_embeddings,
    embedding_settings,
    embeddings_dir,
)
from distillrank.ranking import Pairs, RankerKind
from distillrank.runtime import Runtime
from distillrank.sharding import WHOLE, Share, barrier, broadcast, reduce_array
from distillrank.teachers.base import members as teacher_members
from distillrank.workspace import (
    atomic_path,
    drop_unreadable,
    locked,
    remove_stale_temps,
    seal,
    seal_path,
    usable_entry,
)

log = logging.getLogger(__name__)

COVER = 0.5  # a bi-encoder teacher encodes the whole corpus once when the pairs cover this much of it


@dataclass(frozen=True)
class PairIndex:
    """Distinct (qid, docid) pairs as int64 keys, without a Python object per pair.

    Attributes:
        qids / docids: the distinct ids, sorted (Arrow string order: that of Python's ``str``).
        keys: the distinct pairs, sorted: ``doc_code * len(qids) + query_code``, so in the order of
            ``(docid, qid)``.
    """

    qids: pa.Array
    docids: pa.Array
    keys: np.ndarray

    @classmethod
    def of(
        cls, qids: pa.ChunkedArray | pa.Array, docids: pa.ChunkedArray | pa.Array
    ) -> tuple[PairIndex, np.ndarray]:
        """The index of the pairs ``(qids[i], docids[i])`` and, per pair, its position in ``keys``.

        Raises:
            DataError: a null id.
        """
        qids, docids = _strings(qids), _strings(docids)
        if qids.null_count or docids.null_count:
            raise DataError("a candidate pair has no qid or no docid (null)")
        uq, ud = _sorted_distinct(qids), _sorted_distinct(docids)
        index = cls(uq, ud, np.zeros(0, np.int64))
        keys = index.codes(qids, docids)
        distinct, position = np.unique(keys, return_inverse=True)
        return cls(uq, ud, distinct), position.astype(np.int64, copy=False)

    def codes(self, qids: pa.ChunkedArray | pa.Array, docids: pa.ChunkedArray | pa.Array) -> np.ndarray:
        """The key of each pair ``(qids[i], docids[i])``; -1 where an id is not in this index."""
        q = _positions(_strings(qids), self.qids)
        d = _positions(_strings(docids), self.docids)
        keys = d * len(self.qids) + q
        keys[(q < 0) | (d < 0)] = -1
        return keys

    def query_codes(self, keys: np.ndarray) -> np.ndarray:
        """The position in ``qids`` of each key's query."""
        return keys % len(self.qids)

    def ids(self, keys: np.ndarray) -> tuple[list[str], list[str]]:
        """The qids and docids of ``keys`` (a batch of them: one Python string per id)."""
        n = len(self.qids)
        return self.qids.take(keys % n).to_pylist(), self.docids.take(keys // n).to_pylist()


def _strings(column: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray | pa.Array:
    return column if column.type == pa.string() else column.cast(pa.string())


def _sorted_distinct(column: pa.ChunkedArray | pa.Array) -> pa.Array:
    distinct = pc.unique(column)
    return distinct.take(pc.sort_indices(distinct))


def _positions(column: pa.ChunkedArray | pa.Array, values: pa.Array) -> np.ndarray:
    """Where each entry of ``column`` is in ``values`` (int64), -1 where it is not there."""
    found = pc.fill_null(pc.index_in(column, value_set=values), -1)
    return np.asarray(found.to_numpy(), dtype=np.int64)


@dataclass(frozen=True)
class PairFile:
    """The (qid, docid) pairs of a Parquet file with columns ``qid`` and ``docid``, read in batches
    of ``batch_rows`` rows (only those two columns), never whole.

    Attributes:
        path: the file (the mine stage's candidates).
        batch_rows: rows per batch read.
    """

    path: Path
    batch_rows: int = 1 << 17

    def batches(self, at_least: int = 0, rows: range | None = None) -> Iterator[tuple[pa.Array, pa.Array]]:
        """The ``(qids, docids)`` of each batch, as string arrays; batches of ``batch_rows`` rows, or
        of ``at_least`` when that is more (:func:`distillrank.columns.coding_rows`); with ``rows``,
        of those rows only (the row groups that hold them are read, the rest skipped).

        Raises:
            DataError: the file lacks a ``qid`` or ``docid`` column, or an id is null.
        """
        with open_parquet(self.path) as f:
            names = f.schema_arrow.names
            if "qid" not in names or "docid" not in names:
                raise DataError(f"the pairs to score need columns qid and docid; {self.path} has {names}")
            size = max(self.batch_rows, at_least)
            for batch in range_batches(f, ["qid", "docid"], rows, size):
                qids, docids = _strings(batch.column("qid")), _strings(batch.column("docid"))
                if qids.null_count or docids.null_count:
                    raise DataError(f"a candidate pair of {self.path} has no qid or no docid (null)")
                yield qids, docids

    def rows(self) -> int:
        """The number of rows of the file."""
        with pq.ParquetFile(self.path) as f:
            return f.metadata.num_rows

    def query_rows(self, qids: pa.Array) -> tuple[np.ndarray, np.ndarray]:
        """The first and the last row of each query of ``qids`` (-1 for a query without rows): where
        the file may be cut into row ranges that split no query (:func:`distillrank.columns.group_cuts`)."""
        first = np.full(len(qids), np.iinfo(np.int64).max, np.int64)
        last = np.full(len(qids), -1, np.int64)
        start = 0
        for q, _ in self.batches(coding_rows(qids)):
            codes = _positions(q, qids)
            at = np.arange(start, start + len(codes), dtype=np.int64)
            np.minimum.at(first, codes, at)
            np.maximum.at(last, codes, at)
            start += len(codes)
        first[last < 0] = -1
        return first, last

    def ids(self) -> tuple[pa.Array, pa.Array]:
        """The distinct qids and docids of the file, sorted: those of :meth:`PairIndex.of` over
        every pair, so a pair has the same key as in one process's index."""
        qids, docids = Distinct(), Distinct()
        for q, d in self.batches():  # the distinct ids so far: O(distinct ids), whatever the rows
            qids.add(q)
            docids.add(d)
        return _sorted_distinct(qids.values()), _sorted_distinct(docids.values())

    def keys(self, qids: pa.Array, docids: pa.Array, keep) -> np.ndarray:
        """The distinct keys (sorted, as in :class:`PairIndex` over ``qids``/``docids``) of the pairs
        for which ``keep(query_codes, doc_codes)`` (a bool array per batch) holds."""
        parts: list[np.ndarray] = []
        n_q = len(qids)
        for q, d in self.batches(coding_rows(qids, docids)):
            qc, dc = _positions(q, qids), _positions(d, docids)
            kept = keep(qc, dc)
            parts.append(sorted_unique(dc[kept] * n_q + qc[kept]))
        if not parts:
            return np.zeros(0, np.int64)
        every = np.concatenate(parts)
        parts.clear()
        return sorted_unique(every)

    def codes(self, qids: pa.Array, docids: pa.Array, rows: range | None = None) -> np.ndarray:
        """The key of every row's pair (as in :class:`PairIndex` over ``qids``/``docids``), in file
        order, int64; -1 where an id is not among them. With ``rows``, of those rows only."""
        ids = PairIndex(qids, docids, np.zeros(0, np.int64))
        out = np.empty(self.rows() if rows is None else len(rows), np.int64)
        start = 0
        for q, d in self.batches(coding_rows(qids, docids), rows):
            out[start : start + len(q)] = ids.codes(q, d)
            start += len(q)
        return out[:start]


class ScoreCache:
    """Teacher scores of (qid, docid) pairs for one teacher and one collection, as Parquet shards."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    @classmethod
    def for_teacher(cls, cache_root: str | Path, teacher_fp: str, collection_fp: str) -> ScoreCache:
        """The cache of a teacher's scores on a collection under the workspace cache ``cache_root``."""
        return cls(Path(cache_root) / "scores" / f"{teacher_fp[:16]}-{collection_fp[:16]}")

    def shards(self) -> Iterator[pa.Table]:
        """Every complete shard as a table ``qid, docid, score``, in name order (partial ones never
        get their final name).

        A shard that does not match its checksums (truncated, zeroed) or cannot be read is dropped
        with a warning: its pairs are scored again.
        """
        if not self.folder.is_dir():
            return
        for shard in sorted(self.folder.glob("shard-*.parquet")):
            # a shard without checksums (written before they were kept, or killed between its
            # rename and its seal) is kept, and sealed, when it reads in full: scoring is costly
            legacy = not seal_path(shard).exists()
            if not legacy and not usable_entry(shard, "teacher score shard"):
                continue
            try:
                table = pq.read_table(shard, columns=["qid", "docid", "score"])
            except (OSError, ValueError, KeyError, pa.ArrowException) as err:
                drop_unreadable(shard, "teacher score shard", err)
                continue
            if legacy:
                seal(shard)
            yield table

    def _grouped(self, at_least: int) -> Iterator[pa.Table]:
        """The shards in name order, consecutive ones joined into tables of ``at_least`` rows or
        more (the last may be shorter): see :func:`distillrank.columns.coding_rows`."""
        group: list[pa.Table] = []
        rows = 0
        for table in self.shards():
            group.append(table)
            rows += table.num_rows
            if rows >= at_least:
                yield pa.concat_tables(group, promote_options="permissive")
                group, rows = [], 0
        if group:
            yield pa.concat_tables(group, promote_options="permissive")

    def load(self) -> pa.Table:
        """Every cached score, as one table ``qid, docid, score`` (a pair in two shards appears twice)."""
        tables = list(self.shards())
        if not tables:
            return pa.table(
                {
                    "qid": pa.array([], pa.string()),
                    "docid": pa.array([], pa.string()),
                    "score": pa.array([], pa.float32()),
                }
            )
        return pa.concat_tables(tables, promote_options="permissive")

    def lookup(self, index: PairIndex) -> tuple[np.ndarray, np.ndarray]:
        """Which pairs of ``index`` are cached (bool, per key of ``index.keys``) and their scores
        (float32, per key; 0 where not cached).

        Shards are read one at a time and only the pairs of ``index`` are kept, so the memory is that
        of the pairs asked for, whatever else the cache holds. A pair cached twice takes the score of
        the last shard in name order (and of its last row there).
        """
        found = np.zeros(len(index.keys), dtype=bool)
        scores = np.zeros(len(index.keys), dtype=np.float32)
        for table in self._grouped(coding_rows(index.qids, index.docids)):
            codes = index.codes(table["qid"], table["docid"])
            at = np.minimum(np.searchsorted(index.keys, codes), max(len(index.keys) - 1, 0))
            rows = np.flatnonzero((codes >= 0) & (index.keys[at] == codes)) if len(index.keys) else codes[:0]
            _, last = np.unique(at[rows][::-1], return_index=True)  # a pair twice in a shard: its last row
            rows = rows[::-1][last]
            found[at[rows]] = True
            scores[at[rows]] = np.asarray(table["score"].to_numpy(), dtype=np.float32)[rows]
        return found, scores

    def add(self, qids: list[str], docids: list[str], scores: np.ndarray, share: Share = WHOLE) -> Path:
        """Write one shard atomically (named after ``share``'s worker when the work is shared).

        A single process also removes the temporary files killed writers left; a worker of a shared
        job does not (another worker, maybe on another machine, may be writing them).
        """
        self.folder.mkdir(parents=True, exist_ok=True)
        if share.whole:  # shard names are never reused: clean by folder
            remove_stale_temps(self.folder, anywhere=True)
        worker = "" if share.whole else f"-w{share.index}"
        path = self.folder / f"shard-{time.time_ns()}-{os.getpid()}{worker}.parquet"
        table = pa.table(
            {"qid": pa.array(qids, pa.string()), "docid": pa.array(docids, pa.string()), "score": scores}
        )
        with atomic_path(path) as tmp:
            pq.write_table(table, tmp)
        seal(path)
        return path


def _score_shard(
    teacher,
    passage_text,
    query_text,
    qids: list[str],
    docids: list[str],
    coll,
    cache_root: Path,
    runtime: Runtime,
    progress: bool,
) -> np.ndarray:
    uq, pair_q = np.unique(np.asarray(qids, dtype=object), return_inverse=True)
    ud, pair_p = np.unique(np.asarray(docids, dtype=object), return_inverse=True)
    pairs = Pairs(
        [query_text[q] for q in uq],
        passage_text(list(ud)),
        pair_q,
        pair_p,
        qids=list(uq),
        docids=list(ud),
        collection=coll,
        cache_root=cache_root,
    )
    scores = teacher.score_pairs(pairs, runtime, progress=progress)
    return _checked(scores.astype(np.float32), qids, docids)


def _checked(scores: np.ndarray, qids: list[str], docids: list[str]) -> np.ndarray:
    """``scores``, unless one is not finite: then an error naming the first such pair."""
    bad = np.flatnonzero(~np.isfinite(scores))
    if len(bad):
        i = int(bad[0])
        raise DistillrankError(
            f"the teacher returned {scores[i]} for (qid={qids[i]}, docid={docids[i]}) "
            f"and {len(bad) - 1} other pairs; nothing from this shard was kept"
        )
    return scores


def _first_seen(codes: np.ndarray) -> np.ndarray:
    """The distinct values of ``codes`` in the order they first appear."""
    _, first = np.unique(codes, return_index=True)
    return codes[np.sort(first)]


@dataclass(frozen=True)
class _Missing:
    """Every pair missing from a cache (of all workers), as much as a bi-encoder teacher needs:
    how many, and (computed when asked) the distinct docids and the qids in the order each first
    appears in key order."""

    count: int
    docids: Callable[[], pa.Array]
    qids: Callable[[], list[str]]

    @classmethod
    def of(cls, index: PairIndex, keys: np.ndarray) -> _Missing:
        """The missing pairs ``keys`` (sorted keys of ``index``)."""
        n_q = len(index.qids)
        return cls(
            len(keys),
            lambda: index.docids.take(sorted_unique(keys // n_q)),
            lambda: index.qids.take(_first_seen(index.query_codes(keys))).to_pylist(),
        )


def _corpus_embeddings(
    cache_root: Path,
    teacher,
    teacher_fp: str,
    coll,
    missing: _Missing,
    query_text,
    runtime: Runtime,
    progress: bool,
    share: Share = WHOLE,
):
    """For a teacher that retrieves (a bi-encoder), a scorer of (qids, docids) through its corpus embeddings in the
    workspace cache (those feature distillation and the teacher's evaluation read), when every
    passage is a corpus row and the embeddings are cached already or the pairs to score cover at
    least ``COVER`` of the corpus (encoding the whole corpus then costs at most twice the candidates,
    and is shared); else None (score pair by pair).

    ``missing`` describes every pair to score (of all workers): every worker decides alike and
    encodes the same queries in the same order, so a pair's score does not depend on who scores it.
    The ranks of a ``torchrun`` group follow rank 0's decision and encode the corpus together, each
    its part (:func:`~distillrank.evaluation.dense.cached_corpus_embeddings`, a collective): every
    rank of the group must call this.
    """
    if not teacher.retrieves:  # the same on every rank: no decision to share
        return None
    encoder = folder = None
    use = False
    if missing.count:
        docids = missing.docids()
        # passages made by the queries stage (ICT) are not rows
        if pc.all(pc.is_in(docids, value_set=pa.array(coll.doc_ids(), pa.string()))).as_py():
            encoder, folder = _teacher_encoder(teacher, teacher_fp, coll, cache_root, runtime)
            use = (folder / EMBEDDINGS_META).is_file() or len(docids) >= COVER * len(coll.corpus)
    if not broadcast(share, use):  # rank 0's decision, which every rank of a group follows
        return None
    if encoder is None:
        encoder, folder = _teacher_encoder(teacher, teacher_fp, coll, cache_root, runtime)
    matrix, _, _ = cached_corpus_embeddings(
        encoder,
        coll,
        cache_root,
        teacher_fp,
        teacher.batch_size,
        CORPUS_CHUNK,
        runtime,
        name="teacher",
        progress=progress,
        share=share,
    )
    if not missing.count:  # this rank joined the encoding of the others and has nothing to score
        return None
    qids = missing.qids()
    q_emb = encoder.encode(
        [query_text[q] for q in qids],
        "query",
        teacher.batch_size,
        runtime,
        progress,
        "teacher: queries",
    )
    q_row = {q: i for i, q in enumerate(qids)}

    def scores(pair_qids: list[str], pair_docids: list[str]) -> np.ndarray:
        rows = np.fromiter((coll.doc_row(d) for d in pair_docids), np.int64, len(pair_docids))
        q = q_emb[torch.as_tensor([q_row[x] for x in pair_qids], dtype=torch.long)]
        out = encoder.score(q, torch.from_numpy(np.asarray(matrix[rows], dtype=np.float32))).numpy()
        return _checked(out.astype(np.float32), pair_qids, pair_docids)

    log.info("score: the bi-encoder teacher scores through its cached corpus embeddings (%s)", folder)
    return scores


def _teacher_encoder(teacher, teacher_fp: str, coll, cache_root: Path, runtime: Runtime):
    """The teacher's bi-encoder and the cache folder of its corpus embeddings."""
    encoder = teacher.encoder(runtime)
    settings = embedding_settings(encoder, runtime.precision)
    return encoder, embeddings_dir(cache_root, teacher_fp, coll.fingerprint, settings)


def _fill_cache(
    cache_root: Path,
    teacher,
    teacher_fp: str,
    coll,
    index: PairIndex,
    query_text,
    passage_text,
    name: str,
    runtime: Runtime,
    shard_size: int,
    progress: bool,
    share: Share,
    pair_file: PairFile | None = None,
) -> tuple[np.ndarray | None, int, float]:
    """Score ``share``'s part of the pairs of ``index`` missing from ``teacher``'s cache, shard by shard;
    with ``pair_file``, the pairs are those of the file, of which this rank reads its share only
    (:func:`_share_of`; ``index`` holds their distinct ids and no keys).

    Returns:
        the scores of ``index.keys`` (float32; None unless ``share`` is whole: another worker scores
        the rest), the number of pairs scored now, and the seconds spent.
    """
    lookup = teacher.kind is RankerKind.PRECOMPUTED  # scores looked up by id in a file
    if lookup:  # ids the collection lacks are an input error
        known_qids = set(coll.queries.with_format("arrow")[:].column("_id").to_pylist()) | set(query_text)
        teacher.check_ids(known_qids, set(coll.doc_ids()))
    cache = ScoreCache.for_teacher(cache_root, teacher_fp, coll.fingerprint)
    # one process scores a teacher at a time; the workers of one job share it, each on its own pairs
    with locked(cache.folder, "teacher score cache", shared=not share.whole):
        if pair_file is not None:  # this rank reads its share of the pairs only
            index, todo, every = _share_of(pair_file, index, cache, share, shard_size, teacher.retrieves)
            barrier(share)  # every rank of the group looks its pairs up before any writes a shard
            start = time.perf_counter()
            via = _corpus_embeddings(
                cache_root, teacher, teacher_fp, coll, every, query_text, runtime, progress, share
            )  # fmt: skip
            n = _score_todo(
                teacher, passage_text, query_text, coll, cache_root, runtime, progress, share, cache, index,
                todo, via, None, name, shard_size,
            )  # fmt: skip
            return None, n, time.perf_counter() - start
        is_cached, scores = cache.lookup(index)
        barrier(share)  # every rank of a torchrun group looks the pairs up before any writes a shard
        # by passage, then query (the order of the keys): a shard holds a contiguous range of passages,
        # so a teacher that encodes each distinct text once per call (bi-encoder, ColBERT) encodes a
        # passage in one shard only; queries, short, repeat across shards instead
        missing = np.flatnonzero(~is_cached)  # positions in index.keys
        if lookup and len(missing):  # every pair the file lacks, named at once
            teacher.check_pairs(zip(*index.ids(index.keys[missing]), strict=True))
        start = time.perf_counter()
        via = _corpus_embeddings(
            cache_root,
            teacher,
            teacher_fp,
            coll,
            _Missing.of(index, index.keys[missing]),
            query_text,
            runtime,
            progress,
            share,
        )
        todo = missing[share.owns(missing // shard_size)]  # this worker's blocks of the distinct pairs
        if not share.whole:
            scores = None  # another worker scores the rest
        del is_cached, missing
        n = _score_todo(
            teacher, passage_text, query_text, coll, cache_root, runtime, progress, share, cache, index,
            todo, via, scores, name, shard_size,
        )  # fmt: skip
        return scores, n, time.perf_counter() - start


def _score_todo(
    teacher, passage_text, query_text, coll, cache_root: Path, runtime: Runtime, progress: bool, share: Share,
    cache: ScoreCache, index: PairIndex, todo: np.ndarray, via, scores: np.ndarray | None, name: str,
    shard_size: int,
) -> int:  # fmt: skip
    """Score the pairs ``index.keys[todo]`` into ``cache``, ``shard_size`` a shard (into ``scores``
    too, at ``todo``, unless None); how many were scored."""
    n_shards = math.ceil(len(todo) / shard_size) if len(todo) else 0
    # one bar over every pair of the run (pairs/s, ETA); the teacher's own bars show within a shard
    bar = tqdm(total=len(todo), desc=f"score: {name}", unit="pair", disable=not progress or not len(todo))
    with bar:
        for s in range(n_shards):
            part = todo[s * shard_size : (s + 1) * shard_size]
            pq_ids, pd_ids = index.ids(index.keys[part])
            got = (
                via(pq_ids, pd_ids)
                if via is not None
                else _score_shard(
                    teacher, passage_text, query_text, pq_ids, pd_ids, coll, cache_root, runtime, progress
                )
            )
            cache.add(pq_ids, pd_ids, got, share)
            if scores is not None:
                scores[part] = got
            bar.update(len(part))
    return len(todo)


def _share_of(
    pair_file: PairFile,
    ids: PairIndex,
    cache: ScoreCache,
    share: Share,
    shard_size: int,
    queries: bool = False,
) -> tuple[PairIndex, np.ndarray, _Missing]:
    """This rank's part of the pairs of ``pair_file`` missing from ``cache``, read without holding
    the others: the blocks :meth:`Share.owns` gives it among the missing distinct pairs in key order
    (``(docid, qid)``), exactly those it would get from the index of every pair. A collective: every
    rank of a group that spans all the workers calls it.

    Two reads of the file: the pairs of this rank's queries (every ``count``-th query code), whose
    missing pairs counted per passage and summed over the ranks give where each passage's missing
    pairs start in key order; then every pair of the passages this rank's blocks span (a passage's
    pairs, all of them, give each its place among the passage's missing pairs).

    Args:
        ids: the distinct ids of the whole file (:meth:`PairFile.ids`), as an index without keys.
        queries: also find the order in which the queries of every missing pair first appear in key
            order (each rank's queries' first missing key, the minimum over the ranks: one more
            all-reduce, of an array per query), for a bi-encoder teacher (:func:`_corpus_embeddings`).

    Returns:
        the index of the pairs read the second time (``ids``' ids), the positions in its keys of
        this rank's pairs to score, in key order, and every worker's missing pairs as
        :func:`_corpus_embeddings` needs them.
    """
    n_q, n_d = len(ids.qids), len(ids.docids)
    mine = pair_file.keys(ids.qids, ids.docids, lambda q, d: q % share.count == share.index)
    found, _ = cache.lookup(PairIndex(ids.qids, ids.docids, mine))
    lacking = mine[~found] if found.any() else mine
    per_doc = reduce_array(share, np.bincount(lacking // max(n_q, 1), minlength=n_d).astype(np.int64))
    order = np.zeros(0, np.int64)
    if queries:  # a query is one rank's: its first missing key there is its first in all
        none = np.iinfo(np.int64).max
        first_key = np.full(n_q, none, np.int64)
        codes, at = np.unique(lacking % max(n_q, 1), return_index=True)
        first_key[codes] = lacking[at]
        first_key = reduce_array(share, first_key, "min")
        order = np.argsort(first_key, kind="stable")[: int(np.sum(first_key < none))]
    held = len(mine)
    del mine, found, lacking
    ends = np.cumsum(per_doc)  # where each passage's missing pairs end in key order
    total = int(ends[-1]) if n_d else 0
    blocks = np.arange(share.index, math.ceil(total / shard_size), share.count, dtype=np.int64)
    first = blocks * shard_size
    last = np.minimum(first + shard_size, total) - 1
    edges = np.zeros(n_d + 1, np.int32)  # +1 where a block's passages start, -1 past their end
    np.add.at(edges, np.searchsorted(ends, first, side="right"), 1)
    np.add.at(edges, np.searchsorted(ends, last, side="right") + 1, -1)
    spanned = np.cumsum(edges[:-1]) > 0
    del edges
    keys = (
        pair_file.keys(ids.qids, ids.docids, lambda q, d: spanned[d])
        if spanned.any()
        else np.zeros(0, np.int64)
    )
    index = PairIndex(ids.qids, ids.docids, keys)
    found, _ = cache.lookup(index)
    missing = np.flatnonzero(~found)  # positions in keys
    del found
    lacking = keys[missing] if len(missing) < len(keys) else keys
    # the place of a missing pair in key order: where its passage's missing pairs start, plus those
    # of the passage before it (computed in place: a few int64 per pair held)
    docs = lacking // max(n_q, 1)
    place = np.searchsorted(lacking, docs * n_q)  # the passage's first missing pair here
    np.subtract(np.arange(len(lacking)), place, out=place)
    place += ends[docs]
    place -= per_doc[docs]
    del docs, lacking
    place //= shard_size  # its block
    log.info(
        "score: %s held %d pairs (its queries'), then %d (its blocks' passages'), of %d missing in all",
        share.describe(), held, len(keys), total,
    )  # fmt: skip
    every = _Missing(
        total, lambda: ids.docids.filter(pa.array(per_doc > 0)), lambda: ids.qids.take(order).to_pylist()
    )
    return index, missing[share.owns(place)], every


def _pair_columns(pairs: pa.Table) -> tuple[pa.ChunkedArray, pa.ChunkedArray]:
    try:
        return pairs["qid"], pairs["docid"]
    except KeyError:
        raise DataError(
            f"the pairs to score need columns qid and docid; they have {pairs.column_names}"
        ) from None


def _fill_members(
    teacher,
    teacher_fp,
    coll,
    index,
    query_text,
    passage_text,
    cache_root: Path,
    runtime: Runtime,
    shard_size: int,
    progress: bool,
    share: Share,
    pair_file: PairFile | None = None,
) -> Iterator[tuple[str, np.ndarray, int, float]]:
    """Fill each member's cache (the teacher itself unless an ensemble) with ``share``'s part of the
    missing pairs; per member: its fingerprint, the scores of the index's distinct pairs, how many
    pairs were scored now and the seconds spent."""
    members = teacher_members(teacher)
    for i, member in enumerate(members):
        member_fp = teacher_fp if member is teacher else member.fingerprint(runtime)
        if share.whole:
            name = "pairs" if member is teacher else f"member {i + 1}/{len(members)} ({member.kind})"
        else:
            name = (
                share.describe()
                if member is teacher
                else f"{share.describe()}, member {i + 1}/{len(members)}"
            )
        distinct, n, seconds = _fill_cache(
            cache_root,
            member,
            member_fp,
            coll,
            index,
            query_text,
            passage_text,
            name,
            runtime,
            int(shard_size),
            bool(progress),
            share,
            pair_file,
        )
        yield member_fp, distinct, n, seconds


def teacher_scores(
    teacher,
    teacher_fp: str,
    coll,
    pairs: pa.Table,
    query_text,
    passage_text,
    *,
    cache_root: str | Path,
    runtime: Runtime,
    shard_size: int,
    progress: bool,
) -> tuple[np.ndarray, int, float, list[str]]:
    """Teacher scores [len(pairs)] of (qid, docid) pairs, scoring only what the caches lack, under
    ``runtime`` (the stage's, from ``hardware``).

    An ensemble teacher is scored member by member, each through its own cache (keyed by the
    member's fingerprint under ``runtime``), and combined over all the given pairs (grouped by query).

    Args:
        teacher_fp: the teacher's fingerprint under the precision and backend it runs in.
        pairs: a table with columns ``qid`` and ``docid`` (others are ignored).
        query_text: qid -> text; ``passage_text``: docids -> texts.
        cache_root: the workspace cache (``<workspace>/_cache``).
        runtime: where and how the teacher runs (device, precision, backend).
        shard_size: pairs per cache shard; ``progress``: show progress bars.

    Returns:
        the scores, the number of pairs scored now (over all members), seconds spent scoring, and
        the cache folders.
    """
    index, position = PairIndex.of(*_pair_columns(pairs))
    rows = _row_scores(
        teacher, teacher_fp, coll, index, position, index.query_codes(index.keys[position]), query_text,
        passage_text, Path(cache_root), runtime, shard_size, progress,
    )  # fmt: skip
    return rows.scores, rows.scored, rows.seconds, rows.caches


@dataclass(frozen=True)
class RowScores:
    """Teacher scores of every row of a pair file (:func:`file_scores`).

    Attributes:
        scores: float32 per row, in file order (an ensemble's combined score).
        query_codes: per row, its query's position among the file's distinct qids (sorted): the
            groups of per-query work (de-noising, normalisation) without a string per row.
        scored: pairs scored now (over all members); seconds: the time spent scoring.
        caches: the score cache folder of each member.
        queries: the number of the file's distinct qids (the range of ``query_codes``).
        first_row: the file row of ``scores[0]``: 0, or where a rank's range starts (:func:`part_scores`).
    """

    scores: np.ndarray
    query_codes: np.ndarray
    scored: int
    seconds: float
    caches: list[str]
    queries: int = 0
    first_row: int = 0

    @property
    def rows(self) -> range:
        """The file rows these are the scores of."""
        return range(self.first_row, self.first_row + len(self.scores))


def _file_index(
    pair_file: PairFile, qids: pa.Array, docids: pa.Array, rows: range | None = None
) -> tuple[PairIndex, np.ndarray, np.ndarray]:
    """The index of the file's distinct pairs (of ``rows`` only, when given) and, per row in file
    order, the position of its pair in the index's keys and its query's code (int32 each below 2**31
    values: 8 bytes a row kept)."""
    row_keys = pair_file.codes(qids, docids, rows)  # the ids are the file's own: none is -1
    keys = sorted_unique(row_keys)
    small = len(keys) < 2**31 and len(qids) < 2**31
    at = np.empty(len(row_keys), np.int32 if small else np.int64)
    query_codes = np.empty(len(row_keys), np.int32 if small else np.int64)
    step = 1 << 20  # in slices: no int64 temporary of every row
    for start in range(0, len(row_keys), step):
        part = row_keys[start : start + step]
        at[start : start + step] = np.searchsorted(keys, part)
        query_codes[start : start + step] = part % max(len(qids), 1)
    return PairIndex(qids, docids, keys), at, query_codes


def file_scores(
    teacher,
    teacher_fp: str,
    coll,
    pair_file: PairFile,
    query_text,
    passage_text,
    *,
    cache_root: str | Path,
    runtime: Runtime,
    shard_size: int,
    progress: bool,
) -> RowScores:
    """:func:`teacher_scores` of the pairs of a Parquet file, holding a few numbers a pair and no
    string: the file is read in batches, twice (its distinct ids; then every row's pair as an int64
    key, kept as the position of its key among the distinct ones and its query's code), and the cache
    is joined to the distinct keys. The score stage's final pass with it grows ~30 bytes a pair
    (``scripts/bench/score_memory.py``), against ~170 with the pairs' id columns held whole; the
    scores are the same, bit for bit.

    Arguments as for :func:`teacher_scores`; the file needs columns ``qid`` and ``docid``.
    """
    qids, docids = pair_file.ids()
    index, at, query_codes = _file_index(pair_file, qids, docids)
    rows = _row_scores(
        teacher, teacher_fp, coll, index, at, query_codes, query_text, passage_text, Path(cache_root),
        runtime, shard_size, progress,
    )  # fmt: skip
    # Arrow's allocator keeps the batches' freed memory for reuse; numpy, which does the rest of the
    # final pass, cannot reuse it: hand it back (~30 of the ~100 bytes a pair read here at peak)
    pa.default_memory_pool().release_unused()
    return rows


def _row_scores(
    teacher, teacher_fp: str, coll, index: PairIndex, at: np.ndarray, query_codes: np.ndarray, query_text,
    passage_text, cache_root: Path, runtime: Runtime, shard_size: int, progress: bool,
) -> RowScores:  # fmt: skip
    """Fill every member's cache with the pairs of ``index`` it lacks; the scores of the rows whose
    pairs are ``index.keys[at]`` (an ensemble's combined over the rows, grouped by ``query_codes``)."""
    member_scores: list[np.ndarray] = []
    caches: list[str] = []
    scored, seconds = 0, 0.0
    for member_fp, distinct, n, took in _fill_members(
        teacher, teacher_fp, coll, index, query_text, passage_text, cache_root, runtime, shard_size,
        progress, WHOLE,
    ):  # fmt: skip
        member_scores.append(distinct[at])
        caches.append(str(ScoreCache.for_teacher(cache_root, member_fp, coll.fingerprint).folder))
        scored += n
        seconds += took
    if not len(at):
        scores = np.zeros(0, np.float32)
    else:
        scores = _combined(teacher, member_scores, query_codes, len(index.qids))
    return RowScores(scores, query_codes, scored, seconds, caches, queries=len(index.qids))


def _combined(
    teacher, member_scores: list[np.ndarray], query_codes: np.ndarray, n_queries: int,
    reduce: Reduce | None = None, first_row: int = 0,
) -> np.ndarray:  # fmt: skip
    """The teacher's float32 scores of rows from its members' (an ensemble's combination, grouped by
    ``query_codes``; its statistics reduced over the ranks with ``reduce``), else the one member's."""
    if teacher.kind is RankerKind.ENSEMBLE:
        scores = teacher.combine(member_scores, query_codes, n_groups=n_queries, reduce=reduce, first_row=first_row)
    else:
        scores = member_scores[0]
    return scores.astype(np.float32, copy=False)


def part_scores(
    teacher,
    teacher_fp: str,
    coll,
    pair_file: PairFile,
    ids: tuple[pa.Array, pa.Array],
    rows: range,
    *,
    cache_root: str | Path,
    runtime: Runtime,
    reduce: Reduce,
) -> RowScores | None:
    """The teacher scores of the rows ``rows`` of ``pair_file``, read from the caches, which every
    worker has filled (:func:`score_share`): a rank's part of the score stage's final pass, holding a
    few numbers per row of its range only. A collective: every rank of the group calls it, each with
    its range (ranges that split no query, :func:`distillrank.columns.group_cuts`), and ``reduce``
    combines over them (:func:`distillrank.sharding.reduce_array`).

    Scores equal, bit for bit, those of :func:`file_scores` over the whole file at these rows (an
    ensemble's combination too: its per-query statistics are reduced over the ranks).

    Args:
        ids: the file's distinct qids and docids (:meth:`PairFile.ids`): query codes shared by the ranks.

    Returns:
        the scores (``scored`` and ``seconds`` 0), or None on every rank when a pair of any rank's
        range is missing from a cache (a shard lost since it was written): one process must then
        score it (:func:`file_scores`).
    """
    qids, docids = ids
    index, at, query_codes = _file_index(pair_file, qids, docids, rows)
    member_scores: list[np.ndarray] = []
    caches: list[str] = []
    missing = 0
    for member in teacher_members(teacher):
        member_fp = teacher_fp if member is teacher else member.fingerprint(runtime)
        cache = ScoreCache.for_teacher(cache_root, member_fp, coll.fingerprint)
        found, distinct = cache.lookup(index)
        missing += int(len(found) - np.count_nonzero(found))
        member_scores.append(distinct[at])
        caches.append(str(cache.folder))
    if int(reduce(np.array([missing], np.int64), "sum")[0]):
        return None
    scores = _combined(teacher, member_scores, query_codes, len(qids), reduce, rows.start)
    return RowScores(scores, query_codes, 0, 0.0, caches, queries=len(qids), first_row=rows.start)


def score_share(
    teacher,
    teacher_fp: str,
    coll,
    pairs: pa.Table | PairFile,
    query_text,
    passage_text,
    *,
    cache_root: str | Path,
    runtime: Runtime,
    shard_size: int,
    progress: bool,
    share: Share,
) -> tuple[int, float]:
    """Score ``share``'s part of the pairs missing from the caches, into the caches (every member's
    of an ensemble); the scores of all the pairs are then read with :func:`teacher_scores` once every
    worker is done. Arguments as for :func:`teacher_scores`, but ``pairs`` may be a :class:`PairFile`:
    then a rank of a ``torchrun`` group that spans every worker holds only its share of the pairs
    (:func:`_share_of`), unless a member looks scores up in a file (it names every missing pair at
    once); otherwise its ``qid`` and ``docid`` columns are read whole.

    Returns:
        the number of pairs this worker scored (over all members), and the seconds spent.
    """
    pair_file = None
    if isinstance(pairs, PairFile):
        if reads_share(teacher, share):
            pair_file = pairs
            index = PairIndex(*pairs.ids(), np.zeros(0, np.int64))
        else:
            pairs = pq.read_table(pairs.path, columns=["qid", "docid"])
    if pair_file is None:
        index, _ = PairIndex.of(*_pair_columns(pairs))
    scored, score_time = 0, 0.0
    for _, _, n, seconds in _fill_members(
        teacher, teacher_fp, coll, index, query_text, passage_text, Path(cache_root), runtime, shard_size, progress,
        share, pair_file,
    ):  # fmt: skip
        scored += n
        score_time += seconds
    return scored, score_time


def reads_share(teacher, share: Share) -> bool:
    """Whether :func:`score_share` given a :class:`PairFile` has ``share``'s worker read only its share
    of the pairs: a rank of a ``torchrun`` group that spans every worker (the per-passage counts are
    summed over the group), with no member looking its scores up in a file (it names every missing
    pair at once)."""
    return (
        share.grouped
        and share.group == share.count
        and not any(m.kind is RankerKind.PRECOMPUTED for m in teacher_members(teacher))
    )
