"""BM25 over a collection with bm25s: built once per (collection, parameters), cached on disk."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import bm25s
import numpy as np
from tqdm.auto import tqdm

from distillrank.workspace import atomic_dir, fingerprint

log = logging.getLogger(__name__)
logging.getLogger("bm25s").setLevel(logging.WARNING)  # its DEBUG lines drown the stage logs

_CHUNK = 50_000


class BM25Index:
    """A BM25 index over ``collection.corpus`` (title and text), queried by row numbers.

    Args:
        retriever: the bm25s index.
        tokenizer: the bm25s tokenizer whose vocabulary the index uses.
    """

    def __init__(self, retriever: bm25s.BM25, tokenizer: bm25s.tokenization.Tokenizer) -> None:
        self.retriever = retriever
        self.tokenizer = tokenizer

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
    ) -> BM25Index:
        """Load the cached index of this collection and parameters, or build and cache it."""
        params = {"k1": k1, "b": b, "stemmer": stemmer, "stopwords": stopwords, "version": bm25s.__version__}
        folder = Path(cache_root) / "bm25" / f"{collection.name}-{collection.fingerprint[:16]}-{fingerprint(params)[:12]}"
        tokenizer = cls._tokenizer(stemmer, stopwords)
        if (folder / "params.index.json").is_file():
            tokenizer.load_vocab(str(folder))
            tokenizer.load_stopwords(str(folder))
            return cls(bm25s.BM25.load(str(folder), mmap=True), tokenizer)
        n_docs = len(collection.corpus)
        ids: list[list[int]] = []
        bar = tqdm(total=n_docs, desc="bm25: tokenize corpus", unit="doc", disable=not progress)
        for start in range(0, n_docs, _CHUNK):
            texts = collection.passage_texts(range(start, min(start + _CHUNK, n_docs)))
            ids.extend(tokenizer.tokenize(texts, update_vocab=True, return_as="ids", show_progress=False))
            bar.update(len(texts))
        bar.close()
        retriever = bm25s.BM25(k1=k1, b=b)
        retriever.index(
            bm25s.tokenization.Tokenized(ids=ids, vocab=tokenizer.get_vocab_dict()), show_progress=progress
        )
        with atomic_dir(folder) as tmp:
            retriever.save(str(tmp), show_progress=False)
            tokenizer.save_vocab(str(tmp))
            tokenizer.save_stopwords(str(tmp))
        log.info("bm25 index of %d docs cached in %s", n_docs, folder)
        return cls(retriever, tokenizer)

    def search(self, queries: Sequence[str], k: int, progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Top-k corpus rows and scores per query, [Q, k] each, best first.

        Rows with a score of 0 match no query term; they are filler and marked with row -1.
        """
        n_docs = int(self.retriever.scores["num_docs"])
        k = min(k, n_docs)
        tokens = self.tokenizer.tokenize(list(queries), update_vocab=False, return_as="ids", show_progress=False)
        rows, scores = self.retriever.retrieve(tokens, k=k, show_progress=progress, n_threads=0)
        rows = np.asarray(rows, dtype=np.int64)
        scores = np.asarray(scores, dtype=np.float32)
        rows[scores <= 0] = -1
        return rows, scores
