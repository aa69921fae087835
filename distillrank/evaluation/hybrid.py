"""Hybrid retrieval: a dense run fused with a BM25 run, query by query, and the choice of the weight α.

Two fusions of whole runs (``qid -> docid -> score``, as the evaluate stage keeps them), over the
union of both runs' top lists:

* :func:`rrf_runs` — reciprocal-rank fusion (Cormack, Clarke & Büttcher 2009):
  ``score(d) = 1 / (k + rank_dense(d)) + 1 / (k + rank_bm25(d))``, a list missing ``d`` adding
  nothing; ``k = 60`` by default. Ranks only, so no tuning and no score scales.
* :func:`convex_runs` — a convex combination of per-query min–max normalised scores (Wang, Zhuang &
  Zuccon 2021; Bruch, Gai & Ingber 2023):
  ``score(d) = α · minmax(dense)(d) + (1 − α) · minmax(bm25)(d)`` with
  ``minmax(x)(d) = (x_d − min x) / (max x − min x)`` over that query's list, a document missing from
  a list getting that list's normalised 0. ``α = 1`` is the dense run's order, ``α = 0`` BM25's.

:func:`choose_alpha` picks α on judged dev queries by a grid search (``0, 0.05, …, 1``), maximising
one ir_measures measure (nDCG@10 by default); equal values are broken toward :data:`DEFAULT_ALPHA`,
which is also the α to use where there is no dev set.

The per-query formulas are in :mod:`distillrank.mining.fusion` (shared with hybrid mining).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from distillrank.errors import ConfigError
from distillrank.evaluation.metrics import Qrels, Run, compute_metrics, parse_measures
from distillrank.mining.fusion import convex_fuse, rrf_fuse

DEFAULT_ALPHA = 0.5
"""α when it is not chosen on dev queries (no judged dev or train split): equal weights."""

RRF_K = 60
"""The RRF constant of Cormack et al. (2009)."""

ALPHA_GRID: tuple[float, ...] = tuple(round(i * 0.05, 2) for i in range(21))
"""The α values tried by :func:`choose_alpha`: 0.0, 0.05, …, 1.0."""

_TIE = 1e-12  # dev means closer than this count as equal


def ranking(scores: Mapping[str, float]) -> list[str]:
    """A query's documents best first: descending score, equal scores by docid (as run files list them)."""
    return [d for d, _ in sorted(scores.items(), key=lambda item: (-item[1], item[0]))]


def _qids(dense: Run, bm25: Run) -> list[str]:
    return list(dict.fromkeys([*dense, *bm25]))


def rrf_runs(dense: Run, bm25: Run, k: int = RRF_K, depth: int | None = None) -> Run:
    """Reciprocal-rank fusion of two runs, query by query.

    ``score(d) = Σ_{run ∋ d} 1 / (k + rank_run(d))`` with 1-based ranks (:func:`ranking` order);
    a document in one run only gets that run's term.

    Args:
        dense: the dense retriever's run, ``{qid: {docid: score}}``.
        bm25: the BM25 run.
        k: the RRF constant (non-negative).
        depth: documents kept per query (None keeps the union of both lists).

    Returns:
        the fused run over every query of either run.
    """
    return {
        q: dict(rrf_fuse([ranking(dense.get(q, {})), ranking(bm25.get(q, {}))], k, depth))
        for q in _qids(dense, bm25)
    }


def convex_runs(dense: Run, bm25: Run, alpha: float, depth: int | None = None) -> Run:
    """Convex combination of two runs' min–max normalised scores, query by query.

    ``score(d) = α · (s_dense(d) − min) / (max − min) + (1 − α) · (s_bm25(d) − min) / (max − min)``,
    min and max over that query's list in that run; a document missing from a run gets 0 from it.
    A list of equal scores normalises to 1 (:func:`distillrank.mining.fusion.minmax_normalize`).

    Args:
        dense: the dense retriever's run, ``{qid: {docid: score}}`` (weight ``alpha``).
        bm25: the BM25 run (weight ``1 − alpha``).
        alpha: in ``[0, 1]``.
        depth: documents kept per query (None keeps the union of both lists).

    Raises:
        ConfigError: ``alpha`` outside ``[0, 1]``.
    """
    return {q: dict(convex_fuse(dense.get(q, {}), bm25.get(q, {}), alpha, depth)) for q in _qids(dense, bm25)}


@dataclass
class AlphaChoice:
    """The α :func:`choose_alpha` picked: its dev value, and the value of every α of the grid."""

    alpha: float
    measure: str
    value: float  # the mean of ``measure`` over the dev queries at ``alpha``
    queries: int  # dev queries the means are over
    curve: dict[float, float] = field(default_factory=dict)  # α -> mean measure

    def to_dict(self) -> dict:
        """A JSON-ready record (the curve's keys as strings, ``"0.35"``)."""
        return {
            "alpha": self.alpha,
            "measure": self.measure,
            "value": self.value,
            "queries": self.queries,
            "curve": {f"{a:g}": v for a, v in self.curve.items()},
        }


def choose_alpha(
    dense: Run,
    bm25: Run,
    qrels: Qrels,
    measure: str = "nDCG@10",
    grid: Sequence[float] = ALPHA_GRID,
    default: float = DEFAULT_ALPHA,
    depth: int | None = None,
) -> AlphaChoice:
    """The α of :func:`convex_runs` that maximises ``measure`` on judged dev queries.

    Every α of ``grid`` fuses the dev runs; the mean of ``measure`` over the queries of ``qrels``
    (a judged query missing from the run counts 0, as in
    :func:`distillrank.evaluation.metrics.compute_metrics`) decides. Among the α whose mean equals
    the best (within 1e-12), the one nearest ``default`` wins, the smaller one at equal distance —
    so a dev set that cannot tell the weights apart keeps the documented default.

    Args:
        dense: the dense retriever's run on the dev queries.
        bm25: BM25's run on the dev queries.
        qrels: the dev queries' judgments, ``{qid: {docid: relevance}}``.
        measure: an ir_measures measure name.
        grid: the α values tried, each in ``[0, 1]``.
        default: the α preferred among equals.
        depth: documents kept per fused query (as in the evaluated runs).

    Raises:
        ConfigError: an empty grid or qrels, or an unknown measure.
    """
    parse_measures([measure])
    if not grid:
        raise ConfigError("choose_alpha: the α grid is empty")
    if not qrels:
        raise ConfigError("choose_alpha: no judged dev query to choose α on")
    curve: dict[float, float] = {}
    for alpha in grid:
        aggregate, _ = compute_metrics(qrels, convex_runs(dense, bm25, float(alpha), depth), [measure])
        curve[float(alpha)] = next(iter(aggregate.values()))
    best = max(curve.values())
    tied = [a for a, v in curve.items() if v >= best - _TIE]
    alpha = min(tied, key=lambda a: (abs(a - default), a))
    return AlphaChoice(alpha=alpha, measure=measure, value=curve[alpha], queries=len(qrels), curve=curve)
