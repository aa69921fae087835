"""Metrics with ir_measures: aggregate and per query."""

from __future__ import annotations

import ir_measures

from distillrank.errors import ConfigError

Qrels = dict[str, dict[str, int]]
Run = dict[str, dict[str, float]]


def parse_measures(names: list[str]) -> list:
    """ir_measures measure objects from strings such as ``nDCG@10``, ``RR@10``, ``R@100``, ``AP``."""
    measures = []
    for name in names:
        try:
            measures.append(ir_measures.parse_measure(name))
        except (ValueError, NameError, SyntaxError, AttributeError) as err:
            raise ConfigError(f"evaluate.measures: {name!r} is not an ir_measures measure ({err})") from None
    return measures


def compute_metrics(
    qrels: Qrels, run: Run, measures: list[str]
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Aggregate metrics and per-query metrics of a run.

    Every judged query counts: a query missing from the run scores 0 (ir_measures would skip it).

    Returns:
        ({measure: mean}, {qid: {measure: value}}).
    """
    parsed = parse_measures(measures)
    per_query: dict[str, dict[str, float]] = {qid: {str(m): 0.0 for m in parsed} for qid in qrels}
    for metric in ir_measures.iter_calc(parsed, qrels, run):
        if metric.query_id in per_query:
            per_query[metric.query_id][str(metric.measure)] = float(metric.value)
    n = max(len(per_query), 1)
    aggregate = {str(m): sum(q[str(m)] for q in per_query.values()) / n for m in parsed}
    return aggregate, per_query
