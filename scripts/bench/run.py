"""Run the distillrank vs sentence-transformers benchmarks and write their JSON results.

Usage::

    python scripts/bench/run.py --quick            # under 10 minutes on 2 CPU cores
    python scripts/bench/run.py                    # full sizes
    python scripts/bench/run.py --smoke --out /tmp/b   # every benchmark on tiny models, seconds
    python scripts/bench/run.py --quick --only scoring training

Writes ``<out>/<mode>/<benchmark>.json`` (one per benchmark, layout in :mod:`bench.common`) and
``<out>/<mode>/summary.json`` (machine, command, load averages, every result). ``--out`` defaults
to ``docs/bench``. With ``--only``, the other benchmarks' results of the previous summary are kept
in the new one and listed under ``carried_over`` (with the command and load they were taken at).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # read by tqdm when it is imported: no progress bars
if __package__ in (None, ""):  # run as a script: make ``bench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import report  # noqa: E402
from bench.common import REPO_ROOT, check_mode, distillrank_runtime, load_average, machine, quiet  # noqa: E402
from distillrank.workspace import atomic_write_json  # noqa: E402

BENCHMARKS = ("scoring", "training", "mining", "scale", "ceiling", "precision", "ablation")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="the quick sizes (< 10 min on 2 cores)")
    size.add_argument("--smoke", action="store_true", help="tiny models and sizes: checks that everything runs")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "bench", help="results folder")
    parser.add_argument("--cache", type=Path, default=None, help="models, BM25 index and collection cache (kept)")
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, default=list(BENCHMARKS), help="benchmarks to run")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    return parser.parse_args(argv)


def _carry_over(previous_path: Path, summary: dict) -> None:
    """With ``--only``, keep the other benchmarks' results of the previous summary of this mode,
    each marked in ``summary["carried_over"]`` with the command, machine load and date it came from."""
    if not previous_path.is_file():
        return
    previous = json.loads(previous_path.read_text(encoding="utf-8"))
    carried = dict(previous.get("carried_over", {}))
    for name, result in previous.get("results", {}).items():
        if name in summary["results"]:
            continue
        summary["results"][name] = result
        summary["seconds"][name] = previous.get("seconds", {}).get(name)
        carried.setdefault(
            name,
            {
                "command": previous.get("command"),
                "load_average_start": previous.get("machine", {}).get("load_average"),
                "load_average_end": previous.get("load_average_end"),
                "finished": previous.get("finished"),
            },
        )
    summary["carried_over"] = {k: v for k, v in carried.items() if k not in set(summary.get("ran", []))}


def main(argv: list[str] | None = None) -> dict:
    """Run the selected benchmarks; returns the summary that was written."""
    args = parse_args(argv)
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    sizes = check_mode(mode)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from bench.assets import build_context

    out = args.out / mode
    cache = args.cache or REPO_ROOT / "runs" / "_bench_cache"

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    summary: dict = {
        "mode": mode,
        "command": "python scripts/bench/run.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine(),
        "results": {},
        "seconds": {},
        "ran": list(args.only),
    }
    started = time.perf_counter()
    with quiet(), tempfile.TemporaryDirectory(prefix="distillrank-bench-") as scratch:
        ctx = build_context(mode, sizes, cache, Path(scratch), log)
        for name in args.only:
            log(f"bench: {name} ({mode}), load average {load_average()}")
            start = time.perf_counter()
            distillrank_runtime()  # conf/hardware/cpu.yaml's threads, as `distillrank` applies them
            result = importlib.import_module(f"bench.{name}").run(ctx)
            result["mode"] = mode
            result["seconds"] = time.perf_counter() - start
            atomic_write_json(out / f"{name}.json", result)
            summary["results"][name] = result
            summary["seconds"][name] = result["seconds"]
            for case in result["cases"]:
                if "ratio" in case:
                    log(f"bench: {name}/{case['case']}: ratio {case['ratio']:.2f} (goal {case['goal']}, met {case['met']})")
    summary["seconds"]["total"] = time.perf_counter() - started
    summary["load_average_end"] = load_average()
    summary["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    _carry_over(out / "summary.json", summary)
    summary["headline"] = report.headline(summary)  # hardware=auto against sentence-transformers, per goal
    atomic_write_json(out / "summary.json", summary)
    log(f"bench: {mode} done in {summary['seconds']['total']:.0f}s; results in {out}")
    return summary


if __name__ == "__main__":
    main()
