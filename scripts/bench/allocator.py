"""The allocator's share of an encoder's step: glibc's default malloc thresholds against freed
memory kept for the next forward (``hardware.keep_freed_memory``, :mod:`distillrank.allocator`).

The setting is process-wide and cannot be undone within a process, so each arm runs in its own
child process, the two arms alternating (default, kept, default, kept, …) so that a machine whose
speed drifts slows both alike. Each child times ``--steps`` steps (after two warm-ups) of one case
on the ceiling benchmark's batch (32 SciFact passages at ≤ 128 tokens) and counts the page faults a
step takes (``ru_minflt``): MiniLM-L6's forward (inference) and the 2-layer student's forward +
backward as the training loop runs it (fast dropout masks, backward outside autocast), in fp32 and
under bf16 autocast (on a CPU without bf16 units those are emulated and slow; ``--precision fp32``
skips them); and sentence-transformers' ``encode`` of the same batch in fp32, to show what the
setting gives it: the benchmarks that time it in distillrank's process give it the setting too.

    python scripts/bench/allocator.py --out docs/bench/allocator      # ~8 minutes on 2 cores

Writes ``<out>/allocator.json`` and ``<out>/allocator.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``bench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import MINILM, REPO_ROOT, load_average, machine, machine_line, write_result  # noqa: E402

CASES = ("forward", "forward_backward", "st_encode")  # st_encode: sentence-transformers, fp32 only
ARMS = ("default", "kept")


def child(
    case: str, precision: str, arm: str, steps: int, cache: Path, batch: int, max_length: int
) -> dict[str, Any]:
    """One arm of one case in this process: median step seconds and page faults a step."""
    import torch

    from bench.profile_encoder import _minilm_student, _step, _texts
    from distillrank import allocator
    from distillrank.models.bi_encoder import BiEncoder
    from distillrank.runtime import autocast

    if arm == "kept" and not allocator.keep_freed_memory():
        raise RuntimeError(f"the allocator's settings cannot be applied here ({allocator.settings(True)})")
    texts = _texts(batch, cache)
    if case == "st_encode":  # sentence-transformers' encode of the same batch (one forward), its defaults
        from sentence_transformers import SentenceTransformer

        from distillrank.models.hub import resolve_model

        model = SentenceTransformer(str(resolve_model(MINILM)), device="cpu")
        model.max_seq_length = max_length
        return _timed(lambda: model.encode(texts, batch_size=batch, show_progress_bar=False), steps, arm)
    train = case == "forward_backward"
    folder = _minilm_student(cache, 2, max_length) if train else MINILM
    encoder = (
        BiEncoder.load(folder, passage_max_length=max_length)
        if train
        else BiEncoder.from_backbone(MINILM, passage_max_length=max_length)
    )
    with autocast(torch.device("cpu"), precision):
        return _timed(lambda: _step(encoder, texts, train), steps, arm)


def _timed(step, steps: int, arm: str) -> dict[str, Any]:
    """Median seconds and page faults of ``steps`` calls of ``step`` after two warm-ups."""
    from distillrank import allocator

    seconds, faults = [], []
    for _ in range(2):
        step()
    for _ in range(steps):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        start = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - start)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return {
        "seconds": statistics.median(seconds),
        "faults": int(statistics.median(faults)),
        "allocator": allocator.settings(arm == "kept"),
    }


def run(
    precisions: list[str], repeats: int, steps: int, cache: Path, batch: int, max_length: int
) -> dict[str, Any]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")
    }
    described = machine()  # its load average: at the start (the header shows start → end)
    load_start = load_average()
    results: dict[str, dict[str, list[dict]]] = {}
    for _ in range(repeats):
        for precision in precisions:
            for case in CASES:
                if case == "st_encode" and precision != "fp32":
                    continue
                for arm in ARMS:
                    args = [
                        sys.executable,
                        __file__,
                        "--child",
                        case,
                        precision,
                        arm,
                        str(steps),
                        str(cache),
                        str(batch),
                        str(max_length),
                    ]
                    proc = subprocess.run(args, capture_output=True, text=True, env=env, check=False)
                    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
                    if proc.returncode or not line:
                        raise RuntimeError(f"{case} {precision} {arm} failed: {proc.stderr[-2000:]}")
                    results.setdefault(f"{case}_{precision}", {}).setdefault(arm, []).append(
                        json.loads(line[0][7:])
                    )
    summary = {}
    for key, arms in results.items():
        med = {arm: statistics.median(r["seconds"] for r in runs) for arm, runs in arms.items()}
        summary[key] = {
            "median_ms": {arm: round(v * 1e3, 1) for arm, v in med.items()},
            "speedup": med["default"] / med["kept"],
            "pairwise_speedups": [
                d["seconds"] / k["seconds"] for d, k in zip(arms["default"], arms["kept"], strict=True)
            ],
            "faults_per_step": {
                arm: int(statistics.median(r["faults"] for r in runs)) for arm, runs in arms.items()
            },
        }
    return {
        "benchmark": "allocator",
        "machine": described,
        "settings": {
            "batch": batch,
            "max_length": max_length,
            "repeats": repeats,
            "steps": steps,
            "threads": "torch's default",
        },
        "runs": results,
        "summary": summary,
        "load_average": [load_start, load_average()],
    }


def markdown(r: dict[str, Any]) -> str:
    s = r["settings"]
    lines = [
        machine_line(r["machine"], r["load_average"][1]),
        "",
        f"Batch of {s['batch']} SciFact passages at ≤ {s['max_length']} tokens; each arm in its own process, "
        f"the arms alternating, {s['repeats']} processes an arm, median of {s['steps']} steps each.",
        "",
        "| case | glibc's defaults: ms (page faults a step) | freed memory kept: ms (page faults) | speed-up (each pair) |",
        "|---|---:|---:|---:|",
    ]
    for key, v in r["summary"].items():
        pairs = ", ".join(f"{x:.2f}" for x in v["pairwise_speedups"])
        lines.append(
            f"| {key} | {v['median_ms']['default']:.1f} ({v['faults_per_step']['default']:,}) | "
            f"{v['median_ms']['kept']:.1f} ({v['faults_per_step']['kept']:,}) | **{v['speedup']:.2f}×** ({pairs}) |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        case, precision, arm, steps, cache, batch, max_length = argv[1:8]
        print(
            "RESULT "
            + json.dumps(child(case, precision, arm, int(steps), Path(cache), int(batch), int(max_length)))
        )
        return None
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--precision", nargs="+", choices=("fp32", "bf16"), default=["fp32", "bf16"])
    parser.add_argument("--repeats", type=int, default=3, help="processes an arm (alternating)")
    parser.add_argument("--steps", type=int, default=8, help="timed steps a process")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "bench" / "allocator")
    parser.add_argument(
        "--cache", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "distillrank-bench-cache"
    )
    args = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    result = run(args.precision, args.repeats, args.steps, args.cache, args.batch, args.max_length)
    write_result(args.out, "allocator", result, markdown(result))
    return result


if __name__ == "__main__":
    main()
