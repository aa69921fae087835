"""The results of every system on every collection, combined: significance tests against the
baseline, the macro mean over collections, ``results.md`` and ``metrics.json``.

With one collection ``metrics.json`` is ``{system: result}``; with several it is ``{"collections":
{name: {"split", "queries", "passages", "folder", "systems": {system: result}}}, "mean": {"over":
[names], "average": "macro", "systems": {system: {"metrics", ...}}}}`` and ``results.md`` holds one
table per collection (significance tested within each) and the mean table.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from distillrank.evaluation.hybrid_systems import HYBRID
from distillrank.evaluation.significance import compare_to_baseline
from distillrank.evaluation.tables import hybrid_note, results_table
from distillrank.evaluation.targets import Target


def macro_average(per_collection: dict[str, dict[str, dict]], measures: list[str]) -> dict[str, dict]:
    """Each system's mean of each measure over the collections (macro: every collection weighs 1).

    Args:
        per_collection: ``{collection: {system: {"metrics": {measure: value}, "parameters", "disk_mb"}}}``.
        measures: the measures averaged.

    Returns:
        ``{system: {"metrics": {measure: mean}, "collections": n, "parameters", "disk_mb"}}`` for the
        systems of the first collection; a measure missing (or NaN) in any collection is left out.
        Speed and latency depend on each corpus and are not averaged; parameters and disk size are
        the model's (taken from the first collection).
    """
    names = list(per_collection)
    if not names:
        return {}
    out: dict[str, dict] = {}
    for system, first in per_collection[names[0]].items():
        rows = [per_collection[c].get(system) for c in names]
        metrics = {}
        for m in measures:
            values = [r["metrics"].get(m) for r in rows if r is not None]
            if len(values) == len(names) and all(v is not None and np.isfinite(v) for v in values):
                metrics[m] = float(np.mean(values))
        out[system] = {
            "metrics": metrics,
            "collections": len(names),
            "parameters": first.get("parameters"),
            "disk_mb": first.get("disk_mb"),
        }
    return out


def hybrid_against_bm25(
    results: dict[str, dict], baseline: str | None, measures: list[str], alpha: float
) -> dict[str, dict] | None:
    """The hybrid systems tested against ``bm25`` when the baseline is another system (with the
    baseline ``bm25`` the main tests already are; with none, nothing is tested): Student's paired
    t-test, Holm across the hybrid systems. None when there is nothing to add."""
    fused = [n for n in HYBRID if n in results]
    if baseline is None or baseline == "bm25" or not fused or "bm25" not in results:
        return None
    per_query = {n: results[n].get("per_query", {}) for n in ("bm25", *fused)}
    return compare_to_baseline(per_query, "bm25", measures, alpha)


def _summary(
    results: dict[str, dict], significance: dict | None, against_bm25: dict | None = None
) -> dict[str, dict]:
    """What ``metrics.json`` keeps of each system: all but the per-query values, plus its tests
    (``significance`` against the baseline; ``significance_bm25`` for the hybrid systems)."""
    return {
        n: {
            **{k: v for k, v in r.items() if k != "per_query"},
            **({"significance": significance[n]} if significance and n in significance else {}),
            **({"significance_bm25": against_bm25[n]} if against_bm25 and n in against_bm25 else {}),
        }
        for n, r in results.items()
    }


@dataclass
class Summary:
    """Every collection's results with their tests, the macro mean, and the stage's two outputs."""

    significance: dict[str, dict | None]  # collection -> tests against the baseline (None: no baseline)
    mean: dict[str, dict] | None  # the macro mean (None with one collection)
    text: str  # results.md
    metrics: dict  # metrics.json


def summarise(
    evaluated: list[Target],
    per_collection: dict[str, dict[str, dict]],
    measures: list[str],
    baseline: str | None,
    alpha: float,
) -> Summary:
    """Test every system against ``baseline`` within each collection (Student's paired t-test, Holm
    across the systems at ``alpha``), average over the collections, and write the tables."""
    significance: dict[str, dict | None] = {}
    against_bm25: dict[str, dict | None] = {}
    for t in evaluated:
        results = per_collection[t.name]
        significance[t.name] = (
            compare_to_baseline({n: r.get("per_query", {}) for n, r in results.items()}, baseline, measures, alpha)
            if baseline is not None
            else None
        )
        against_bm25[t.name] = hybrid_against_bm25(results, baseline, measures, alpha)

    def table(name: str) -> str:
        text = results_table(
            per_collection[name], measures, significance[name], baseline=baseline, alpha=alpha,
            bm25_significance=against_bm25[name],
        )
        note = hybrid_note(per_collection[name])
        return text + (f"\n{note}\n" if note else "")

    main = evaluated[0]
    mean = macro_average(per_collection, measures) if len(evaluated) > 1 else None
    if mean is None:
        text = f"{main.header}\n\n{table(main.name)}"
        metrics = _summary(per_collection[main.name], significance[main.name], against_bm25[main.name])
        return Summary(significance, None, text, metrics)
    sections = [f"## {t.header}\n\n{table(t.name)}" for t in evaluated]
    sections.append(
        f"## Mean over {len(evaluated)} collections ({', '.join(per_collection)})\n\n"
        "Macro average: each measure averaged over the collections, each collection weighing the same "
        "whatever its number of queries; significance is tested within each collection only.\n\n"
        + results_table(mean, measures)
    )
    metrics = {
        "collections": {
            t.name: {
                "split": t.split,
                "queries": len(t.queries),
                "passages": len(t.coll.corpus),
                "folder": t.rel,
                "systems": _summary(per_collection[t.name], significance[t.name], against_bm25[t.name]),
            }
            for t in evaluated
        },
        "mean": {"over": list(per_collection), "average": "macro", "systems": mean},
    }
    return Summary(significance, mean, "\n".join(sections), metrics)
