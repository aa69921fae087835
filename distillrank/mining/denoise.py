"""False-negative de-noising with teacher scores: flag mined negatives that are probably unjudged positives.

Run by the score stage once every candidate has a teacher score. Two rules, each optional; a negative
flagged by either is dropped, a positive (``label > 0``) never is:

* **margin** ``m`` (``score.denoise_margin``) — the *absolute margin* of Augmented SBERT and
  sentence-transformers' ``mine_hard_negatives(absolute_margin=...)``, measured against the query's
  *highest-scored positive*: a negative is dropped when ``teacher >= max_positive_teacher - m``
  (ties with the threshold are dropped). Queries with no positive among their candidates are left as
  they are by this rule. ``m`` may be any finite number; ``m = 0`` drops every negative the teacher
  ranks at or above the best positive, ``m < 0`` only those clearly above it.
* **relative** ``f`` (``score.denoise_relative``, Tamber et al. 2025 use ``f = 0.6``) — a negative
  is dropped when ``teacher > f * top``, ``top`` being the query's highest teacher score among *all*
  its candidates, positives included (ties with the threshold are kept). ``f`` must lie in
  ``[0, 1]``. Teacher scores may be negative (cross-encoder logits): the rule is applied only to
  queries whose ``top > 0``; a query whose every candidate scores ``<= 0`` keeps all its negatives
  (for ``f`` in ``[0, 1]`` and ``top <= 0`` no candidate can exceed ``f * top`` anyway, so this
  only makes the raw rule's behaviour explicit). Within a query whose ``top > 0``, negatives with a
  negative score are never above the (non-negative) threshold and are kept. Note that the rule is
  not shift-invariant: it is meant for teachers whose scores are positive for relevant passages
  (cosine / dot-product bi-encoders, cross-encoder probabilities or positive logits).

Scores are compared in float64 (the stored float32 values, widened exactly).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from distillrank.columns import Reduce, group_codes, one_worker, row_slices
from distillrank.errors import ConfigError

DROPPED = "dropped"


@dataclass(frozen=True)
class DenoiseResult:
    """Which rows were dropped, and by which rule (boolean arrays aligned with the input rows)."""

    dropped: np.ndarray
    by_margin: np.ndarray
    by_relative: np.ndarray
    queries_without_negatives: int  # queries that had >= 1 negative before de-noising and none after

    def counts(self) -> dict[str, int]:
        """The numbers the score manifest reports."""
        return {
            "negatives_dropped": int(self.dropped.sum()),
            "negatives_dropped_by_margin": int(self.by_margin.sum()),
            "negatives_dropped_by_relative": int(self.by_relative.sum()),
            "queries_without_negatives_after_denoise": self.queries_without_negatives,
        }


def check_settings(margin: float | None, relative: float | None) -> None:
    """Raise :class:`ConfigError` for a margin that is not finite or a fraction outside ``[0, 1]``."""
    if margin is not None and not math.isfinite(float(margin)):
        raise ConfigError(f"score.denoise_margin must be a finite number or null, got {margin}")
    if relative is not None and not 0.0 <= float(relative) <= 1.0:
        raise ConfigError(f"score.denoise_relative must lie in [0, 1] or be null, got {relative}")


def enabled(margin: float | None, relative: float | None) -> bool:
    """Whether any de-noising rule is set."""
    return margin is not None or relative is not None


def denoise(
    qids: Sequence[str] | np.ndarray,
    labels: Sequence[int] | np.ndarray,
    scores: Sequence[float] | np.ndarray,
    margin: float | None = None,
    relative: float | None = None,
    *,
    n_groups: int | None = None,
    reduce: Reduce | None = None,
) -> DenoiseResult:
    """Apply the de-noising rules (module docstring) to rows of (qid, label, teacher score).

    Rows of one query need not be contiguous. With both rules unset nothing is dropped.

    ``qids`` may be strings or integer codes of the queries (one per query, e.g.
    :attr:`distillrank.teachers.cache.RowScores.query_codes`): codes group the rows without a
    Python object per row.

    The rows may be split among workers (the score stage's ranks, each with a row range of the
    candidates), each calling this on its part with ``qids`` as codes in ``[0, n_groups)`` shared
    by all and ``reduce`` combining per-query statistics over them (:data:`distillrank.columns.Reduce`): every
    worker then flags its rows as one worker would flag them among all, and the counted
    ``queries_without_negatives`` is that of all the rows.
    """
    check_settings(margin, relative)
    labels = np.asarray(labels)
    n = len(scores)
    if not (len(qids) == len(labels) == n):
        raise ValueError(f"qids, labels and scores differ in length: {len(qids)}, {len(labels)}, {n}")
    by_margin = np.zeros(n, dtype=bool)
    by_relative = np.zeros(n, dtype=bool)
    if not enabled(margin, relative) or (n == 0 and reduce is None):
        return DenoiseResult(by_margin, by_margin.copy(), by_relative, 0)
    if reduce is not None and n_groups is None:
        raise ValueError("denoise over several workers needs n_groups: query codes they share")
    combine = reduce or one_worker
    scores = np.asarray(scores)
    if n_groups is None:
        group, n_groups = group_codes(np.asarray(qids))
    else:
        group = np.asarray(qids)
    negative = labels <= 0
    # per-group thresholds first; then the rows a slice at a time (float64 temporaries of one slice)
    if margin is not None:
        best_pos = np.full(n_groups, -np.inf)
        positive = ~negative
        np.maximum.at(best_pos, group[positive], scores[positive].astype(np.float64))
        best_pos = combine(best_pos, "max")
        has_pos = np.isfinite(best_pos)
        threshold = best_pos - float(margin)
    if relative is not None:
        top = np.full(n_groups, -np.inf)
        for rows in row_slices(n):
            np.maximum.at(top, group[rows], scores[rows].astype(np.float64))
        top = combine(top, "max")
        applies = top > 0
        bound = float(relative) * top
    neg_before = np.zeros(n_groups, np.int64)
    neg_after = np.zeros(n_groups, np.int64)
    for rows in row_slices(n):
        g, s, neg = group[rows], scores[rows].astype(np.float64), negative[rows]
        if margin is not None:
            by_margin[rows] = neg & has_pos[g] & (s >= threshold[g])
        if relative is not None:
            by_relative[rows] = neg & applies[g] & (s > bound[g])
        neg_before += np.bincount(g[neg], minlength=n_groups)
        neg_after += np.bincount(g[neg & ~(by_margin[rows] | by_relative[rows])], minlength=n_groups)
    dropped = by_margin | by_relative
    neg_before, neg_after = combine(neg_before, "sum"), combine(neg_after, "sum")
    lost = int(np.sum((neg_before > 0) & (neg_after == 0)))
    return DenoiseResult(dropped, by_margin, by_relative, lost)


def denoise_table(
    table: pa.Table, margin: float | None = None, relative: float | None = None
) -> tuple[pa.Table, DenoiseResult]:
    """The scores table (``qid``, ``label``, ``teacher`` columns) with a boolean ``dropped`` column
    appended (replaced if present); every row is kept."""
    result = denoise(
        table["qid"].to_numpy(zero_copy_only=False),
        table["label"].to_numpy(),
        table["teacher"].to_numpy(),
        margin,
        relative,
    )
    if DROPPED in table.column_names:
        table = table.drop_columns([DROPPED])
    return table.append_column(DROPPED, pa.array(result.dropped, pa.bool_())), result
