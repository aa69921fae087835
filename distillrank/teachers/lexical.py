"""BM25 as a teacher: lexical scores of (query, passage) pairs over the collection's statistics.

On collections where BM25 beats the neural teacher (SciFact: nDCG@10 0.676 against 0.624 for
all-MiniLM-L6-v2), a lexical member makes an ensemble teacher (Hofstätter et al.'s "T2", here the
hybrid of dense and lexical signals that BEIR shows is strong out of domain) better than its neural
member alone. Alone, it is the label-free teacher of the lexical baseline.

Passages of the index score exactly as BM25 retrieval scores them (the mining and evaluation
``bm25`` first stage, same parameters: the index is shared). Passages that are not in the index
(synthetic positives of the ``queries`` stage, such as ICT's sentence-removed passages) are scored
from their text with the index's statistics.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from distillrank.errors import ConfigError
from distillrank.mining.bm25 import BM25Index
from distillrank.ranking import Pairs, RankerKind
from distillrank.runtime import Runtime
from distillrank.teachers.base import Teacher


class BM25Teacher(Teacher):
    """BM25 (bm25s, Lucene variant) scores of the pairs, over the collection they come from.

    Args:
        k1, b: BM25 parameters (BEIR's 0.9 / 0.4 by default, as ``mining=bm25``).
        stemmer: a PyStemmer language, or null.
        stopwords: a bm25s stopword list name (``en``), or null.

    The pairs name their collection (``Pairs.collection`` and ``Pairs.cache_root``, where its index
    is cached); the index of the last collection scored is kept loaded for the next call.
    """

    kind = RankerKind.LEXICAL
    supports_int8 = True  # no weights: every precision gives the same scores (and shares a cache)
    supports_onnx = True  # no weights: the backend does not apply (an onnx run caches apart)

    def __init__(self, k1: float = 0.9, b: float = 0.4, stemmer: str | None = "english", stopwords: str | None = "en") -> None:
        self.k1, self.b, self.stemmer, self.stopwords = float(k1), float(b), stemmer, stopwords
        # the loaded index of the last collection scored: (collection fingerprint, cache root) -> index, rows
        self._loaded: tuple[tuple[str, str], BM25Index, dict[str, int]] | None = None

    def identity(self, runtime: Runtime) -> dict:
        """The parameters (no precision: no weights); the collection keys the score cache already."""
        import bm25s

        return {"kind": "bm25", "k1": self.k1, "b": self.b, "stemmer": self.stemmer, "stopwords": self.stopwords,
                "bm25s": bm25s.__version__}

    def index(self, collection, cache_root: Path, progress: bool = True) -> tuple[BM25Index, dict[str, int]]:
        """The BM25 index of ``collection`` (built or loaded from ``cache_root``, then kept) and its
        row of each docid."""
        key = (collection.fingerprint, str(cache_root))
        if self._loaded is None or self._loaded[0] != key:
            index = BM25Index.build_or_load(
                collection, Path(cache_root), k1=self.k1, b=self.b, stemmer=self.stemmer,
                stopwords=self.stopwords, progress=progress,
            )
            self._loaded = (key, index, {d: i for i, d in enumerate(collection.doc_ids())})
        return self._loaded[1], self._loaded[2]

    def score_pairs(
        self, pairs: Pairs, runtime: Runtime, *, batch_size: int | None = None, progress: bool = False
    ) -> np.ndarray:
        """BM25 scores [len(pairs)]: looked up by ``docids`` in the index, from the text otherwise.

        Raises:
            ConfigError: the pairs name no collection.
        """
        if pairs.collection is None or pairs.cache_root is None:
            raise ConfigError(
                "the bm25 teacher scores over a collection: give the pairs theirs (Pairs(collection=..., cache_root=...))"
            )
        index, rows_of = self.index(pairs.collection, pairs.cache_root, progress)
        pair_q, pair_p, passages, docids = pairs.pair_q, pairs.pair_p, pairs.passages, pairs.docids
        rows = np.array([rows_of.get(d, -1) for d in docids] if docids is not None else [-1] * len(passages),
                        dtype=np.int64)
        out = np.zeros(len(pair_q), dtype=np.float32)
        tokens = index.query_ids(pairs.queries)
        order = np.argsort(pair_q, kind="stable")
        bounds = np.flatnonzero(np.diff(pair_q[order])) + 1
        for group in np.split(order, bounds) if len(order) else []:
            q = int(pair_q[group[0]])
            p = pair_p[group]
            inside = rows[p] >= 0
            if inside.any():
                out[group[inside]] = index.scores_of_rows(tokens[q], rows[p[inside]])
            if (~inside).any():
                out[group[~inside]] = index.score_texts(tokens[q], [passages[i] for i in p[~inside]])
        return out
