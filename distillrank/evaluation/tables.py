"""Result tables in Markdown."""

from __future__ import annotations


def _fmt(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3f}" if value < 10 else f"{value:,.0f}"
    return str(value)


def results_table(results: dict[str, dict], measures: list[str]) -> str:
    """A Markdown table: one row per system, the measures, then speed and size."""
    header = ["system", *measures, "passages/s", "params (M)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for name, res in results.items():
        params = res.get("parameters")
        cells = [name, *[_fmt(res["metrics"].get(m)) for m in measures], _fmt(res.get("passages_per_s"))]
        cells.append(f"{params / 1e6:.1f}" if params else "–")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
