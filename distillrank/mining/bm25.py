"""BM25 over a collection with bm25s: built once per (collection, parameters), cached on disk.

Retrieval runs queries in batches (:data:`QUERY_BATCH`, so memory holds one batch's work beside the
results) on every CPU this process may use (:func:`available_threads`). Each query is scored by
bm25s (its numpy scorer or, when ``numba`` is installed (``pip install 'distillrank[scale]'``), the
same scorer compiled by numba to release the GIL: the same scores to the bit), and its top k is
selected among the passages that match it (:func:`top_k`): best first, equal scores by corpus row.

Why not bm25s' own selection: it runs ``np.argpartition`` over the whole corpus, which on a corpus
that is mostly zeros for a query is slow (42 ms a query at 1M passages here, against ~2 ms for the
matching rows), and it leaves equal scores in an order that depends on numpy's partition; ordering
ties by row is the convention of Lucene/Anserini runs and is the same on every machine.
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import multiprocessing as mp
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import bm25s
import numpy as np
from tqdm.auto import tqdm

from distillrank.workspace import (
    atomic_dir,
    cache_entry,
    drop_unreadable,
    fingerprint,
    seal,
)

log = logging.getLogger(__name__)
logging.getLogger("bm25s").setLevel(logging.WARNING)  # its DEBUG lines drown the stage logs

_CHUNK = 50_000
BLOCKS_PER_PROCESS = 4  # corpus blocks per tokenizing process (:func:`_tokenize_in_processes`)
QUERY_BATCH = 8192  # queries per bm25s retrieve call: bounds the per-call result lists
# query × passage scores of a search below which bm25s' numpy scorer is kept: numba compiles its
# scorer once per process (about 5 s here), which saves about 1.4 ms a query on 200k passages
NUMBA_MIN_WORK = 200_000_000
_STATS = "distillrank_stats.json"  # beside bm25s' files: corpus statistics bm25s does not save


def available_threads() -> int:
    """The CPUs this process may run on (its affinity mask, which ``taskset`` and batch schedulers
    set), else the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


@functools.lru_cache(maxsize=1)
def numba_scorer():
    """bm25s' per-query scorer compiled by numba without the GIL (threads then score in parallel),
    or None when numba is not installed or ``NUMBA_DISABLE_JIT`` is set.

    It adds a query's precomputed term scores into a float32 vector in the same order as bm25s'
    numpy scorer (``np.add.at`` term by term), so its scores are the same to the bit.
    """
    if os.environ.get("NUMBA_DISABLE_JIT"):
        return None
    try:
        from numba import njit
    except ImportError:
        return None
    from bm25s.scoring import _compute_relevance_from_scores_jit_ready

    return njit(nogil=True)(_compute_relevance_from_scores_jit_ready)


def top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best rows of one query's corpus scores and their scores, best first, equal scores
    by row ascending; only rows that score above 0 (that match a query term), then row -1 / score 0.

    Costs a pass over ``scores`` to find the matching rows, then work in their number only.
    """
    matching = np.flatnonzero(scores > 0)
    values = scores[matching]
    if len(matching) > k:  # every row at or above the k-th best score, ties at the boundary included
        kth = np.partition(values, len(values) - k)[len(values) - k]
        keep = values >= kth
        matching, values = matching[keep], values[keep]
    order = np.lexsort((matching, -values))[:k]
    rows = np.full(k, -1, dtype=np.int64)
    out = np.zeros(k, dtype=np.float32)
    rows[: len(order)] = matching[order]
    out[: len(order)] = values[order]
    return rows, out


class BM25Index:
    """A BM25 index over ``collection.corpus`` (title and text), queried by row numbers.

    Args:
        retriever: the bm25s index.
        tokenizer: the bm25s tokenizer whose vocabulary the index uses.
        avg_doc_len: the corpus' mean passage length in index tokens (needed only to score passages
            that are not in the index, :meth:`score_texts`).
        threads: threads that retrieve (None: :func:`available_threads`; 1: the calling thread only).
        use_numba: score with bm25s' numba scorer when numba is installed and a search is large
            enough to repay its compilation (:data:`NUMBA_MIN_WORK`); the same scores either way.
    """

    def __init__(
        self,
        retriever: bm25s.BM25,
        tokenizer: bm25s.tokenization.Tokenizer,
        avg_doc_len: float | None = None,
        threads: int | None = None,
        use_numba: bool = True,
    ) -> None:
        self.retriever = retriever
        self.tokenizer = tokenizer
        self.avg_doc_len = avg_doc_len
        self.threads = threads
        self.use_numba = use_numba
        self.scorer = "numpy"  # "numba" once a search large enough (NUMBA_MIN_WORK) has switched to it

    @staticmethod
    def _tokenizer(stemmer: str | None, stopwords: str | None) -> bm25s.tokenization.Tokenizer:
        stem = None
        if stemmer:
            import Stemmer

            stem = Stemmer.Stemmer(stemmer)
        return bm25s.tokenization.Tokenizer(stemmer=stem, stopwords=stopwords or None)

    @classmethod
    def build_or_load(
        cls,
        collection,
        cache_root: Path,
        k1: float = 0.9,
        b: float = 0.4,
        stemmer: str | None = "english",
        stopwords: str | None = "en",
        progress: bool = True,
        threads: int | None = None,
    ) -> BM25Index:
        """Load the cached index of this collection and parameters, or build and cache it
        (``threads``: see :class:`BM25Index`; it decides the speed, never the results)."""
        params = {"k1": k1, "b": b, "stemmer": stemmer, "stopwords": stopwords, "version": bm25s.__version__}
        folder = Path(cache_root) / "bm25" / f"{collection.name}-{collection.fingerprint[:16]}-{fingerprint(params)[:12]}"
        with cache_entry(folder, "bm25 index") as present:
            if present:
                try:
                    tokenizer = cls._tokenizer(stemmer, stopwords)
                    tokenizer.load_vocab(str(folder))
                    tokenizer.load_stopwords(str(folder))
                    avg = float(json.loads((folder / _STATS).read_text())["avg_doc_len"])
                    return cls(bm25s.BM25.load(str(folder), mmap=True), tokenizer, avg, threads)
                except (OSError, ValueError, KeyError, TypeError) as err:
                    drop_unreadable(folder, "bm25 index", err)
            tokenizer = cls._tokenizer(stemmer, stopwords)
            ids = cls._tokenize_corpus(collection, tokenizer, True, progress, threads or available_threads())
            retriever = bm25s.BM25(k1=k1, b=b)
            retriever.index(
                bm25s.tokenization.Tokenized(ids=ids, vocab=tokenizer.get_vocab_dict()), show_progress=progress
            )
            with atomic_dir(folder) as tmp:
                retriever.save(str(tmp), show_progress=False)
                tokenizer.save_vocab(str(tmp))
                tokenizer.save_stopwords(str(tmp))
                avg = float(np.mean([len(x) for x in ids])) if ids else 0.0
                # a plain write: the folder itself is renamed into place whole
                (Path(tmp) / _STATS).write_text(json.dumps({"avg_doc_len": avg}), encoding="utf-8")
                seal(tmp)
            log.info("bm25 index of %d docs cached in %s", len(ids), folder)
            return cls(retriever, tokenizer, avg, threads)

    @staticmethod
    def _tokenize_corpus(
        collection, tokenizer, update_vocab: bool, progress: bool, workers: int = 1
    ) -> list[list[int]]:
        """Every passage's token ids, ``_CHUNK`` passages at a time.

        With ``workers`` > 1 (and the vocabulary built here, on a system that can fork), the corpus
        is cut into contiguous blocks (:data:`BLOCKS_PER_PROCESS` a process), each tokenised by one
        of that many forked processes with a vocabulary of its own, and the blocks' vocabularies are
        merged in corpus order: the same ids and vocabulary, entry for entry, as one process
        (:func:`_merge_block`)."""
        n_docs = len(collection.corpus)
        chunks = [range(start, min(start + _CHUNK, n_docs)) for start in range(0, n_docs, _CHUNK)]
        workers = min(workers, len(chunks))
        bar = tqdm(total=n_docs, desc="bm25: tokenize corpus", unit="doc", disable=not progress)
        ids: list[list[int]] = []
        with bar:
            if workers > 1 and update_vocab and "fork" in mp.get_all_start_methods():
                return _tokenize_in_processes(collection, tokenizer, chunks, workers, bar)
            for rows in chunks:
                texts = collection.passage_texts(rows)
                ids.extend(tokenizer.tokenize(texts, update_vocab=update_vocab, return_as="ids", show_progress=False))
                bar.update(len(texts))
        return ids

    @property
    def num_docs(self) -> int:
        return int(self.retriever.scores["num_docs"])

    def query_ids(self, queries: Sequence[str]) -> list[list[int]]:
        """Each query's index token ids (words the corpus lacks are dropped: they score nothing)."""
        return self.tokenizer.tokenize(list(queries), update_vocab=False, return_as="ids", show_progress=False)

    def scores_of_rows(self, query_ids: list[int], rows: np.ndarray) -> np.ndarray:
        """BM25 scores [len(rows)] of one tokenised query against corpus rows (exactly :meth:`search`'s)."""
        if not query_ids:
            return np.zeros(len(rows), dtype=np.float32)
        return np.asarray(self.retriever.get_scores_from_ids(query_ids), dtype=np.float32)[rows]

    def score_texts(self, query_ids: list[int], texts: Sequence[str]) -> np.ndarray:
        """BM25 scores [len(texts)] of one tokenised query against passages that are not in the index.

        The index's statistics (document frequencies, corpus size, mean length) with the text's own
        term counts and length, in the Lucene variant bm25s indexes with (Kamphuis et al. 2020), so a
        passage that is in the index scores the same either way. Its words the corpus lacks count in
        its length only.
        """
        params = self.retriever
        if params.method != "lucene":
            raise ValueError(f"scoring texts outside the index supports bm25s method 'lucene', not {params.method!r}")
        indptr = np.asarray(self.retriever.scores["indptr"])
        n = self.num_docs
        out = np.zeros(len(texts), dtype=np.float32)
        if not query_ids or not texts:
            return out
        stop = set(self.tokenizer.stopwords or ())
        for i, text in enumerate(texts):
            words = list(self.tokenizer.splitter(text.lower() if self.tokenizer.lower else text))
            length = sum(1 for w in words if w not in stop) or 1
            counts: dict[int, int] = {}
            for tid in self.tokenizer.tokenize([text], update_vocab=False, return_as="ids", show_progress=False)[0]:
                counts[tid] = counts.get(tid, 0) + 1
            norm = params.k1 * (1 - params.b + params.b * length / max(self.avg_doc_len or 1.0, 1e-9))
            total = 0.0
            for tid in query_ids:
                tf = counts.get(tid, 0)
                if tf:
                    df = int(indptr[tid + 1] - indptr[tid])
                    total += np.log(1 + (n - df + 0.5) / (df + 0.5)) * tf / (tf + norm)
            out[i] = total
        return out

    def search(
        self, queries: Sequence[str], k: int, progress: bool = True, batch_size: int = QUERY_BATCH
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k corpus rows and scores per query, [Q, k] each, best first, equal scores by row.

        Rows with a score of 0 match no query term; they are filler and marked with row -1.
        Queries are tokenised and retrieved ``batch_size`` at a time on :attr:`threads` threads;
        the results do not depend on either.
        """
        n_docs = int(self.retriever.scores["num_docs"])
        k = min(k, n_docs)
        if self.scorer == "numpy" and self.use_numba and len(queries) * n_docs >= NUMBA_MIN_WORK:
            if (jitted := numba_scorer()) is not None:
                self.retriever._compute_relevance_from_scores = jitted  # what bm25s' activate_numba_scorer() sets
                self.scorer = "numba"
        threads = max(1, int(self.threads or available_threads()))
        rows = np.full((len(queries), k), -1, dtype=np.int64)
        scores = np.zeros((len(queries), k), dtype=np.float32)

        def one(i: int, ids: list[int]) -> None:
            if ids:
                rows[i], scores[i] = top_k(self.retriever.get_scores_from_ids(ids), k)

        bar = tqdm(total=len(queries), desc="bm25: retrieve", unit="q", disable=not progress)
        pool = ThreadPoolExecutor(threads) if threads > 1 else None
        try:
            for start in range(0, len(queries), max(1, int(batch_size))):
                end = min(start + max(1, int(batch_size)), len(queries))
                tokens = self.query_ids(list(queries[start:end]))
                if pool is None:
                    for i, ids in enumerate(tokens, start):
                        one(i, ids)
                else:  # each query writes its own rows: the results do not depend on the threads
                    list(pool.map(one, range(start, end), tokens, chunksize=64))
                bar.update(end - start)
        finally:
            if pool is not None:
                pool.shutdown()
            bar.close()
        return rows, scores


# --------------------------------------------------------------------------- corpus tokenization in processes
@dataclass(frozen=True)
class _BlockTokens:
    """A block of passages tokenised by a tokenizer that started empty: its vocabulary in insertion
    order and its passages' token ids in that vocabulary (flat, with each passage's length)."""

    word_to_stem: list[tuple[str, str]]
    stems: list[str]  # the keys of stem_to_sid (word_to_id without a stemmer), in id order
    word_to_id: list[tuple[str, int]]
    flat: np.ndarray
    lengths: np.ndarray


def _tokenize_in_processes(collection, tokenizer, chunks: list[range], workers: int, bar) -> list[list[int]]:
    """The chunks tokenised by ``workers`` forked processes in contiguous blocks of chunks (the
    children inherit the collection and the tokenizer's settings: nothing is pickled to them), each
    block's result merged into ``tokenizer`` in corpus order as it comes. The bar follows the chunks
    the children finish."""
    context = mp.get_context("fork")
    done = context.Value("q", 0)  # passages tokenised so far, by every child
    # a few blocks a process, so that merging the first ones overlaps tokenising the last ones
    n = min(len(chunks), BLOCKS_PER_PROCESS * workers)
    blocks = [chunks[b * len(chunks) // n : (b + 1) * len(chunks) // n] for b in range(n)]
    ids: list[list[int]] = []
    with context.Pool(workers, _forked, (collection, tokenizer, done)) as pool:
        pending = [pool.apply_async(_tokenize_block, (block,)) for block in blocks]
        for result in pending:  # in corpus order
            while not result.ready():
                result.wait(0.5)
                bar.update(done.value - bar.n)
            ids.extend(_merge_block(tokenizer, result.get()))
    bar.update(done.value - bar.n)
    return ids


_CHILD: dict = {}  # a forked tokenizing process's collection, tokenizer and counter (:func:`_forked`)


def _forked(collection, tokenizer, done) -> None:
    """Pool initializer: what the forked process tokenises with (its own copies, inherited)."""
    _CHILD.update(collection=collection, tokenizer=tokenizer, done=done)


def _tokenize_block(chunks: list[range]) -> _BlockTokens:
    """The passages of ``chunks`` tokenised in order, by a tokenizer that starts empty (in a forked
    process); the token ids kept as int32 arrays, chunk by chunk."""
    tokenizer, done = _CHILD["tokenizer"], _CHILD["done"]
    tokenizer.reset_vocab()
    flats, lengths = [], []
    for rows in chunks:
        docs = tokenizer.tokenize(
            _CHILD["collection"].passage_texts(rows), update_vocab=True, return_as="ids", show_progress=False
        )
        n = np.fromiter(map(len, docs), np.int64, len(docs))
        flats.append(np.fromiter(itertools.chain.from_iterable(docs), np.int32, int(n.sum())))
        lengths.append(n)
        with done.get_lock():
            done.value += len(docs)
    stems = tokenizer.stem_to_sid if tokenizer.stemmer is not None else tokenizer.word_to_id
    if list(stems.values()) != list(range(len(stems))):  # bm25s numbers its vocabulary in insertion order
        raise RuntimeError("bm25s' tokenizer numbered its vocabulary out of insertion order")
    return _BlockTokens(
        list(tokenizer.word_to_stem.items()), list(stems), list(tokenizer.word_to_id.items()),
        np.concatenate(flats), np.concatenate(lengths),
    )  # fmt: skip


def _merge_block(tokenizer, part: _BlockTokens) -> list[list[int]]:
    """Add a block's vocabulary to ``tokenizer``'s as tokenising its passages after every earlier
    block's would have — entries new to it appended in the block's order, which is the order one
    process meets them in — and return the block's passages' ids in that vocabulary."""
    ids = tokenizer.stem_to_sid if tokenizer.stemmer is not None else tokenizer.word_to_id
    remap = [ids.setdefault(token, len(ids)) for token in part.stems]
    if tokenizer.stemmer is not None:
        for word, stem in part.word_to_stem:
            tokenizer.word_to_stem.setdefault(word, stem)
        for word, local in part.word_to_id:
            tokenizer.word_to_id.setdefault(word, remap[local])
    # the ids as the vocabulary's own int objects (an object array keeps them): one process's lists
    # hold references to those, and new ints (28 bytes each, one a token) took 1.1 GiB more at 1M passages
    table = np.empty(len(remap), dtype=object)
    table[:] = remap
    flat = table[part.flat].tolist()
    ends = np.cumsum(part.lengths).tolist()
    return [flat[a:b] for a, b in zip([0, *ends[:-1]], ends, strict=True)]
