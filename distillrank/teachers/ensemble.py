"""An ensemble teacher: the weighted mean of several teachers' normalised scores.

Hofstätter et al. 2020 ("Improving Efficient Neural Ranking Models with Cross-Architecture
Knowledge Distillation") train students on the mean score of BERT-cat, BERT-dot and ColBERT
teachers (their "T2" ensemble), which beats each single teacher. Members' scales differ, so each
member's scores are first normalised (:mod:`distillrank.teachers.normalize`, z-score or min-max, per
query by default), then averaged with ``weights``.

In the score stage every member keeps its own score cache, so an ensemble run reuses the scores of
earlier single-teacher runs, and adding a member scores only that member. The combination happens
over all of a run's candidates at once, so per-query statistics see every candidate of the query.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from distillrank.columns import Reduce
from distillrank.errors import ConfigError
from distillrank.ranking import Pairs, RankerKind
from distillrank.runtime import Runtime
from distillrank.teachers import normalize as norm
from distillrank.teachers.base import Teacher


class EnsembleTeacher(Teacher):
    """Weighted mean of member teachers' normalised scores.

    Args:
        members: the teachers (any of ``teacher/``; in YAML, a list of teacher configs with
            ``_target_``).
        weights: one per member (default: equal); they are divided by their sum.
        normalize: ``zscore`` | ``minmax`` | ``none``, applied to each member before averaging.
        scope: ``query`` (statistics per query's candidates) or ``global`` (over all pairs).
    """

    kind = RankerKind.ENSEMBLE

    def __init__(
        self,
        members: Sequence,
        weights: Sequence[float] | None = None,
        normalize: str = "zscore",
        scope: str = "query",
    ) -> None:
        self.members = list(members)
        if not self.members:
            raise ConfigError("teacher.members is empty: an ensemble needs at least one teacher")
        weights = [1.0] * len(self.members) if weights is None else [float(w) for w in weights]
        if len(weights) != len(self.members):
            raise ConfigError(f"teacher.weights has {len(weights)} values for {len(self.members)} members")
        if any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ConfigError(f"teacher.weights={weights}: expected non-negative weights with a positive sum")
        norm.check(normalize, scope, "teacher.normalize")
        self.weights = np.asarray(weights, dtype=np.float64) / sum(weights)
        self.normalize = normalize
        self.scope = scope

    @property
    def supports_int8(self) -> bool:
        """int8 (CPU) when every member can be quantized."""
        return all(m.supports_int8 for m in self.members)

    @property
    def supports_onnx(self) -> bool:
        """``hardware.backend=onnx`` when every member can run in ONNX Runtime."""
        return all(m.supports_onnx for m in self.members)

    def identity(self, runtime: Runtime) -> dict:
        """The members' fingerprints under the runtime's precision (on PyTorch: the ensemble's own
        fingerprint carries the backend), the weights and the normalisation."""
        on_torch = dataclasses.replace(runtime, backend="torch")
        return {
            "kind": "ensemble",
            "members": [m.fingerprint(on_torch) for m in self.members],
            "weights": self.weights.round(12).tolist(),
            "normalize": self.normalize,
            "scope": self.scope,
        }

    def combine(
        self,
        member_scores: Sequence[np.ndarray],
        groups: np.ndarray | None,
        *,
        n_groups: int | None = None,
        reduce: Reduce | None = None,
        first_row: int = 0,
    ) -> np.ndarray:
        """The ensemble score [N] from each member's raw scores [N] of the same pairs.

        Args:
            groups: [N] group ids (the pairs' queries), used when ``scope="query"``.
            n_groups / reduce / first_row: for pairs split among workers, as for
                :func:`distillrank.teachers.normalize.normalize`.
        """
        total = np.zeros(len(member_scores[0]), dtype=np.float64)
        for w, scores in zip(self.weights, member_scores, strict=True):
            normalised = norm.normalize(
                scores, groups, self.normalize, self.scope, n_groups=n_groups, reduce=reduce, first_row=first_row
            )
            total += w * normalised.astype(np.float64)
        return total.astype(np.float32)

    def score_pairs(
        self, pairs: Pairs, runtime: Runtime, *, batch_size: int | None = None, progress: bool = False
    ) -> np.ndarray:
        """Every member scores the pairs; normalised over these pairs (grouped by query), then averaged."""
        member_scores = [m.score_pairs(pairs, runtime, batch_size=batch_size, progress=progress) for m in self.members]
        return self.combine(member_scores, pairs.pair_q)
