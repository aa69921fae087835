"""Memory of the training pools and one epoch's examples per scored pair, on a synthetic score table.

    python scripts/pool_memory.py --rows 1000000 [--old]
    python scripts/pool_memory.py --rows 10000000 --queries 100000 --world 4 [--rank 0] [--scores F]

Writes a ``scores.parquet`` of ``--rows`` rows (``--queries`` queries, a positive and negatives each,
MS MARCO-like docids) to a temporary folder, then in this process builds the pools from it and draws
one epoch (8 negatives per example). Reports bytes per scored pair: retained (what the pools and the
epoch hold afterwards: Python/numpy allocations by tracemalloc, Arrow's by its memory pool) and the
growth of peak RSS while building. ``--old`` measures the list-of-objects code of commit 4135732
(``git show 4135732:distillrank/training/batching.py``), for comparison.

``--world N``: what the train stage holds on rank ``--rank`` of N (1: one process) — the pools'
layout (:func:`~distillrank.training.batching.pool_layout`), the rank's epoch plan and the rows it
reads for it (:meth:`~distillrank.training.batching.Pools.holding`); ``--scores F`` keeps the table
in ``F`` (written there, by a child process, when missing), so the peak measured is the reading's
alone, not the writing's.
"""

from __future__ import annotations

import os

# before pyarrow loads its allocator, as distillrank/__init__.py does for the stages: freed pages
# returned at once (else the measured peak is the allocator's reuse cache, not the reading)
os.environ.setdefault("MIMALLOC_PURGE_DELAY", "0")

import argparse
import importlib.util
import json
import resource
import subprocess
import sys
import tempfile
import tracemalloc
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

OLD_COMMIT = "4135732"


def _table(rows: int, queries: int, passages: int = 8_841_823, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    qid = rng.integers(0, queries, rows)
    qid[:queries] = np.arange(queries)  # every query has a row, the first one its positive
    label = np.zeros(rows, np.int32)
    label[:queries] = 1
    order = np.argsort(qid, kind="stable")  # grouped by query, as the score stage writes
    docid = rng.integers(0, passages, rows)
    return pa.table(
        {
            "qid": pa.array([str(q) for q in qid[order]]),
            "docid": pa.array([str(d) for d in docid[order]]),
            "label": pa.array(label[order]),
            "teacher": pa.array(rng.normal(size=rows).astype(np.float32)),
            "dropped": pa.array(np.zeros(rows, bool)),
        }
    )


def _batching(old: bool):
    if not old:
        from distillrank.training import batching

        return batching
    root = Path(__file__).resolve().parents[1]
    source = subprocess.run(
        ["git", "show", f"{OLD_COMMIT}:distillrank/training/batching.py"],
        cwd=root,
        check=True,
        capture_output=True,
    ).stdout
    path = Path(tempfile.mkdtemp()) / "old_batching.py"
    path.write_bytes(source)
    spec = importlib.util.spec_from_file_location("old_batching", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=11_000)  # MS MARCO: ~45M pairs over ~500k queries
    parser.add_argument("--negatives", type=int, default=8)
    parser.add_argument("--passages", type=int, default=8_841_823, help="docids drawn from this many")
    parser.add_argument("--old", action="store_true", help=f"the list-of-objects code of {OLD_COMMIT}")
    parser.add_argument("--world", type=int, default=0, help="the train stage's reading on one rank of N")
    parser.add_argument("--rank", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--scores", type=Path, help="the score table's path (written when missing)")
    parser.add_argument("--write-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    path = args.scores or Path(tempfile.mkdtemp()) / "scores.parquet"
    if args.write_only or not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        if args.write_only or args.scores is None:
            pq.write_table(_table(args.rows, args.queries, args.passages), path, row_group_size=100_000)
        else:  # in a child process: its peak is not this one's
            subprocess.run(
                [sys.executable, __file__, "--rows", str(args.rows), "--queries", str(args.queries),
                 "--passages", str(args.passages), "--scores", str(path), "--write-only"],
                check=True,
            )
        if args.write_only:
            return {"written": str(path)}
    if args.world:
        return _rank(path, args)
    batching = _batching(args.old)

    def build():
        pools, _ = batching.query_pools(path)
        if args.old:
            return pools, batching.epoch_examples(pools, args.negatives, np.random.default_rng(0))
        return pools, batching.epoch_plan(pools, args.negatives, np.random.default_rng(0))

    (pools, epoch), python_bytes, python_peak, arrow_bytes, peak_rss = _measured(build)
    rows = args.rows
    result = {
        "code": f"{OLD_COMMIT} (lists of objects)" if args.old else "columnar",
        "rows": rows,
        "queries": len(pools),
        "examples": len(epoch),
        "retained_bytes_per_pair": round((python_bytes + arrow_bytes) / rows, 1),
        "traced_peak_bytes_per_pair": round(python_peak / rows, 1),
        "peak_rss_growth_bytes_per_pair": round(peak_rss / rows, 1),
    }
    print(json.dumps(result))
    return result


def _measured(build):
    """``build()``'s result, then the bytes it retained (Python/numpy by tracemalloc, and Arrow's),
    the traced peak, and the growth of this process's peak RSS while it ran."""
    pa.default_memory_pool().release_unused()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    arrow0 = pa.total_allocated_bytes()
    tracemalloc.start()
    out = build()
    python_bytes, python_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    arrow_bytes = pa.total_allocated_bytes() - arrow0
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss0
    return out, python_bytes, python_peak, arrow_bytes, peak_rss


def _rank(path: Path, args) -> dict:
    """Peak RSS growth and retained bytes of one rank's training data for one epoch."""
    from distillrank.training import batching

    part = (args.rank, args.world, args.batch_size) if args.world > 1 else None

    def build():
        layout, _ = batching.pool_layout(path)
        plan = batching.epoch_plan(layout, args.negatives, np.random.default_rng(0), part)
        return layout, plan, layout.holding(plan.rows_needed(layout, positives=True) if part else None)

    (layout, plan, held), python_bytes, _, arrow_bytes, peak_rss = _measured(build)
    rows = layout.n_rows
    result = {
        "code": "layout + rank plan + rows read",
        "world": args.world,
        "rank": args.rank,
        "rows": rows,
        "queries": len(layout),
        "examples_held": len(plan),
        "examples": plan.total,
        "rows_held": rows if held.whole else len(held.held),
        "retained_bytes_per_pair": round((python_bytes + arrow_bytes) / rows, 1),
        "peak_rss_growth_bytes_per_pair": round(peak_rss / rows, 1),
        "peak_rss_growth_mib": round(peak_rss / 2**20, 1),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
