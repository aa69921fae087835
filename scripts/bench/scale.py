"""Benchmark 4: scale. Exact top-k over synthetic corpora of growing size, and a score table
handled by streaming.

* Retrieval: random unit-norm embeddings [N, d] in a memory-mapped ``.npy`` file (as the mining
  embedding cache stores them), searched with :func:`distillrank.evaluation.retrieval.exact_topk`
  block by block exactly as :func:`distillrank.evaluation.dense.search` does. Time must grow
  linearly in N; peak anonymous memory must stay flat (one block plus the [Q, k] lists), the
  matrix itself living in the page cache. ``sentence_transformers.util.semantic_search`` over the
  same matrix loaded into memory is timed beside it for reference (up to 100k passages).
* Score table: a synthetic ``scores.parquet`` (qid, docid, label, teacher) of ``score_rows`` rows in
  row groups, read back one row group at a time to compute per-query statistics (positives,
  candidates, best teacher score); the peak memory of that pass is measured. It is a kernel of
  this benchmark only: the train stage's own reader (:func:`distillrank.training.batching.query_pools`,
  two passes in batches) is measured inside the stage by ``make bench-scale``
  (``scripts/bench/scale_pipeline.py``) and in docs/TRAINING.md, "Memory".
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from bench.common import Context, PeakMemory, load_average

CHUNK = 65536  # corpus rows per block, distillrank.mining.dense._CHUNK
TOP_K = 100
CANDIDATES_PER_QUERY = 100
ST_REFERENCE_MAX = 100_000


def synthetic_matrix(path: Path, n: int, dim: int, seed: int = 0) -> np.memmap:
    """Random unit-norm float32 rows [n, dim] written block by block into a ``.npy`` memmap."""
    rng = np.random.default_rng(seed)
    matrix = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, dim))
    for start in range(0, n, CHUNK):
        block = rng.standard_normal((min(CHUNK, n - start), dim), dtype=np.float32)
        matrix[start : start + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    matrix.flush()
    return matrix


def _retrieval(ctx: Context, scratch: Path) -> list[dict]:
    from sentence_transformers.util import semantic_search

    from distillrank.evaluation.retrieval import exact_topk

    s = ctx.sizes
    rng = np.random.default_rng(1)
    queries = torch.from_numpy(rng.standard_normal((s.scale_queries, s.scale_dim), dtype=np.float32))
    queries = torch.nn.functional.normalize(queries, dim=-1)
    rows = []
    for n in s.scale_corpora:
        path = scratch / f"corpus-{n}.npy"
        synthetic_matrix(path, n, s.scale_dim).flush()
        matrix = np.load(path, mmap_mode="r")

        def doc_block(start: int, end: int, m=matrix) -> torch.Tensor:
            return torch.from_numpy(np.array(m[start:end]))

        exact_topk(queries, n, doc_block, TOP_K, CHUNK)  # warm the page cache once
        times = []
        for _ in range(max(s.repeats, 1)):
            start = time.perf_counter()
            exact_topk(queries, n, doc_block, TOP_K, CHUNK)
            times.append(time.perf_counter() - start)
        with PeakMemory(trace_python=False) as mem:
            ours_scores, _ = exact_topk(queries, n, doc_block, TOP_K, CHUNK)
        row = {
            "corpus": n,
            "matrix_mib": round(n * s.scale_dim * 4 / 2**20, 1),
            "distillrank_s": float(np.median(times)),
            "distillrank_s_per_1m": float(np.median(times)) / n * 1e6,
            "distillrank_peak_anon_rss_mib": mem.result()["peak_anon_rss_mib"],
        }
        if n <= ST_REFERENCE_MAX:
            st_times = []
            with PeakMemory(trace_python=False) as st_mem:
                corpus = torch.from_numpy(np.array(matrix))
                for _ in range(max(s.repeats, 1)):
                    start = time.perf_counter()
                    hits = semantic_search(queries, corpus, top_k=TOP_K)
                    st_times.append(time.perf_counter() - start)
            row["st_semantic_search_s"] = float(np.median(st_times))
            row["st_peak_anon_rss_mib"] = st_mem.result()["peak_anon_rss_mib"]
            row["same_top1"] = float(
                np.mean([abs(h[0]["score"] - float(o[0])) < 1e-4 for h, o in zip(hits, ours_scores, strict=True)])
            )
            del corpus, hits
        del matrix
        path.unlink()
        rows.append(row)
        ctx.log(f"bench scale: {n} passages {row['distillrank_s']:.2f}s")
    return rows


def write_score_table(path: Path, n_rows: int, row_group: int, seed: int = 0) -> float:
    """A synthetic ``scores.parquet``: ``CANDIDATES_PER_QUERY`` rows per query, the first a positive.

    Returns the seconds it took to write."""
    rng = np.random.default_rng(seed)
    schema = pa.schema([("qid", pa.string()), ("docid", pa.string()), ("label", pa.int8()), ("teacher", pa.float32())])
    start = time.perf_counter()
    with pq.ParquetWriter(path, schema) as writer:
        for first in range(0, n_rows, row_group):
            idx = np.arange(first, min(first + row_group, n_rows), dtype=np.int64)
            batch = pa.record_batch(
                [
                    pc.cast(pa.array(idx // CANDIDATES_PER_QUERY), pa.string()),
                    pc.cast(pa.array(rng.integers(0, 10_000_000, len(idx))), pa.string()),
                    pa.array((idx % CANDIDATES_PER_QUERY == 0).astype(np.int8)),
                    pa.array(rng.standard_normal(len(idx), dtype=np.float32)),
                ],
                schema=schema,
            )
            writer.write_batch(batch, row_group_size=row_group)
    return time.perf_counter() - start


def stream_query_stats(path: Path) -> dict[str, float]:
    """Per-query statistics of a score table read one row group at a time; only one group is held.

    Returns the number of rows, queries, positives and the mean best teacher score per query. A
    query split over two row groups is merged through a carried partial aggregate (its last rows).
    """
    file = pq.ParquetFile(path)
    rows = queries = positives = 0
    best_sum = 0.0
    carry: tuple[str, float] | None = None
    for g in range(file.num_row_groups):
        table = file.read_row_group(g, columns=["qid", "label", "teacher"])
        rows += table.num_rows
        positives += int(pc.sum(table["label"]).as_py() or 0)
        grouped = table.group_by("qid", use_threads=False).aggregate([("teacher", "max")])
        qids = grouped["qid"].to_pylist()
        best = grouped["teacher_max"].to_numpy()
        if carry is not None and qids and qids[0] == carry[0]:
            best[0] = max(best[0], carry[1])
        elif carry is not None:
            queries += 1
            best_sum += carry[1]
        queries += len(qids) - 1
        best_sum += float(best[:-1].sum())
        carry = (qids[-1], float(best[-1])) if qids else carry
    if carry is not None:
        queries += 1
        best_sum += carry[1]
    return {"rows": rows, "queries": queries, "positives": positives, "mean_best_teacher": best_sum / max(queries, 1)}


def _score_table(ctx: Context, scratch: Path) -> dict:
    s = ctx.sizes
    path = scratch / "scores.parquet"
    write_s = write_score_table(path, s.score_rows, s.row_group)
    meta = pq.ParquetFile(path).metadata
    in_memory = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
    start = time.perf_counter()
    with PeakMemory(trace_python=False) as mem:
        result = stream_query_stats(path)
    read_s = time.perf_counter() - start
    out = {
        "rows": s.score_rows,
        "row_group_rows": s.row_group,
        "file_mib": round(path.stat().st_size / 2**20, 1),
        "whole_table_arrow_mib": round(in_memory / 2**20, 1),
        "write_s": write_s,
        "stream_s": read_s,
        "stream_rows_per_s": s.score_rows / read_s,
        "stream_peak_anon_rss_mib": mem.result()["peak_anon_rss_mib"],
        "check": result,
    }
    path.unlink()
    return out


def run(ctx: Context) -> dict:
    scratch = Path(tempfile.mkdtemp(dir=ctx.scratch, prefix="scale-"))
    load_before = load_average()
    retrieval = _retrieval(ctx, scratch)
    ctx.log("bench scale: score table")
    table = _score_table(ctx, scratch)
    first, last = retrieval[0], retrieval[-1]
    growth = (last["distillrank_s"] / first["distillrank_s"]) / (last["corpus"] / first["corpus"])
    return {
        "benchmark": "scale",
        "settings": {
            "corpora": list(ctx.sizes.scale_corpora), "queries": ctx.sizes.scale_queries, "dim": ctx.sizes.scale_dim,
            "top_k": TOP_K, "chunk_rows": CHUNK, "repeats": max(ctx.sizes.repeats, 1),
        },
        "cases": [
            {
                "case": "exact_topk_memmap", "unit": "s",
                "values": {"by_corpus": retrieval, "time_growth_vs_linear": growth},
            },
            {"case": "score_table_streaming", "unit": "s", "values": table},
        ],
        "load_average": [load_before, load_average()],
        "notes": [
            "time_growth_vs_linear = (t_largest / t_smallest) / (N_largest / N_smallest); 1.0 is exactly linear",
            "peak memory is anonymous RSS above the level at entry; the memory-mapped matrix is page cache, not counted",
            "score_table_streaming is this benchmark's own kernel; the train stage's reader (query_pools) is measured by make bench-scale",
        ],
    }
