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

from distillrank.errors import ConfigError

METHODS = ("none", "zscore", "minmax")
SCOPES = ("query", "global")


def check(method: str, scope: str, where: str = "normalize") -> None:
    """Raise ConfigError for an unknown method or scope (``where`` names the config key)."""
    if method not in METHODS:
        raise ConfigError(f"{where}={method!r}; expected one of {METHODS}")
    if scope not in SCOPES:
        raise ConfigError(f"{where} scope={scope!r}; expected one of {SCOPES}")


def normalize(scores: np.ndarray, groups: np.ndarray | None, method: str, scope: str = "query") -> np.ndarray:
    """Normalised copy of ``scores`` [N] (float64 arithmetic, float32 out).

    Args:
        groups: [N] integer group ids (e.g. query codes); needed when ``scope="query"``.
    """
    check(method, scope)
    s = np.asarray(scores, dtype=np.float64)
    if method == "none" or len(s) == 0:
        return s.astype(np.float32)
    if scope == "global":
        codes = np.zeros(len(s), dtype=np.int64)
    else:
        if groups is None:
            raise ValueError("normalize(scope='query') needs the group of every score")
        _, codes = np.unique(np.asarray(groups), return_inverse=True)
    n_groups = int(codes.max()) + 1
    if method == "zscore":
        count = np.bincount(codes, minlength=n_groups).astype(np.float64)
        mean = np.bincount(codes, weights=s, minlength=n_groups) / count
        centred = s - mean[codes]
        std = np.sqrt(np.bincount(codes, weights=centred**2, minlength=n_groups) / count)
        out = np.divide(centred, std[codes], out=np.zeros_like(s), where=std[codes] > 0)
    else:
        lo = np.full(n_groups, np.inf)
        hi = np.full(n_groups, -np.inf)
        np.minimum.at(lo, codes, s)
        np.maximum.at(hi, codes, s)
        span = (hi - lo)[codes]
        out = np.divide(s - lo[codes], span, out=np.full_like(s, 0.5), where=span > 0)
    return out.astype(np.float32)
