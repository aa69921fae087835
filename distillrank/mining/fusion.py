"""Reciprocal-rank fusion (Cormack, Clarke & Büttcher, SIGIR 2009) of ranked lists."""

from __future__ import annotations

from collections.abc import Hashable, Sequence

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
        raise ConfigError(f"mining.rrf_k={k}; expected a non-negative constant")
    fused: dict[Hashable, float] = {}
    for ranking in rankings:
        for rank, doc in enumerate(ranking, start=1):
            fused[doc] = fused.get(doc, 0.0) + 1.0 / (k + rank)
    ordered = sorted(fused.items(), key=lambda item: -item[1])  # stable: ties keep first appearance
    return ordered if depth is None else ordered[:depth]
