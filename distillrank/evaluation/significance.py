"""Paired significance tests of systems against a baseline, over per-query metric values.

Each system is compared with the baseline by a two-sided Student's paired t-test on the per-query
differences (Student 1908); the p-values of the systems compared on one measure form one family,
corrected with Holm's step-down procedure (Holm 1979, "A simple sequentially rejective multiple test
procedure"), which controls the family-wise error rate at ``alpha``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
from scipy import stats

PerQuery = Mapping[str, Mapping[str, Mapping[str, float]]]  # system -> qid -> measure -> value

TEST_NAME = "two-sided Student's paired t-test over queries"
CORRECTION_NAME = "Holm–Bonferroni correction across systems, per measure"


def _common(a: Mapping[str, float], b: Mapping[str, float]) -> tuple[np.ndarray, np.ndarray]:
    qids = sorted(set(a) & set(b))
    return (
        np.array([float(a[q]) for q in qids], dtype=np.float64),
        np.array([float(b[q]) for q in qids], dtype=np.float64),
    )


def paired_t_test(a: Mapping[str, float], b: Mapping[str, float]) -> tuple[float, float]:
    """Two-sided Student's paired t-test of ``a`` against ``b`` over the queries both have.

    With differences ``d_i = a_i - b_i`` over the ``n`` common queries,
    ``t = mean(d) / (sd(d) / sqrt(n))`` (``sd`` with ``n - 1`` degrees of freedom) and
    ``p = 2 * P(T_{n-1} > |t|)``.

    Degenerate cases never give NaN: fewer than two common queries, or differences that are all
    zero (identical vectors), give ``(0.0, 1.0)``; a constant non-zero difference gives
    ``(±inf, 0.0)``.

    Args:
        a: per-query values of one system, ``{qid: value}``.
        b: per-query values of the other system, ``{qid: value}``.

    Returns:
        ``(t, p)``; ``t > 0`` when ``a`` is better on average.
    """
    x, y = _common(a, b)
    n = len(x)
    if n < 2:
        return 0.0, 1.0
    d = x - y
    mean = float(d.mean())
    sd = float(d.std(ddof=1))
    # Differences equal up to rounding count as constant (floating-point noise is not evidence).
    if sd <= 1e-12 * max(1.0, abs(mean)):
        if abs(mean) <= 1e-12:
            return 0.0, 1.0
        return math.copysign(math.inf, mean), 0.0
    t = mean / (sd / math.sqrt(n))
    p = float(2.0 * stats.t.sf(abs(t), df=n - 1))
    return float(t), min(max(p, 0.0), 1.0)


def holm_adjusted(p_values: Mapping[str, float]) -> dict[str, float]:
    """Holm (1979) adjusted p-values: ``max_{j <= i} min(1, (m - j) * p_(j))`` in ascending order.

    A hypothesis is rejected at level ``alpha`` by Holm's step-down procedure exactly when its
    adjusted p-value is ``<= alpha``.
    """
    order = sorted(p_values, key=lambda k: (p_values[k], k))
    m = len(order)
    adjusted: dict[str, float] = {}
    running = 0.0
    for i, name in enumerate(order):
        running = max(running, min(1.0, (m - i) * p_values[name]))
        adjusted[name] = running
    return adjusted


def holm_bonferroni(p_values: Mapping[str, float], alpha: float = 0.05) -> dict[str, bool]:
    """Holm's (1979) step-down Bonferroni procedure: which hypotheses are rejected at ``alpha``.

    Sort the ``m`` p-values ascending, ``p_(1) <= ... <= p_(m)``; reject ``H_(1), ..., H_(k-1)``
    where ``k`` is the first index with ``p_(k) > alpha / (m - k + 1)``; keep all from ``k`` on.

    Returns:
        ``{name: rejected}`` for every name in ``p_values``.
    """
    order = sorted(p_values, key=lambda k: (p_values[k], k))
    m = len(order)
    reject = dict.fromkeys(p_values, False)
    for i, name in enumerate(order):
        if p_values[name] > alpha / (m - i):
            break
        reject[name] = True
    return reject


def compare_to_baseline(
    per_query: PerQuery, baseline: str, measures: list[str], alpha: float = 0.05
) -> dict[str, dict[str, dict[str, float | bool | None]]]:
    """Every system against ``baseline``, per measure: paired t-test, then Holm across systems.

    Args:
        per_query: ``{system: {qid: {measure: value}}}``; must contain ``baseline``.
        baseline: the system the others are compared with.
        measures: the measures tested (each one is its own family for the Holm correction).
        alpha: family-wise significance level.

    Returns:
        ``{system: {measure: {"p", "p_holm", "significant", "delta"}}}`` for every system other than
        the baseline: ``p`` is the raw two-sided p-value of Student's paired t-test, ``p_holm`` the
        Holm-adjusted one, ``significant`` whether Holm's procedure rejects equality at ``alpha``, and
        ``delta`` the mean per-query difference ``system - baseline`` (its sign says better or worse).
    """
    if baseline not in per_query:
        raise KeyError(f"baseline {baseline!r} is not among the systems {list(per_query)}")
    others = [s for s in per_query if s != baseline]
    out: dict[str, dict[str, dict[str, float | bool | None]]] = {s: {} for s in others}
    base = per_query[baseline]
    for measure in measures:
        base_values = {q: v[measure] for q, v in base.items() if measure in v}
        raw: dict[str, float] = {}
        deltas: dict[str, float] = {}
        for system in others:
            values = {q: v[measure] for q, v in per_query[system].items() if measure in v}
            _, raw[system] = paired_t_test(values, base_values)
            x, y = _common(values, base_values)
            deltas[system] = float((x - y).mean()) if len(x) else 0.0
        adjusted = holm_adjusted(raw)
        rejected = holm_bonferroni(raw, alpha)
        for system in others:
            out[system][measure] = {
                "p": raw[system],
                "p_holm": adjusted[system],
                "significant": bool(rejected[system] and deltas[system] != 0.0),
                "delta": deltas[system],
            }
    return out
