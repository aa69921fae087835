"""The first stage: ranked corpus rows for a list of queries, from one retriever or several fused.

Mining takes each training query's top ``depth`` from it (``mining.method``: bm25, dense, or
hybrid, the reciprocal-rank fusion of ``mining.retrievers``), ``train.dev_split`` its dev
candidates, and the evaluate stage the candidates its re-rankers score (``evaluate.first_stage``,
:class:`RerankCandidates`). Retrievers are plain search functions; the builders
(:mod:`distillrank.builders.components`) make them from the config.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from distillrank.mining.fusion import rrf_fuse

# texts, depth -> rows [Q, depth] (-1 where fewer), scores [Q, depth], info for the manifest
Search = Callable[[Sequence[str], int], tuple[np.ndarray, np.ndarray, dict]]


def first_stage(
    retrievers: Mapping[str, Search], query_texts: Sequence[str], depth: int, rrf_k: int | None = None
) -> tuple[list[np.ndarray], list[np.ndarray], dict]:
    """Each query's ranked corpus rows and first-stage scores (best first, at most ``depth``).

    Args:
        retrievers: name -> search function; one, unless ``rrf_k`` is given.
        rrf_k: fuse the retrievers' rankings by reciprocal ranks, score Σ 1 / (rrf_k + rank)
            (``mining.method=hybrid``), cut to ``depth``; None: the one retriever's own ranking.

    Returns:
        rows and scores per query, and the retrievers' info for the manifest counts.
    """
    runs: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] = {}
    info: dict = {}
    for name, search in retrievers.items():
        rows, scores, found = search(query_texts, depth)
        info.update(found)
        valid = rows >= 0
        runs[name] = (
            [r[v] for r, v in zip(rows, valid, strict=True)],
            [s[v] for s, v in zip(scores, valid, strict=True)],
        )
    if rrf_k is None:
        (only,) = runs.values()
        return *only, info
    fused_rows: list[np.ndarray] = []
    fused_scores: list[np.ndarray] = []
    for i in range(len(query_texts)):
        fused = rrf_fuse([runs[name][0][i].tolist() for name in runs], rrf_k, depth)
        fused_rows.append(np.array([r for r, _ in fused], dtype=np.int64))
        fused_scores.append(np.array([s for _, s in fused], dtype=np.float32))
    return fused_rows, fused_scores, info


class RerankCandidates:
    """The candidates re-rankers score: the first stage's top ``depth`` for ``queries``; computed
    once (:meth:`run`), and for one query at a time (:meth:`search`, latency).

    Args:
        search: ``(texts, depth, progress) -> (rows, scores)`` of the first stage, [Q, depth] each.
        coll: the collection searched (its doc ids name the rows).
        queries: ``(qid, text)`` of the queries evaluated.
        run_search: the same for the whole query set (:meth:`run`), when it can come from a run
            another system made already (BM25's); None: ``search``.
    """

    def __init__(
        self,
        search: Callable[..., tuple[np.ndarray, np.ndarray]],
        depth: int,
        coll,
        queries,
        run_search: Callable[..., tuple[np.ndarray, np.ndarray]] | None = None,
    ) -> None:
        self._search, self.depth, self.coll, self.queries = search, int(depth), coll, queries
        self._run_search = run_search or search
        self._run: dict[str, list[tuple[str, float]]] | None = None

    def search(self, texts: list[str], progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
        return self._search(texts, self.depth, progress)

    def run(self) -> dict[str, list[tuple[str, float]]]:
        """``{qid: [(docid, first-stage score), ...]}``, best first."""
        if self._run is None:
            rows, scores = self._run_search([t for _, t in self.queries], self.depth, True)
            doc_ids = self.coll.doc_ids()
            self._run = {
                qid: [(doc_ids[r], float(sc)) for r, sc in zip(rows[i], scores[i], strict=True) if r >= 0]
                for i, (qid, _) in enumerate(self.queries)
            }
        return self._run
