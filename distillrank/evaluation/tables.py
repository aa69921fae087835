"""Result tables in Markdown."""

from __future__ import annotations

from collections.abc import Mapping

from distillrank.evaluation.significance import CORRECTION_NAME, TEST_NAME

BETTER = "†"
WORSE = "‡"


def _fmt(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3f}" if value < 10 else f"{value:,.0f}"
    return str(value)


def _mark(entry: Mapping | None) -> str:
    """``†`` for significantly better than the baseline, ``‡`` for significantly worse, else nothing."""
    if not entry or not entry.get("significant"):
        return ""
    delta = entry.get("delta") or 0.0
    return BETTER if delta > 0 else WORSE if delta < 0 else ""


def results_table(
    results: dict[str, dict],
    measures: list[str],
    significance: Mapping[str, Mapping[str, Mapping]] | None = None,
    *,
    baseline: str | None = None,
    alpha: float = 0.05,
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
    """
    header = ["system", *measures, "passages/s", "latency ms (p50 / p95)", "params (M)", "disk (MB)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for name, res in results.items():
        params = res.get("parameters")
        marks = (significance or {}).get(name) or {}
        cells = [
            name,
            *[_fmt(res["metrics"].get(m)) + _mark(marks.get(m)) for m in measures],
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
    return table


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
