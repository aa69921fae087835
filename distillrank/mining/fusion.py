"""Fusion of two or more ranked lists of one query: reciprocal ranks, or a convex mix of scores.

* :func:`rrf_fuse` — reciprocal-rank fusion (Cormack, Clarke & Büttcher, SIGIR 2009), used by hybrid
  mining and by the ``hybrid_rrf`` evaluation system;
* :func:`convex_fuse` — ``α · minmax(a) + (1 − α) · minmax(b)`` of two scored lists (the "convex
  combination" of Wang, Zhuang & Zuccon 2021 and Bruch, Gai & Ingber 2023), used by the ``hybrid``
  evaluation system, with :func:`minmax_normalize`.

Whole runs (``qid -> docid -> score``) and the choice of α are in :mod:`distillrank.evaluation.hybrid`.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

from distillrank.errors import ConfigError


def rrf_fuse(
    rankings: Sequence[Sequence[Hashable]], k: int = 60, depth: int | None = None
) -> list[tuple[Hashable, float]]:
    """Fuse ranked lists by reciprocal rank: ``score(d) = Σ_lists 1 / (k + rank_list(d))``.

    Ranks are 1-based; a document absent from a list gets nothing from it.

    Args:
        rankings: ranked lists of ids, best first (each id at most once per list).
        k: the RRF constant (60 in the original paper).
        depth: keep this many fused results (None keeps all).

    Returns:
        (id, fused score), best first; ties keep the order of first appearance (list by list).
    """
    if k < 0:
        raise ConfigError(
            f"rrf_k={k} (mining.rrf_k / evaluate.hybrid_rrf_k); expected a non-negative constant"
        )
    fused: dict[Hashable, float] = {}
    for ranking in rankings:
        for rank, doc in enumerate(ranking, start=1):
            fused[doc] = fused.get(doc, 0.0) + 1.0 / (k + rank)
    ordered = sorted(fused.items(), key=lambda item: -item[1])  # stable: ties keep first appearance
    return ordered if depth is None else ordered[:depth]


def minmax_normalize(scores: Mapping[Hashable, float]) -> dict[Hashable, float]:
    """Min–max normalise one list's scores: ``(s − min) / (max − min)``, in ``[0, 1]``.

    The best document gets 1 and the worst 0. A list whose scores are all equal (one document, say)
    gets 1 for every document: each is the best that list has. An empty list stays empty.
    """
    if not scores:
        return {}
    low, high = min(scores.values()), max(scores.values())
    span = high - low
    if span <= 0.0:
        return dict.fromkeys(scores, 1.0)
    return {doc: (float(s) - low) / span for doc, s in scores.items()}


def convex_fuse(
    a: Mapping[Hashable, float], b: Mapping[Hashable, float], alpha: float, depth: int | None = None
) -> list[tuple[Hashable, float]]:
    """Fuse two scored lists of one query by a convex combination of min–max normalised scores.

    ``score(d) = α · â(d) + (1 − α) · b̂(d)``, where ``â`` and ``b̂`` are the lists' scores min–max
    normalised over that list (:func:`minmax_normalize`) and a document missing from a list gets
    that list's normalised minimum, 0. The fused list is the union of both lists. ``α = 1`` ranks
    by ``a`` alone and ``α = 0`` by ``b`` alone (the documents of the other list only follow, at 0).

    Args:
        a: ``{id: score}`` of the first list (weighted by ``alpha``; the dense retriever).
        b: ``{id: score}`` of the second list (weighted by ``1 − alpha``; BM25).
        alpha: the weight of ``a``, in ``[0, 1]``.
        depth: keep this many fused results (None keeps all).

    Returns:
        (id, fused score), best first; ties keep the order of first appearance (``a`` by
        descending score, then the documents only in ``b``).

    Raises:
        ConfigError: ``alpha`` outside ``[0, 1]``.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"hybrid alpha={alpha}; expected a weight in [0, 1]")
    na, nb = minmax_normalize(a), minmax_normalize(b)
    union = [d for d, _ in sorted(a.items(), key=lambda item: -item[1])]
    union += [d for d, _ in sorted(b.items(), key=lambda item: -item[1]) if d not in na]
    fused = [(d, alpha * na.get(d, 0.0) + (1.0 - alpha) * nb.get(d, 0.0)) for d in union]
    ordered = sorted(fused, key=lambda item: -item[1])
    return ordered if depth is None else ordered[:depth]
