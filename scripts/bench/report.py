"""Markdown tables of a benchmark summary (``python scripts/bench/report.py docs/bench/quick/summary.json``).

The tables pasted into ``docs/BENCHMARKS.md`` come from here, so they match the JSON exactly.
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
    for case in result["cases"][1:]:  # dense_mining_onnx: distillrank with ONNX Runtime
        mem["distillrank (ONNX Runtime)"] = case["peak_memory"]["distillrank"]
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
        lines.append(
            f"| {c['case']} | {_f(v.get('tokens'))} | {_f(v.get('seconds'), 3)} | {_f(v['gflops'], 1)} | {_f(v.get('fraction_of_matmul'))} |"
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
    parts = [head, carried(summary), comparisons(summary), mining_memory(summary), scale(summary), ceiling(summary), precision(summary), ablation(summary)]
    return "\n\n".join("\n".join(p) for p in parts if p) + "\n"


if __name__ == "__main__":
    print(render(json.loads(Path(sys.argv[1]).read_text(encoding="utf-8"))))
