"""Per-query differences of one system against another (the student against the baseline)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

TIE = 1e-9  # differences within this are ties (floating-point noise is no win)


@dataclass
class QueryDeltas:
    """Per-query ``system - baseline`` on one measure, sorted from the largest gain to the largest loss.

    ``qids[i]`` has ``deltas[i]``; only queries that both systems have count.
    """

    measure: str
    qids: list[str]
    deltas: np.ndarray  # [n_queries] float64, descending

    @property
    def wins(self) -> int:
        return int(np.sum(self.deltas > TIE))

    @property
    def losses(self) -> int:
        return int(np.sum(self.deltas < -TIE))

    @property
    def ties(self) -> int:
        return len(self.deltas) - self.wins - self.losses

    @property
    def mean(self) -> float:
        return float(self.deltas.mean()) if len(self.deltas) else 0.0


def query_deltas(
    system: Mapping[str, Mapping[str, float]], baseline: Mapping[str, Mapping[str, float]], measure: str
) -> QueryDeltas:
    """``system[q][measure] - baseline[q][measure]`` for every query both have a value for.

    Args:
        system / baseline: per-query values ``{qid: {measure: value}}`` (``evaluate/<system>/metrics.json``).
        measure: e.g. ``nDCG@10``.

    Returns:
        the differences sorted descending (ties broken by qid, so the order is stable).
    """
    common = sorted(q for q in set(system) & set(baseline) if measure in system[q] and measure in baseline[q])
    pairs = sorted(
        ((float(system[q][measure]) - float(baseline[q][measure]), q) for q in common),
        key=lambda x: (-x[0], x[1]),
    )
    return QueryDeltas(measure, [q for _, q in pairs], np.array([d for d, _ in pairs], dtype=np.float64))
