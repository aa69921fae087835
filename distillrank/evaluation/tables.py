"""Result tables in Markdown."""

from __future__ import annotations

from collections.abc import Mapping

from distillrank.evaluation.significance import CORRECTION_NAME, TEST_NAME

BETTER = "†"
WORSE = "‡"
BM25_BETTER = "▲"  # a hybrid system against bm25, when the baseline is another system
BM25_WORSE = "▼"


def _fmt(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3f}" if value < 10 else f"{value:,.0f}"
    return str(value)


def _mark(entry: Mapping | None, better: str = BETTER, worse: str = WORSE) -> str:
    """``†`` for significantly better than the baseline, ``‡`` for significantly worse, else nothing."""
    if not entry or not entry.get("significant"):
        return ""
    delta = entry.get("delta") or 0.0
    return better if delta > 0 else worse if delta < 0 else ""


def results_table(
    results: dict[str, dict],
    measures: list[str],
    significance: Mapping[str, Mapping[str, Mapping]] | None = None,
    *,
    baseline: str | None = None,
    alpha: float = 0.05,
    bm25_significance: Mapping[str, Mapping[str, Mapping]] | None = None,
) -> str:
    """A Markdown table: one row per system, the measures, then speed and size.

    Args:
        results: ``{system: {"metrics": {measure: value}, "passages_per_s", "parameters"}}``.
        measures: the measure columns, in order.
        significance: the output of :func:`distillrank.evaluation.significance.compare_to_baseline`;
            when given, a value significantly better than the baseline (Student's paired t-test,
            Holm 1979 correction at ``alpha``) gets ``†``, a significantly worse one ``‡``, and a
            legend line follows the table.
        baseline: the baseline's name for the legend; inferred when exactly one system of
            ``results`` has no significance entry.
        alpha: the family-wise level, for the legend.
        bm25_significance: the hybrid systems tested against ``bm25`` when the baseline is another
            system (``significance_bm25`` in ``metrics.json``): ``▲`` / ``▼`` after the baseline's
            mark, and a second legend line.
    """
    header = ["system", *measures, "passages/s", "latency ms (p50 / p95)", "params (M)", "disk (MB)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for name, res in results.items():
        params = res.get("parameters")
        marks = (significance or {}).get(name) or {}
        bm25_marks = (bm25_significance or {}).get(name) or {}
        cells = [
            name,
            *[
                _fmt(res["metrics"].get(m))
                + _mark(marks.get(m))
                + _mark(bm25_marks.get(m), BM25_BETTER, BM25_WORSE)
                for m in measures
            ],
            _fmt(res.get("passages_per_s")),
        ]
        latency = res.get("latency")
        cells.append(f"{latency['median_ms']:.1f} / {latency['p95_ms']:.1f}" if latency else "–")
        cells.append(f"{params / 1e6:.1f}" if params else "–")
        cells.append(f"{res['disk_mb']:.1f}" if res.get("disk_mb") else "–")
        lines.append("| " + " | ".join(cells) + " |")
    table = "\n".join(lines) + "\n"
    if significance is not None:
        if baseline is None:
            unmarked = [n for n in results if n not in significance]
            baseline = unmarked[0] if len(unmarked) == 1 else "the baseline"
        table += (
            f"\n{BETTER} / {WORSE}: significantly better / worse than {baseline} "
            f"({TEST_NAME}, {CORRECTION_NAME}, α = {alpha:g}).\n"
        )
    if bm25_significance:
        table += (
            f"\n{BM25_BETTER} / {BM25_WORSE}: a hybrid system significantly better / worse than bm25 "
            f"({TEST_NAME}, Holm–Bonferroni correction across the hybrid systems, per measure, α = {alpha:g}).\n"
        )
    return table


def hybrid_note(results: Mapping[str, Mapping]) -> str | None:
    """One sentence on how each hybrid system of ``results`` fused its runs (its ``"hybrid"``
    record): RRF's k, or the convex α and how it was set; None when there is no hybrid system."""
    parts = []
    for name, res in results.items():
        info = res.get("hybrid")
        if not isinstance(info, Mapping):
            continue
        if info.get("method") == "rrf":
            parts.append(
                f"`{name}` = reciprocal-rank fusion of student and bm25, Σ 1 / (k + rank), k = {info.get('k')}"
            )
            continue
        source = info.get("alpha_from")
        if source == "dev":
            which = "held-out " if info.get("dev_held_out") else ""
            how = (
                f"chosen on {info.get('dev_queries')} {which}{info.get('dev_split')} queries by "
                f"{info.get('measure')} ({info.get('dev_value', float('nan')):.3f} there; grid 0–1, step 0.05)"
            )
        elif source == "fixed":
            how = "fixed (evaluate.hybrid_alpha)"
        else:
            how = f"the default ({info.get('why', 'no dev queries')})"
        alpha = info.get("alpha", float("nan"))
        parts.append(f"`{name}` = α · minmax(student) + (1 − α) · minmax(bm25) per query, α = {alpha:g}, {how}")
    return ("Hybrid systems: " + "; ".join(parts) + ".") if parts else None


def student_card_table(
    rows: list[tuple[str, str, int, Mapping, Mapping | None]],
    measures: list[str],
    mean: Mapping | None = None,
    *,
    baseline: str | None = None,
    alpha: float = 0.05,
) -> str:
    """A model card's table: one row per collection with one system's measures.

    Args:
        rows: ``(collection, split, queries, result, significance)``, ``result`` with ``"metrics"``
            and ``significance`` that system's ``{measure: test}`` against the baseline (or None).
        measures: the measure columns, in order.
        mean: the macro average row (``{"metrics": {measure: value}}``), written as
            ``mean (N collections)``; None for none.
        baseline: named in the legend that follows when any row has significance results.
        alpha: the family-wise level, for the legend.
    """
    header = ["collection", "split", "queries", *measures]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---", "---"] + ["---:"] * (len(header) - 2)) + "|"]
    for name, split, queries, result, marks in rows:
        cells = [name, split, str(queries)]
        cells += [_fmt(result["metrics"].get(m)) + _mark((marks or {}).get(m)) for m in measures]
        lines.append("| " + " | ".join(cells) + " |")
    if mean is not None:
        cells = [f"mean ({len(rows)} collections)", "", ""]
        cells += [_fmt(mean["metrics"].get(m)) for m in measures]
        lines.append("| " + " | ".join(cells) + " |")
    table = "\n".join(lines) + "\n"
    if baseline is not None and any(marks for *_, marks in rows):
        table += (
            f"\n{BETTER} / {WORSE}: significantly better / worse than {baseline} on that collection "
            f"({TEST_NAME}, {CORRECTION_NAME}, α = {alpha:g})"
            + ("; the mean is the macro average over the collections, untested" if mean is not None else "")
            + ".\n"
        )
    return table
