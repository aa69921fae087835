"""Teacher-score normalisation: put scores of different teachers (or scales) on a common footing.

Architectures score on different scales (Hofstätter et al. 2020: a cross-encoder's logits against a
bi-encoder's cosines); an ensemble averages its members only after normalising each, as in
Hofstätter et al.'s T2 ensemble, and a single teacher's scores can be normalised before training
(``score.normalize``).

Methods, applied per group (a query's candidates, ``scope="query"``) or over all pairs at once
(``scope="global"``):

* ``zscore``: ``(s - mean) / std`` (population std); a group whose scores are all equal maps to 0.
* ``minmax``: ``(s - min) / (max - min)`` into [0, 1]; a constant group maps to 0.5.
* ``none``: scores unchanged.

Both are affine and increasing within a group, so every ranking (and every pairwise or listwise loss
that only reads the order) is unchanged; margins are rescaled per group.
"""

from __future__ import annotations

import numpy as np

from distillrank.columns import Reduce, group_codes, one_worker, row_slices
from distillrank.errors import ConfigError

METHODS = ("none", "zscore", "minmax")
SCOPES = ("query", "global")


def check(method: str, scope: str, where: str = "normalize") -> None:
    """Raise ConfigError for an unknown method or scope (``where`` names the config key)."""
    if method not in METHODS:
        raise ConfigError(f"{where}={method!r}; expected one of {METHODS}")
    if scope not in SCOPES:
        raise ConfigError(f"{where} scope={scope!r}; expected one of {SCOPES}")


def normalize(
    scores: np.ndarray,
    groups: np.ndarray | None,
    method: str,
    scope: str = "query",
    *,
    n_groups: int | None = None,
    reduce: Reduce | None = None,
    first_row: int = 0,
) -> np.ndarray:
    """Normalised copy of ``scores`` [N] (float64 arithmetic, float32 out).

    Statistics are kept per group (a query's rows) and, for ``scope="global"``, combined over the
    groups: so the rows may be split among workers, each normalising its part, with the same result
    to the bit as one worker normalising all of them — provided every group's rows are on one worker.

    Args:
        groups: [N] integer group ids (e.g. query codes); needed when ``scope="query"``. Without them
            a global scope treats all the rows as one group.
        n_groups: the number of groups, when ``groups`` are codes in ``[0, n_groups)`` shared by every
            worker (the query codes of the whole candidates file); else the groups are coded here.
        reduce: combines per-group statistics over the workers (:data:`distillrank.columns.Reduce`); None: one worker.
        first_row: the position of ``scores[0]`` among every worker's rows (sums are accumulated a
            slice at a time, cut where they are for the whole set: :func:`distillrank.columns.row_slices`).
    """
    check(method, scope)
    s = np.asarray(scores)
    n = len(s)
    if reduce is None and (method == "none" or n == 0):
        return s.astype(np.float32)
    if groups is None:
        if scope == "query":
            raise ValueError("normalize(scope='query') needs the group of every score")
        if reduce is not None:
            raise ValueError("normalize over several workers needs the group of every score")
        codes, n_groups = None, 1
    elif n_groups is not None:
        codes = np.asarray(groups)
    else:
        if reduce is not None:
            raise ValueError("normalize over several workers needs n_groups: group codes they share")
        codes, n_groups = group_codes(np.asarray(groups))
    if method == "none":
        return s.astype(np.float32)
    combine = reduce or one_worker
    slices = list(row_slices(n, first_row=first_row))
    out = np.empty(n, np.float32)
    # per-group statistics, then the rows a slice at a time: float64 temporaries of one slice
    if method == "zscore":
        count = np.zeros(n_groups)
        total = np.zeros(n_groups)
        for rows in slices:
            g = _slice_groups(codes, rows)
            count += np.bincount(g, minlength=n_groups)
            total += np.bincount(g, weights=s[rows].astype(np.float64), minlength=n_groups)
        count, total = combine(count, "sum"), combine(total, "sum")
        mean = total / np.maximum(count, 1)
        if scope == "global":
            mean = np.full(n_groups, np.sum(total) / max(np.sum(count), 1))
        spread = np.zeros(n_groups)
        for rows in slices:
            g = _slice_groups(codes, rows)
            spread += np.bincount(g, weights=(s[rows].astype(np.float64) - mean[g]) ** 2, minlength=n_groups)
        spread = combine(spread, "sum")
        std = np.sqrt(spread / np.maximum(count, 1))
        if scope == "global":
            std = np.full(n_groups, np.sqrt(np.sum(spread) / max(np.sum(count), 1)))
        for rows in slices:
            g = _slice_groups(codes, rows)
            centred = s[rows].astype(np.float64) - mean[g]
            scale = std[g]
            out[rows] = np.divide(centred, scale, out=np.zeros_like(centred), where=scale > 0)
    else:
        lo = np.full(n_groups, np.inf)
        hi = np.full(n_groups, -np.inf)
        for rows in slices:
            g, part = _slice_groups(codes, rows), s[rows].astype(np.float64)
            np.minimum.at(lo, g, part)
            np.maximum.at(hi, g, part)
        lo, hi = combine(lo, "min"), combine(hi, "max")
        if scope == "global":
            lo, hi = np.full(n_groups, np.min(lo, initial=np.inf)), np.full(n_groups, np.max(hi, initial=-np.inf))
        for rows in slices:
            g = _slice_groups(codes, rows)
            span = (hi - lo)[g]
            low = s[rows].astype(np.float64) - lo[g]
            out[rows] = np.divide(low, span, out=np.full_like(low, 0.5), where=span > 0)
    return out


def _slice_groups(codes: np.ndarray | None, rows: slice) -> np.ndarray:
    """The group ids of a slice of rows (all 0 for the global scope)."""
    if codes is None:
        return np.zeros(rows.stop - rows.start, np.int64)
    return codes[rows]
