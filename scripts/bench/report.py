"""Markdown tables of a benchmark summary (``python scripts/bench/report.py docs/bench/quick/summary.json``).

The tables pasted into ``docs/BENCHMARKS.md`` come from here, so they match the JSON exactly. The
headline (:func:`headline`, also written into ``summary.json`` by ``run.py``) is what
``hardware=auto``, the default, gives against sentence-transformers for each goal of issue 16; the
named arms (fp32, int8, ONNX Runtime) follow as detail.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``bench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import machine_line  # noqa: E402


def _f(x, digits: int = 2) -> str:
    if x is None:
        return "–"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, float):
        return f"{x:,.{digits}f}"
    return f"{x:,}" if isinstance(x, int) else str(x)


GOALS = {  # the goal each auto case is the headline of
    "teacher scoring (cross-encoder)": "teacher scoring ≥ 1.5× ST",
    "teacher scoring (bi-encoder)": "teacher scoring ≥ 1.5× ST",
    "training": "training ≥ 1.3× ST's trainer",
    "dense mining": "dense mining ≥ 1.2× ST at ≤ 0.5× peak memory",
}


def headline(summary: dict) -> list[dict]:
    """One row per ``hardware=auto`` case (a case with ``auto``): the goal, the choice, the
    calibration's seconds, the ratio against sentence-transformers, the fidelity against fp32 and
    whether the goal is met (speed, memory where it has a goal, equal quality where measured)."""
    rows = []
    for name, result in summary["results"].items():
        for c in result["cases"]:
            if "auto" not in c:
                continue
            a, f = c["auto"], c.get("fidelity", {})
            rows.append(
                {
                    "goal": GOALS.get(c.get("headline"), c.get("headline")),
                    "benchmark": name,
                    "case": c["case"],
                    "choice": f"{a['backend']} {a['precision']}",
                    "choice_speedup_vs_fp32": a.get("speedup_vs_fp32"),
                    "calibration_s": a.get("wall_s"),
                    "calibration_first_use": a.get("first_use"),
                    "calibration_met": a.get("met"),
                    "ratio": c["ratio"],
                    "ratio_goal": c["goal"],
                    "memory_fraction": c.get("memory_fraction"),
                    "memory_goal": c.get("memory_goal"),
                    "fidelity": f,
                    "met": c["met"],
                }
            )
    return rows + ceiling_headline(summary)


CEILING_GOALS = {  # the ceiling benchmark's case, the auto case whose choice sets its precision, the goal
    "bi_encoder_forward": ("bi_encoder_auto", 0.75, "encoder forward ≥ 75% of the matmul ceiling"),
    "student_forward_backward": ("margin_mse_auto", 0.60, "forward + backward ≥ 60% of the matmul ceiling"),
}


def ceiling_headline(summary: dict) -> list[dict]:
    """The ceiling goals, each in the precision ``hardware=auto`` chose for that model in the same
    run (the bi-encoder teacher's choice for the forward, the student's training choice for forward +
    backward: "of the fp32 ceiling, or of the bf16 ceiling when bf16 is chosen"); none when the
    ceiling benchmark or that auto case did not run (``--only``)."""
    if "ceiling" not in summary["results"]:
        return []
    cases = {c["case"]: c for result in summary["results"].values() for c in result["cases"]}
    rows = []
    for case, (auto_case, goal, text) in CEILING_GOALS.items():
        choice = cases.get(auto_case, {}).get("auto")
        if choice is None or choice["backend"] != "torch" or choice["precision"] not in ("fp32", "bf16"):
            continue  # the ceiling is measured for torch fp32 and bf16 only
        precision = choice["precision"]
        measured = cases.get(case if precision == "fp32" else f"{case}_{precision}")
        if measured is None:
            continue
        fraction = measured["values"]["fraction_of_matmul"]
        rows.append(
            {
                "goal": text, "benchmark": "ceiling", "case": measured["case"], "choice": f"torch {precision}",
                "choice_speedup_vs_fp32": None, "calibration_s": None, "calibration_first_use": None,
                "calibration_met": None, "ratio": fraction, "ratio_goal": goal, "memory_fraction": None,
                "memory_goal": None, "fidelity": {}, "met": bool(fraction >= goal),
            }
        )  # fmt: skip
    return rows


def _fidelity(f: dict) -> str:
    parts = []
    if f.get("spearman_vs_fp32") is not None:
        parts.append(f"Spearman {_f(f['spearman_vs_fp32'], 4)}")
    if f.get("top1_vs_fp32") is not None:
        parts.append(f"top-1 {_f(100 * f['top1_vs_fp32'], 1)}%")
    if f.get("ndcg_at_10"):
        n = f["ndcg_at_10"]
        parts.append(f"nDCG@10 {_f(n['auto'], 4)} vs {_f(n['fp32'], 4)} ({f['ndcg_delta']:+.4f})")
    if f.get("same_negatives_vs_fp32") is not None:
        parts.append(f"negatives as fp32's {_f(100 * f['same_negatives_vs_fp32'], 1)}%")
    if f.get("calibration_spearman") is not None:
        parts.append(f"calibration Spearman {_f(f['calibration_spearman'], 4)}, top-1 {_f(100 * f['calibration_top1'], 1)}%")
    if "loss_rdiff_vs_fp32" in f:
        parts.append(f"calibration loss within {_f(f['loss_rdiff_vs_fp32'], 4)} of fp32")
    return "; ".join(parts) or "–"


def auto_headline(summary: dict) -> list[str]:
    rows = headline(summary)
    if not rows:
        return []
    lines = [
        "Headline: `hardware=auto` (the default) against sentence-transformers with its defaults.",
        "",
        "| goal | case | auto chose (× torch fp32) | calibration (s; goal < 30) | ratio vs ST | fidelity vs distillrank fp32 | met |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ratio = f"**{_f(r['ratio'])}×**" if r["benchmark"] != "ceiling" else f"**{_f(100 * r['ratio'], 0)}%** of the ceiling"
        if r["memory_fraction"] is not None:
            ratio += f", memory {_f(r['memory_fraction'])}×"
        speedup = f" ({_f(r['choice_speedup_vs_fp32'])}×)" if r["choice_speedup_vs_fp32"] is not None else ""
        first = ", first use" if r["calibration_first_use"] else ""
        if r["calibration_met"] is False:
            first += ", over 30 s"
        lines.append(
            f"| {r['goal']} | {r['benchmark']}/{r['case']} | {r['choice']}{speedup} | {_f(r['calibration_s'], 1)}{first} | "
            f"{ratio} | {_fidelity(r['fidelity'])} | {_f(r['met'])} |"
        )
    return lines


def auto_candidates(summary: dict) -> list[str]:
    """Every candidate the auto cases' calibrations measured: speed-up over torch fp32, fidelity, why rejected."""
    lines = [
        "| case | candidate | speed-up vs torch fp32 | timed calls | Spearman | top-1 | loss diff | rejected |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for result in summary["results"].values():
        for c in result["cases"]:
            for m in c.get("auto", {}).get("candidates", []):
                top1 = None if m.get("top1") is None else 100 * m["top1"]
                lines.append(
                    f"| {c['case']} | {m['backend']} {m['precision']} | {_f(m.get('speedup'))} | {_f(m.get('timed'))} | "
                    f"{_f(m.get('spearman'), 4)} | {_f(top1, 1)} | {_f(m.get('loss_rdiff'), 4)} | {m.get('rejected') or '–'} |"
                )
    return lines if len(lines) > 2 else []


def comparisons(summary: dict) -> list[str]:
    lines = [
        "| benchmark | case | precision | unit | distillrank (median) | sentence-transformers (median) | ratio | goal | met |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, result in summary["results"].items():
        for c in result["cases"]:
            if "ratio" not in c:
                continue
            goal = f"≥ {c['goal']}×"
            if "memory_fraction" in c:
                goal += f", memory ≤ {c['memory_goal']}× (measured {_f(c['memory_fraction'])}×)"
            precision = c.get("precision", "fp32").replace("distillrank int8, sentence-transformers fp32", "int8 vs ST fp32")
            lines.append(
                f"| {name} | {c['case']} | {precision} | {c['unit']} | {_f(c['distillrank']['median'])} | "
                f"{_f(c['sentence_transformers']['median'])} | **{_f(c['ratio'])}×** | {goal} | {_f(c['met'])} |"
            )
    return lines


def mining_memory(summary: dict) -> list[str]:
    result = summary["results"].get("mining")
    if not result:
        return []
    mem = dict(result["cases"][0]["peak_memory"])
    labels = {"dense_mining_onnx": "distillrank (ONNX Runtime)", "dense_mining_auto": "distillrank (hardware=auto)"}
    for case in result["cases"][1:]:  # distillrank with ONNX Runtime, and under hardware=auto
        mem[labels.get(case["case"], case["case"])] = case["peak_memory"]["distillrank"]
    lines = ["| tool | peak anonymous RSS (MiB) | peak tracemalloc (MiB) |", "|---|---|---|"]
    for tool, m in mem.items():
        lines.append(f"| {tool} | {_f(m['peak_anon_rss_mib'], 1)} | {_f(m['peak_tracemalloc_mib'], 1)} |")
    return lines


def scale(summary: dict) -> list[str]:
    result = summary["results"].get("scale")
    if not result:
        return []
    topk, table = result["cases"][0]["values"], result["cases"][1]["values"]
    lines = [
        "| passages | matrix (MiB) | distillrank exact_topk (s) | s per 1M passages | peak anon RSS (MiB) | "
        "ST semantic_search (s) | ST peak anon RSS (MiB) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in topk["by_corpus"]:
        lines.append(
            f"| {r['corpus']:,} | {_f(r['matrix_mib'], 1)} | {_f(r['distillrank_s'], 3)} | {_f(r['distillrank_s_per_1m'], 2)} | "
            f"{_f(r['distillrank_peak_anon_rss_mib'], 1)} | {_f(r.get('st_semantic_search_s'), 3)} | {_f(r.get('st_peak_anon_rss_mib'), 1)} |"
        )
    lines += [
        "",
        f"Time growth against linear (1.0 = linear): {_f(topk['time_growth_vs_linear'])}.",
        "",
        "| score rows | row group | file (MiB) | whole table in Arrow (MiB) | write (s) | stream (s) | rows/s | peak anon RSS while streaming (MiB) |",
        "|---|---|---|---|---|---|---|---|",
        f"| {table['rows']:,} | {table['row_group_rows']:,} | {_f(table['file_mib'], 1)} | {_f(table['whole_table_arrow_mib'], 1)} | "
        f"{_f(table['write_s'], 1)} | {_f(table['stream_s'], 1)} | {_f(table['stream_rows_per_s'], 0)} | {_f(table['stream_peak_anon_rss_mib'], 1)} |",
    ]
    return lines


def ceiling(summary: dict) -> list[str]:
    result = summary["results"].get("ceiling")
    if not result:
        return []
    lines = ["| measurement | tokens | seconds | GFLOP/s | fraction of matmul |", "|---|---|---|---|---|"]
    for c in result["cases"]:
        v = c["values"]
        name = c["case"]
        if v.get("skipped"):  # bf16 emulated on this CPU: not measured
            lines.append(f"| {name} (not measured: {v['skipped']}) | – | – | – | – |")
            continue
        if "square_gflops" in v:  # the matmul rate: the best of the square product and the encoder's shapes
            shapes = ", ".join(f"{k} {_f(g, 0)}" for k, g in v["linear_gflops"].items())
            name += f" (best of {v['n']}² {_f(v['square_gflops'], 0)} and the encoder's products: {shapes})"
        lines.append(
            f"| {name} | {_f(v.get('tokens'))} | {_f(v.get('seconds'), 3)} | {_f(v['gflops'], 1)} | {_f(v.get('fraction_of_matmul'))} |"
        )
    return lines


def precision(summary: dict) -> list[str]:
    result = summary["results"].get("precision")
    if not result:
        return []
    cases = {c["case"]: c["values"] for c in result["cases"]}
    fw, tr, fid = cases["forward"], cases["train_step"], cases["fidelity"]
    lines = [
        "| measurement | texts | fp32 (texts/s) | bf16 (texts/s) | int8 (texts/s) | bf16 speed-up | int8 speed-up |",
        "|---|---|---|---|---|---|---|",
        f"| bi-encoder forward (encode) | {fw['texts']} | {_f(fw['fp32_texts_per_s'])} | {_f(fw['bf16_texts_per_s'])} | "
        f"{_f(fw['int8_texts_per_s'])} | {_f(fw['bf16_speedup'])}× | {_f(fw['int8_speedup'])}× |",
        f"| student forward + backward | {tr['texts']} | {_f(tr['fp32_texts_per_s'])} | {_f(tr['bf16_texts_per_s'])} | – | "
        f"{_f(tr['bf16_speedup'])}× | – |",
        "",
        f"Fidelity: {fid['queries']} SciFact test queries, BM25 top {fid['depth']} ({fid['pairs']} pairs) re-ranked by the MiniLM teacher.",
        "",
        "| precision | nDCG@10 | Spearman vs fp32 (mean / min) | Kendall vs fp32 (mean) | top-1 unchanged | max abs score diff |",
        "|---|---|---|---|---|---|",
        f"| BM25 (first stage) | {_f(fid['ndcg_at_10']['bm25'], 4)} | – | – | – | – |",
        f"| fp32 | {_f(fid['ndcg_at_10']['fp32'], 4)} | 1 | 1 | 1 | 0 |",
    ]
    for p in ("int8", "bf16"):
        a = fid["agreement_with_fp32"][p]
        lines.append(
            f"| {p} | {_f(fid['ndcg_at_10'][p], 4)} | {_f(a['spearman_mean'], 4)} / {_f(a['spearman_min'], 4)} | "
            f"{_f(a['kendall_mean'], 4)} | {_f(a['top1_unchanged'], 3)} | {_f(a['max_abs_diff'], 4)} |"
        )
    return lines


ABLATION_LABELS = {
    "length_sorting": "length sorting (queries and passages mixed)",
    "mask_skip": "no attention mask when it masks nothing",
    "forward_cap": "hardware.max_forward_texts=16",
    "dropout": "student.dropout=0 (training step)",
    "torch_compile_encode": "torch.compile, encoder forward",
    "torch_compile_train_step": "torch.compile, student step",
}


def ablation(summary: dict) -> list[str]:
    result = summary["results"].get("ablation")
    if not result:
        return []
    lines = [
        "| technique | texts | on (s) | off (s) | speed-up | notes |",
        "|---|---|---|---|---|---|",
    ]
    for c in result["cases"]:
        v = c["values"]
        if c["case"] == "tokenization":
            continue
        med = v["median_s"]
        notes = []
        if "padding_sorted" in v:
            notes.append(f"padded tokens {_f(100 * v['padding_sorted'], 1)}% sorted, {_f(100 * v['padding_unsorted'], 1)}% unsorted")
        if "speedup_no_attention_dropout" in v:
            notes.append(f"attention dropout off only: {_f(v['speedup_no_attention_dropout'])}×")
        if "speedup_cap_8" in v:
            notes.append(f"a cap of 8: {_f(v['speedup_cap_8'])}×")
        if "first_call_s" in v:
            notes.append(f"first call (compiling) {_f(v['first_call_s'], 1)} s")
        lines.append(
            f"| {ABLATION_LABELS.get(c['case'], c['case'])} | {v['texts']} | {_f(med[v['on']], 3)} | "
            f"{_f(med[v['off']], 3)} | **{_f(v['speedup'])}×** | {'; '.join(notes)} |"
        )
    tok = next((c["values"] for c in result["cases"] if c["case"] == "tokenization"), None)
    if tok:
        lines += [
            "",
            f"Tokenization: {_f(tok['tokenize_s'], 3)} s of a {_f(tok['encode_s'], 3)} s encode of {tok['texts']} passages "
            f"({_f(100 * tok['share'], 1)}%): the most a pre-tokenised cache could save.",
        ]
    return lines


def carried(summary: dict) -> list[str]:
    if not summary.get("carried_over"):
        return []
    lines = ["Results carried over from an earlier run (not re-measured by this command):", ""]
    for name, c in summary["carried_over"].items():
        lines.append(f"* {name}: `{c['command']}`, load average {c['load_average_start']} → {c['load_average_end']}")
    return lines


def render(summary: dict) -> str:
    m = summary["machine"]
    head = [
        f"Mode `{summary['mode']}`, command `{summary['command']}`; total {summary['seconds']['total']:.0f} s.",
        machine_line(m, summary.get("load_average_end")),
        f"Software: transformers {m['transformers']}, sentence-transformers {m['sentence_transformers']}, "
        f"Python {m.get('python', '?')}.",
    ]
    parts = [head, carried(summary), auto_headline(summary), auto_candidates(summary), comparisons(summary), mining_memory(summary), scale(summary), ceiling(summary), precision(summary), ablation(summary)]
    return "\n\n".join("\n".join(p) for p in parts if p) + "\n"


if __name__ == "__main__":
    print(render(json.loads(Path(sys.argv[1]).read_text(encoding="utf-8"))))
