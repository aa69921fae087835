"""Memory of the training pools and one epoch's examples per scored pair, on a synthetic score table.

    python scripts/pool_memory.py --rows 1000000 [--old]

Writes a ``scores.parquet`` of ``--rows`` rows (``--queries`` queries, a positive and negatives each,
MS MARCO-like docids) to a temporary folder, then in this process builds the pools from it and draws
one epoch (8 negatives per example). Reports bytes per scored pair: retained (what the pools and the
epoch hold afterwards: Python/numpy allocations by tracemalloc, Arrow's by its memory pool) and the
growth of peak RSS while building. ``--old`` measures the list-of-objects code of commit 4135732
(``git show 4135732:distillrank/training/batching.py``), for comparison.
"""

from __future__ import annotations

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


def _table(rows: int, queries: int, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    qid = rng.integers(0, queries, rows)
    qid[:queries] = np.arange(queries)  # every query has a row, the first one its positive
    label = np.zeros(rows, np.int32)
    label[:queries] = 1
    order = np.argsort(qid, kind="stable")  # grouped by query, as the score stage writes
    docid = rng.integers(0, 8_841_823, rows)
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
    parser.add_argument("--old", action="store_true", help=f"the list-of-objects code of {OLD_COMMIT}")
    args = parser.parse_args(argv)
    batching = _batching(args.old)
    folder = Path(tempfile.mkdtemp())
    table = _table(args.rows, args.queries)
    pq.write_table(table, folder / "scores.parquet", row_group_size=100_000)
    del table
    pool = pa.default_memory_pool()
    pool.release_unused()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    arrow0 = pa.total_allocated_bytes()
    tracemalloc.start()
    pools, _ = batching.query_pools(folder / "scores.parquet")
    if args.old:
        epoch = batching.epoch_examples(pools, args.negatives, np.random.default_rng(0))
    else:
        epoch = batching.epoch_plan(pools, args.negatives, np.random.default_rng(0))
    python_bytes, python_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    arrow_bytes = pa.total_allocated_bytes() - arrow0
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss0
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


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
