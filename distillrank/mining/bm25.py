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
import json
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
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
            ids = cls._tokenize_corpus(collection, tokenizer, True, progress)
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
    def _tokenize_corpus(collection, tokenizer, update_vocab: bool, progress: bool) -> list[list[int]]:
        n_docs = len(collection.corpus)
        ids: list[list[int]] = []
        bar = tqdm(total=n_docs, desc="bm25: tokenize corpus", unit="doc", disable=not progress)
        for start in range(0, n_docs, _CHUNK):
            texts = collection.passage_texts(range(start, min(start + _CHUNK, n_docs)))
            ids.extend(tokenizer.tokenize(texts, update_vocab=update_vocab, return_as="ids", show_progress=False))
            bar.update(len(texts))
        bar.close()
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
