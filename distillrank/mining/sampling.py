"""Choosing negatives from a ranked candidate list."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from distillrank.errors import ConfigError

SAMPLINGS = ("window", "top", "all")


def sample_negatives(
    ranked: Sequence[str],
    positives: set[str],
    num_negatives: int,
    sampling: str,
    window_start: int,
    window_end: int,
    rng: np.random.Generator,
) -> list[tuple[str, int]]:
    """Negatives as (docid, 1-based rank), judged positives removed.

    Args:
        ranked: doc ids, best first.
        positives: judged relevant ids for the query (never returned).
        num_negatives: how many to keep (fewer when the list is short); ignored by ``all``.
        sampling: ``window``: uniform without replacement from ranks [window_start, window_end];
            ``top``: the best-ranked non-positives; ``all``: every non-positive in the window
            (for listwise losses), in rank order.
        window_start / window_end: 1-based inclusive bounds of the window.
        rng: seeded generator.
    """
    if sampling not in SAMPLINGS:
        raise ConfigError(f"mining.sampling={sampling!r}; expected one of {SAMPLINGS}")
    if window_start < 1 or window_end < window_start:
        raise ConfigError(f"mining window [{window_start}, {window_end}] is empty or starts below rank 1")
    pool = [(d, r) for r, d in enumerate(ranked, start=1) if d not in positives]
    if sampling == "top":
        return pool[:num_negatives]
    window = [(d, r) for d, r in pool if window_start <= r <= window_end]
    if sampling == "all" or len(window) <= num_negatives:
        return window
    picked = np.sort(rng.choice(len(window), size=num_negatives, replace=False))
    return [window[i] for i in picked]
