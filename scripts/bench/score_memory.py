"""Memory per pair of the score stage's data path (docs/SCALE.md, "Memory per pair").

A synthetic candidates table (``--pairs`` rows: qid, docid, label, rank, first_stage_score; 100
candidates a query) is scored by a trivial teacher (a function of the pair's indices: no model, so
what is measured is the pipeline's own bookkeeping), the way the score stage does it: read the
candidates' ids in batches, :func:`distillrank.teachers.cache.file_scores` through the score cache,
then :func:`distillrank.stages.score.assemble` (the stage's own final pass, with de-noising and per-query
z-scores on) writes ``scores.parquet``. Two phases, each in a fresh process:

* ``cold``: an empty cache; every pair is scored and written into cache shards.
* ``warm``: every pair is cached already (a rerun, a resume, or the final pass after sharded
  scoring); the cache is read and joined with the candidates.

Peak RSS is reset before the phase (``/proc/self/clear_refs``) and read after it (``VmHWM``); the
figure is (peak - RSS before) / pairs.

With ``--world N`` it measures instead what each rank of ``N`` gloo processes (``RANK`` /
``WORLD_SIZE`` as ``torchrun`` sets them) holds while it scores its share of an empty cache with
:func:`~distillrank.teachers.cache.score_share`: ``--read share`` gives it the candidates file (each
rank reads its share, as the score stage does), ``--read whole`` the whole table (what every rank
read before). The figure per rank is the slope between the sizes: bytes per further pair.
``--read final`` measures the stage's final pass under ``torchrun`` instead (after the shares are
scored): each rank writes the rows of its range of the candidates
(:func:`~distillrank.stages.score.assemble_share`), rank 0 joins the parts.

    python scripts/bench/score_memory.py --pairs 1000000
    python scripts/bench/score_memory.py --pairs 100000 400000 --world 2 --read share
    python scripts/bench/score_memory.py --pairs 2000000 8000000 --passages 1000000 --world 2 --read final
"""

from __future__ import annotations

# isort: off
import distillrank  # noqa: F401  first: it sets Arrow's allocator (distillrank/__init__.py) before pyarrow loads
# isort: on

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from distillrank import sharding
from distillrank.ranking import RankerKind
from distillrank.runtime import Runtime
from distillrank.stages.score import assemble, assemble_share, join_parts, part_names
from distillrank.teachers.cache import PairFile, file_scores, score_share

PER_QUERY = 100


def _status(field: str) -> int:
    """A ``/proc/self/status`` field in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def make_candidates(
    path: Path, pairs: int, seed: int = 0, row_group: int | None = None, passages: int | None = None
) -> None:
    """``pairs`` rows, ``PER_QUERY`` a query, docids drawn from ``passages`` passages (50 times as
    many as queries when None); row groups of ``row_group`` rows (pyarrow's default, 1Mi, when None)."""
    rng = np.random.default_rng(seed)
    n_queries = max(1, pairs // PER_QUERY)
    q = np.repeat(np.arange(n_queries), PER_QUERY)[:pairs]
    d = rng.integers(0, passages or 50 * n_queries, size=pairs)
    table = pa.table(
        {
            "qid": pa.array([str(1_000_000 + int(x)) for x in q], pa.string()),
            "docid": pa.array([str(7_000_000 + int(x)) for x in d], pa.string()),
            "label": pa.array((np.arange(pairs) % PER_QUERY == 0).astype(np.int32)),
            "rank": pa.array((np.arange(pairs) % PER_QUERY).astype(np.int32)),
            "first_stage_score": pa.array(rng.random(pairs, dtype=np.float32)),
        }
    )
    pq.write_table(table, path, row_group_size=row_group)


class TrivialTeacher:
    """Scores a pair from its indices, vectorised: no model, no text read."""

    kind = RankerKind.CROSS_ENCODER
    retrieves = False

    def score_pairs(self, pairs, runtime, *, batch_size=None, progress=False):
        return ((pairs.pair_q * 31 + pairs.pair_p) % 997).astype(np.float32) / 997


class Collection:
    fingerprint = "synthetic-collection"


def _phase(work: Path) -> dict:
    teacher, coll = TrivialTeacher(), Collection()
    query_text = _Texts("query ")

    def passage_text(docids: list[str]) -> list[str]:
        return ["passage " + d for d in docids]

    rss = _status("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
    start = time.perf_counter()
    rows = file_scores(
        teacher,
        "trivial-teacher",
        coll,
        PairFile(work / "candidates.parquet"),
        query_text,
        passage_text,
        cache_root=work / "cache",
        runtime=Runtime(),
        shard_size=20000,
        progress=False,
    )
    # the score stage's own final pass: de-noising (margin 0) and per-query z-scores on, so their
    # arrays count too
    assemble(work / "candidates.parquet", work / "scores.parquet", rows, 0.0, None, "zscore", "query")
    seconds = time.perf_counter() - start
    peak = _status("VmHWM")
    pairs = len(rows.scores)
    return {
        "pairs": pairs,
        "scored": rows.scored,
        "seconds": round(seconds, 1),
        "rss_before_mb": round(rss / 2**20),
        "peak_delta_mb": round((peak - rss) / 2**20, 1),
        "bytes_per_pair": round((peak - rss) / pairs),
    }


def _share_phase(work: Path, read: str) -> dict:
    """This rank's share of an empty cache scored, as the score stage's workers do."""
    share = sharding.from_env()
    sharding.join_group(share, Runtime().device)
    teacher, coll = TrivialTeacher(), Collection()
    rss = _status("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")
    start = time.perf_counter()
    path = work / "candidates.parquet"
    pairs = PairFile(path) if read == "share" else pq.read_table(path).select(["qid", "docid"])
    scored, _ = score_share(
        teacher,
        "trivial-teacher",
        coll,
        pairs,
        _Texts("query "),
        lambda docids: ["passage " + d for d in docids],
        cache_root=work / "cache",
        runtime=Runtime(),
        shard_size=20000,
        progress=False,
        share=share,
    )
    sharding.barrier(share)
    peak = _status("VmHWM")
    return {"rank": share.rank, "scored": scored, "seconds": round(time.perf_counter() - start, 1),
            "peak_delta_mb": round((peak - rss) / 2**20, 1)}  # fmt: skip


def _final_phase(work: Path) -> dict:
    """This rank's share of an empty cache scored (not measured), then the score stage's final pass
    under ``torchrun`` measured: this rank's part (:func:`~distillrank.stages.score.assemble_share`,
    de-noising with margin 0 and per-query z-scores on) and, on rank 0, the parts joined."""
    share = sharding.from_env()
    sharding.join_group(share, Runtime().device)
    teacher, coll = TrivialTeacher(), Collection()
    pair_file = PairFile(work / "candidates.parquet")
    score_share(
        teacher, "trivial-teacher", coll, pair_file, _Texts("query "), lambda docids: ["passage " + d for d in docids],
        cache_root=work / "cache", runtime=Runtime(), shard_size=20000, progress=False, share=share,
    )  # fmt: skip
    sharding.barrier(share)
    rss = _status("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")
    start = time.perf_counter()
    done = assemble_share(
        pair_file, work / "parts", teacher, "trivial-teacher", coll, cache_root=work / "cache", runtime=Runtime(),
        share=share, margin=0.0, relative=None, norm_method="zscore", norm_scope="query",
    )  # fmt: skip
    if done is None:
        raise SystemExit("a pair was missing from the cache after every share was scored")
    sharding.barrier(share)
    part_peak = _status("VmHWM")
    if share.main:
        join_parts(part_names(work / "parts", share.group), work / "scores.parquet")
    peak = _status("VmHWM")
    return {"rank": share.rank, "rows": done[0], "seconds": round(time.perf_counter() - start, 1),
            "part_peak_delta_mb": round((part_peak - rss) / 2**20, 1),
            "peak_delta_mb": round((peak - rss) / 2**20, 1)}  # fmt: skip


def _ranks(work: Path, world: int, read: str) -> list[dict]:
    """``world`` gloo processes, each scoring its share; their reports in rank order."""
    import os
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for rank in range(world):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))  # fmt: skip
        phase = "final" if read == "final" else "share"
        cmd = [sys.executable, __file__, "--phase", phase, "--work", str(work), "--read", read]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True))
    outs = [p.communicate()[0] for p in procs]
    if any(p.returncode for p in procs):
        raise SystemExit(f"a rank failed: {[p.returncode for p in procs]}")
    return [json.loads(o.strip().splitlines()[-1]) for o in outs]


class _Texts(dict):
    """qid -> text, made on lookup (the stage's query texts are per query, not per pair)."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def __missing__(self, key: str) -> str:
        return self.prefix + key


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, nargs="+", default=[250_000, 1_000_000])
    parser.add_argument("--world", type=int, help="ranks scoring their shares (gloo processes)")
    parser.add_argument(
        "--read",
        choices=["share", "whole", "final"],
        default="share",
        help="with --world: each rank scores its share reading the candidates file (share) or the "
        "whole table (whole); or (final) the final pass after the shares are scored, each rank writing "
        "its row range",
    )
    parser.add_argument(
        "--passages",
        type=int,
        help="docids drawn from this many passages at every size (default 50 a query), "
        "so that the slope between sizes is the cost of a pair alone, not of its distinct ids too",
    )
    parser.add_argument(
        "--row-group",
        type=int,
        help="rows per row group of the candidates (with --world; default pyarrow's 1Mi rows, which "
        "the mine stage writes: a rank reads a row group at a time, so below 1M pairs use a smaller "
        "one to see what a larger file costs)",
    )
    parser.add_argument("--phase", choices=["cold", "warm", "share", "final"], help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase == "share":
        print(json.dumps(_share_phase(args.work, args.read)))
        return
    if args.phase == "final":
        print(json.dumps(_final_phase(args.work)))
        return
    if args.phase:
        print(json.dumps(_phase(args.work)))
        return
    if args.world:
        points = []
        for pairs in args.pairs:
            with tempfile.TemporaryDirectory() as tmp:
                make_candidates(
                    Path(tmp) / "candidates.parquet", pairs, row_group=args.row_group, passages=args.passages
                )
                ranks = _ranks(Path(tmp), args.world, args.read)
            print(pairs, json.dumps(ranks), flush=True)
            points.append((pairs, [r["peak_delta_mb"] for r in ranks]))
        if len(points) >= 2:
            (n1, m1), (n2, m2) = points[0], points[-1]
            slopes = [round((b - a) * 2**20 / (n2 - n1)) for a, b in zip(m1, m2, strict=True)]
            print(
                f"world {args.world}, read {args.read}: bytes per further pair, per rank: {slopes} ({n1} -> {n2})"
            )
        return
    peaks: dict[str, list[tuple[int, int]]] = {"cold": [], "warm": []}
    for pairs in args.pairs:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            make_candidates(work / "candidates.parquet", pairs, passages=args.passages)
            for phase in ("cold", "warm"):
                out = (
                    subprocess.run(
                        [sys.executable, __file__, "--phase", phase, "--work", str(work)],
                        check=True,
                        capture_output=True,
                        text=True,
                    )
                    .stdout.strip()
                    .splitlines()[-1]
                )
                print(phase, out, flush=True)
                peaks[phase].append((pairs, json.loads(out)["peak_delta_mb"]))
    for phase, points in peaks.items():
        if len(points) >= 2:  # the slope: bytes each further pair costs, without the fixed part
            (n1, m1), (n2, m2) = points[0], points[-1]
            print(f"{phase}: {(m2 - m1) * 2**20 / (n2 - n1):.0f} bytes per further pair ({n1} -> {n2} pairs)")


if __name__ == "__main__":
    main()
