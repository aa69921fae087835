"""Benchmark 3: dense hard-negative mining, time and peak memory.

distillrank: what ``mining.method=dense`` does on an embedding-cache miss
(:func:`distillrank.evaluation.dense.encode_corpus` into a memory-mapped matrix, then
:func:`distillrank.evaluation.dense.search`: chunked exact top-k) followed by
:func:`distillrank.mining.sampling.sample_negatives` (``top``). sentence-transformers:
``sentence_transformers.util.mine_hard_negatives`` (exact search, no FAISS, ``sampling_strategy='top'``,
``output_format='n-tuple'``). Same model, batch size, corpus, queries, depth (``range_max``) and
number of negatives.

With the ``onnx`` extra installed, a third arm, ``distillrank_onnx``, mines the same way under
``hardware=cpu_onnx``: the encoder run by ONNX Runtime, with that option's forward cap (fp32, the
same candidates); its case is ``dense_mining_onnx`` against the same sentence-transformers runs.

``distillrank_auto`` mines as ``mining=dense`` does under ``hardware=auto`` (the default): the
mining encoder's calibration runs first (:func:`bench.auto.calibrate_ranker`: torch fp32 / bf16 and
ONNX Runtime fp32, on the collection's training queries), then the chosen runtime mines as the
other arms do; its case, ``dense_mining_auto``, is the headline of the mining goal, with the
calibration's choice and the share of queries whose mined negatives are fp32's.

Peak memory is measured per tool in a fresh child process (quick/full) so that neither inherits
the other's allocator state: anonymous RSS above the level after the model is loaded, and
tracemalloc's peak (Python and numpy allocations).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bench import auto
from bench.common import Context, PeakMemory, alternate, child_call, comparison, load_average, timed
from distillrank.workspace import atomic_write_json

GOAL_SPEED = 1.2
GOAL_MEMORY = 0.5  # at most this fraction of sentence-transformers' peak
TOOLS = ("distillrank", "sentence_transformers")
ONNX_TOOL = "distillrank_onnx"


class ListCollection:
    """The two members of a Collection that corpus encoding reads, over a list of passages."""

    def __init__(self, texts: list[str]) -> None:
        self.corpus = texts

    def passage_texts(self, rows) -> list[str]:
        return [self.corpus[int(r)] for r in rows]


def write_workload(ctx: Context, path: Path) -> dict:
    """Training queries with a positive, and a corpus of their positives plus the first corpus rows
    up to ``mine_corpus`` passages; saved as JSON at ``path`` (children read it) and returned."""
    s = ctx.sizes
    coll = ctx.collection
    queries, positives, rows = [], [], {}
    for qid, text in coll.split_queries("train")[: s.mine_queries]:
        pos = [d for d, rel in coll.qrels["train"][qid].items() if rel > 0]
        if pos:
            queries.append(text)
            positives.append(rows.setdefault(coll.doc_row(pos[0]), len(rows)))
    for r in range(len(coll.corpus)):
        if len(rows) >= max(s.mine_corpus, len(rows)):
            break
        rows.setdefault(r, len(rows))
    corpus = coll.passage_texts(list(rows))
    work = {"queries": queries, "positive_rows": positives, "corpus": corpus}
    atomic_write_json(path, work)
    return work


def miner(
    tool: str, model_dir: str, work: dict, batch_size: int, depth: int, negatives: int, scratch: str,
    precision: str = "fp32", backend: str = "torch",
) -> Callable[[], list]:
    """A no-argument function that mines with ``tool``; returns (query, positive, negatives…) tuples.
    ``precision`` / ``backend``: the runtime of ``distillrank_auto`` (the calibration's choice);
    ``distillrank_onnx`` runs ONNX Runtime fp32, ``distillrank`` torch fp32."""
    queries, corpus = work["queries"], work["corpus"]
    positives = [corpus[r] for r in work["positive_rows"]]
    if tool in ("distillrank", ONNX_TOOL, auto.TOOL):
        if tool != auto.TOOL:
            precision, backend = "fp32", "onnx" if tool == ONNX_TOOL else "torch"
        from distillrank.evaluation.dense import encode_corpus, search
        from distillrank.mining.dense import _CHUNK
        from distillrank.mining.sampling import sample_negatives
        from distillrank.models.bi_encoder import BiEncoder
        from distillrank.models.half_weights import cast_linear_weights
        from distillrank.models.onnx_runtime import OnnxBackbone

        encoder = BiEncoder.load(model_dir).eval().requires_grad_(False)
        if backend == "onnx":  # what dense_search does under hardware.backend=onnx
            encoder.backbone = OnnxBackbone.build(encoder.backbone, "last_hidden_state")  # $DISTILLRANK_ONNX_CACHE
        else:  # and under bf16 / fp16: the frozen linear weights in that dtype once
            cast_linear_weights(encoder, precision)
        coll = ListCollection(corpus)
        rng = np.random.default_rng(0)

        def mine() -> list:
            from bench.common import distillrank_runtime

            runtime = distillrank_runtime("cpu_onnx" if backend == "onnx" else "cpu", precision)
            with tempfile.TemporaryDirectory(dir=scratch) as tmp:
                matrix, _ = encode_corpus(encoder, coll, Path(tmp) / "corpus.npy", batch_size, _CHUNK,
                                          runtime, progress=False)
                _, rows = search(encoder, matrix, queries, depth, batch_size, _CHUNK, runtime)
                del matrix
            out = []
            for q, pos_row, ranked in zip(queries, work["positive_rows"], rows.tolist(), strict=True):
                negs = sample_negatives([str(r) for r in ranked], {str(pos_row)}, negatives, "top", 1, depth, rng)
                out.append((q, corpus[pos_row], *(corpus[int(d)] for d, _ in negs)))
            return out

        return mine
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.util import mine_hard_negatives

    model = SentenceTransformer(model_dir, device="cpu")
    dataset = Dataset.from_dict({"query": queries, "positive": positives})

    def mine_st() -> list:
        result = mine_hard_negatives(
            dataset, model, corpus=corpus, range_max=depth, num_negatives=negatives, sampling_strategy="top",
            batch_size=batch_size, output_format="n-tuple", use_faiss=False, verbose=False,
        )
        return [tuple(row.values()) for row in result]

    return mine_st


def peak_memory(
    tool: str, model_dir: str, workload_path: str, batch_size: int, depth: int, negatives: int, scratch: str,
    precision: str = "fp32", backend: str = "torch",
) -> dict:
    """One mining run of ``tool`` under :class:`bench.common.PeakMemory` (model loaded first)."""
    work = json.loads(Path(workload_path).read_text(encoding="utf-8"))
    mine = miner(tool, model_dir, work, batch_size, depth, negatives, scratch, precision, backend)
    with PeakMemory() as mem:
        tuples = mine()
    return {**mem.result(), "tuples": len(tuples)}


def run(ctx: Context) -> dict:
    import os

    from distillrank.models.onnx_runtime import CACHE_ENV

    previous = os.environ.get(CACHE_ENV)
    os.environ.setdefault(CACHE_ENV, str(ctx.cache / "onnx"))  # exports kept with the bench's models (children too)
    try:
        return _run(ctx)
    finally:
        if previous is None:
            os.environ.pop(CACHE_ENV, None)


def _run(ctx: Context) -> dict:
    s = ctx.sizes
    scratch = Path(tempfile.mkdtemp(dir=ctx.scratch, prefix="mine-"))
    workload_path = scratch / "workload.json"
    work = write_workload(ctx, workload_path)
    args = {"model_dir": str(ctx.bi_encoder), "batch_size": s.batch_size, "depth": s.mine_depth,
            "negatives": s.mine_negatives, "scratch": str(scratch)}
    from distillrank.models.onnx_runtime import missing_packages
    from distillrank.teachers import BiEncoderTeacher

    tools = (*TOOLS, ONNX_TOOL) if not missing_packages() else TOOLS
    tools = (*tools, auto.TOOL)
    # the mining encoder as the stage calibrates it (mining.query/passage_max_length unset: the teacher's defaults)
    choice = auto.calibrate_ranker(ctx, BiEncoderTeacher(str(ctx.bi_encoder)), mining=True)
    chosen = {"precision": choice["precision"], "backend": choice["backend"]}
    extra = {tool: chosen if tool == auto.TOOL else {} for tool in tools}
    miners = {tool: miner(tool, work=work, **args, **extra[tool]) for tool in tools}
    counts: dict[str, int] = {}
    mined: dict[str, list] = {}

    def timing(tool: str) -> Callable[[], float]:
        def once() -> float:
            out: list = []
            t = timed(lambda: out.extend(miners[tool]()))
            counts[tool] = len(out)
            mined[tool] = out
            return t

        return once

    load_before = load_average()
    times = alternate({tool: timing(tool) for tool in tools}, s.repeats)
    load_after = load_average()
    memory = {}
    for tool in tools:
        kwargs = {"tool": tool, "workload_path": str(workload_path), **args, **extra[tool]}
        memory[tool] = child_call("mining", "peak_memory", kwargs) if s.memory_in_child else peak_memory(**kwargs)
    ours_mem, theirs_mem = memory["distillrank"]["peak_anon_rss_mib"], memory["sentence_transformers"]["peak_anon_rss_mib"]
    mem_fraction = ours_mem / theirs_mem if theirs_mem > 0 else None
    case = comparison(
        "dense_mining", "s", times["distillrank"], times["sentence_transformers"], GOAL_SPEED,
        higher_is_better=False, load_average=[load_before, load_after],
    )
    case["peak_memory"] = {tool: memory[tool] for tool in TOOLS}
    case["memory_fraction"] = mem_fraction
    case["memory_goal"] = GOAL_MEMORY
    case["memory_met"] = None if mem_fraction is None else bool(mem_fraction <= GOAL_MEMORY)
    case["met"] = bool(case["met"] and case["memory_met"])
    cases = [case]
    if ONNX_TOOL in tools:
        onnx_mem = memory[ONNX_TOOL]["peak_anon_rss_mib"]
        onnx_case = comparison(
            "dense_mining_onnx", "s", times[ONNX_TOOL], times["sentence_transformers"], GOAL_SPEED,
            higher_is_better=False, load_average=[load_before, load_after], precision="fp32, distillrank ONNX Runtime",
        )
        onnx_case["peak_memory"] = {"distillrank": memory[ONNX_TOOL], "sentence_transformers": memory["sentence_transformers"]}
        onnx_case["memory_fraction"] = onnx_mem / theirs_mem if theirs_mem > 0 else None
        onnx_case["memory_goal"] = GOAL_MEMORY
        onnx_case["memory_met"] = None if onnx_case["memory_fraction"] is None else bool(onnx_case["memory_fraction"] <= GOAL_MEMORY)
        onnx_case["met"] = bool(onnx_case["met"] and onnx_case["memory_met"])
        cases.append(onnx_case)
    same = [set(a[2:]) == set(b[2:]) for a, b in zip(mined[auto.TOOL], mined["distillrank"], strict=True)]
    fidelity = {
        "same_negatives_vs_fp32": float(np.mean(same)) if same else 1.0,
        "calibration_spearman": (chosen_m := auto.chosen(choice)).get("spearman"),
        "calibration_top1": chosen_m.get("top1"),
        "quality_met": None,  # mining has no judgements here: the calibration's fidelity decided
    }
    auto_mem = memory[auto.TOOL]["peak_anon_rss_mib"]
    auto_case = auto.auto_case(
        "dense_mining_auto", "s", times[auto.TOOL], times["sentence_transformers"], GOAL_SPEED, choice, fidelity,
        "dense mining", higher_is_better=False, load_average=[load_before, load_after],
    )
    auto_case["peak_memory"] = {"distillrank": memory[auto.TOOL], "sentence_transformers": memory["sentence_transformers"]}
    auto_case["memory_fraction"] = auto_mem / theirs_mem if theirs_mem > 0 else None
    auto_case["memory_goal"] = GOAL_MEMORY
    auto_case["memory_met"] = None if auto_case["memory_fraction"] is None else bool(auto_case["memory_fraction"] <= GOAL_MEMORY)
    auto_case["met"] = bool(auto_case["met"] and auto_case["memory_met"])
    cases.append(auto_case)
    return {
        "benchmark": "mining",
        "settings": {
            "model": str(ctx.bi_encoder), "queries": len(work["queries"]), "corpus": len(work["corpus"]),
            "depth": s.mine_depth, "negatives": s.mine_negatives, "batch_size": s.batch_size,
            "precision": "fp32", "repeats": s.repeats, "memory_in_child_process": s.memory_in_child,
            "tuples": counts,
            "hardware_auto": choice,
        },
        "cases": cases,
        "notes": [
            "ratio = sentence-transformers time / distillrank time; met needs the speed goal and the memory goal",
            "both tools encode the corpus and the queries on every run (no embedding cache)",
        ],
    }
