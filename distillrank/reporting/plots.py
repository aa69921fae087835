"""The report's figures: PNGs drawn with matplotlib's Agg backend (no display needed), written atomically.

Each function takes plain arrays / records and a target path, and returns the path it wrote.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # before pyplot: render to files only

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from distillrank.reporting.deltas import QueryDeltas  # noqa: E402
from distillrank.workspace import atomic_path  # noqa: E402

DPI = 110


def _save(fig, path: Path) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path


def smooth(values: Sequence[float], weight: float = 0.9) -> np.ndarray:
    """Exponential moving average with bias correction (TensorBoard's smoothing): ``s_t = w s_{t-1} +
    (1 - w) x_t``, divided by ``1 - w^t`` so the first values are not pulled towards 0."""
    out = np.empty(len(values), dtype=np.float64)
    avg = 0.0
    for t, x in enumerate(values, start=1):
        avg = weight * avg + (1 - weight) * float(x)
        out[t - 1] = avg / (1 - weight**t)
    return out


def dev_metric_keys(records: Sequence[dict[str, Any]]) -> list[str]:
    """Keys of the training log that hold a dev nDCG@10 (``dev_nDCG@10``, ``dev/nDCG@10``, …)."""
    keys = dict.fromkeys(k for r in records for k in r if "ndcg@10" in k.lower())
    return list(keys)


def training_curves(records: Sequence[dict[str, Any]], path: Path, title: str) -> Path:
    """Loss vs optimizer step (raw, faint, and smoothed) and, when the log has it, dev nDCG@10 vs step.

    Args:
        records: ``train_log.jsonl`` records with ``step`` and ``loss`` (and maybe dev metrics).
    """
    dev_keys = dev_metric_keys(records)
    fig, axes = plt.subplots(1, 2 if dev_keys else 1, figsize=(10 if dev_keys else 6, 3.6), squeeze=False)
    loss_rows = [r for r in records if isinstance(r.get("loss"), int | float)]
    steps = np.array([r["step"] for r in loss_rows], dtype=np.float64)
    loss = np.array([r["loss"] for r in loss_rows], dtype=np.float64)
    ax = axes[0, 0]
    ax.plot(steps, loss, color="tab:blue", alpha=0.3, linewidth=1, label="loss")
    ax.plot(steps, smooth(loss), color="tab:blue", linewidth=2, label="smoothed (EMA 0.9)")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if dev_keys:
        ax = axes[0, 1]
        for key in dev_keys:
            rows = [r for r in records if isinstance(r.get(key), int | float)]
            ax.plot([r["step"] for r in rows], [r[key] for r in rows], marker="o", markersize=3, label=key)
        ax.set_xlabel("step")
        ax.set_ylabel("dev nDCG@10")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def score_scales(
    teacher_pos: np.ndarray,
    teacher_neg: np.ndarray,
    student_pos: np.ndarray,
    student_neg: np.ndarray,
    path: Path,
    title: str,
) -> Path:
    """Left: teacher vs student score of each sampled pair (positives and negatives); right: the
    distributions of the margins ``score(q, pos) - score(q, neg)`` of teacher and student."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.scatter(teacher_neg, student_neg, s=6, alpha=0.4, color="tab:red", label="negatives")
    left.scatter(teacher_pos, student_pos, s=6, alpha=0.4, color="tab:green", label="positives")
    left.set_xlabel("teacher score")
    left.set_ylabel("student score")
    left.set_title("scores of the sampled pairs", fontsize=9)
    left.grid(alpha=0.3)
    left.legend(fontsize=8)
    t_margin, s_margin = teacher_pos - teacher_neg, student_pos - student_neg
    edges = np.histogram_bin_edges(np.concatenate([t_margin, s_margin]), bins=40)
    right.hist(t_margin, bins=edges, alpha=0.5, color="tab:purple", label="teacher")
    right.hist(s_margin, bins=edges, alpha=0.5, color="tab:orange", label="student")
    right.axvline(0, color="black", linewidth=0.8)
    right.set_xlabel("margin: score(q, pos) − score(q, neg)")
    right.set_ylabel("triples")
    right.set_title("margin distributions", fontsize=9)
    right.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def query_deltas(deltas: QueryDeltas, path: Path, title: str, system: str, baseline: str) -> Path:
    """Per-query ``system - baseline`` differences, sorted, as bars (green gains, red losses)."""
    fig, ax = plt.subplots(figsize=(8, 3.6))
    x = np.arange(len(deltas.deltas))
    colors = np.where(deltas.deltas > 0, "tab:green", np.where(deltas.deltas < 0, "tab:red", "tab:gray"))
    ax.bar(x, deltas.deltas, width=1.0, color=colors, linewidth=0)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xlim(-0.5, max(len(x), 1) - 0.5)
    ax.set_xlabel(f"queries, sorted ({deltas.wins} better, {deltas.losses} worse, {deltas.ties} tied)")
    ax.set_ylabel(f"Δ {deltas.measure}: {system} − {baseline}")
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(title, fontsize=10)
    return _save(fig, path)


# Marker and colour of each kind of system in the quality–speed figure.
SPEED_STYLES: dict[str, tuple[str, str, str]] = {  # kind -> (marker, colour, legend label)
    "bm25": ("*", "tab:gray", "BM25"),
    "teacher": ("s", "tab:purple", "teacher"),
    "student": ("o", "tab:blue", "trained student"),
    "hybrid": ("^", "tab:green", "student + BM25 (hybrid)"),
    "student_init": ("o", "tab:cyan", "untrained student"),
    "other": ("D", "tab:orange", "other checkpoint"),
}


def quality_speed(panels: dict[str, list[dict[str, Any]]], path: Path, measure: str = "nDCG@10") -> Path:
    """Quality against speed, one row per collection: ``measure`` (y) against corpus throughput
    (passages/s, x, log scale) on the left and against single-query latency (median ms, x, log
    scale) on the right.

    BM25 encodes no passages: on the left it is a dashed horizontal line at its quality (labelled),
    on the right a point like the others. A point missing its x value (no latency measured, say)
    is left out of that panel.

    Args:
        panels: ``{collection title: [point]}``, a point ``{"label", "kind", "quality",
            "passages_per_s", "latency_ms"}`` with ``kind`` a key of :data:`SPEED_STYLES`
            (unknown kinds are drawn as ``other``) and the speeds None when unknown.
        path: the PNG to write.
        measure: the y axis label.
    """
    rows = max(len(panels), 1)
    fig, axes = plt.subplots(rows, 2, figsize=(12, 4.2 * rows), squeeze=False)
    for row, (title, points) in enumerate(panels.items()):
        throughput, latency = axes[row, 0], axes[row, 1]
        seen: set[str] = set()
        for p in points:
            marker, colour, legend = SPEED_STYLES.get(p["kind"], SPEED_STYLES["other"])
            label = legend if legend not in seen else None
            if p["kind"] == "bm25":
                throughput.axhline(p["quality"], color=colour, linestyle="--", linewidth=1, label=label)
                throughput.annotate(
                    f"{p['label']} (no encoding)", (0.01, p["quality"]), xycoords=("axes fraction", "data"),
                    fontsize=6, color=colour, va="bottom",
                )
            elif p.get("passages_per_s"):
                throughput.scatter([p["passages_per_s"]], [p["quality"]], marker=marker, color=colour, s=40,
                                   label=label, zorder=3)
                throughput.annotate(p["label"], (p["passages_per_s"], p["quality"]), fontsize=6,
                                    xytext=(4, 3), textcoords="offset points")
            if p.get("latency_ms"):
                latency.scatter([p["latency_ms"]], [p["quality"]], marker=marker, color=colour, s=40,
                                label=label, zorder=3)
                latency.annotate(p["label"], (p["latency_ms"], p["quality"]), fontsize=6,
                                 xytext=(4, 3), textcoords="offset points")
            seen.add(legend)
        for ax, xlabel in ((throughput, "passages/s (corpus encoding; log scale)"),
                           (latency, "query latency, median ms (log scale)")):
            if any(c for c in ax.collections):  # a log axis needs positive data
                ax.set_xscale("log")
            ax.set_xlabel(xlabel)
            ax.set_ylabel(measure)
            ax.set_title(title, fontsize=9)
            ax.grid(alpha=0.3, which="both")
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7, loc="best")
    fig.suptitle(f"{measure} against speed", fontsize=10)
    return _save(fig, path)
