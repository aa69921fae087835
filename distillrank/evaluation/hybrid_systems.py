"""The hybrid systems: the trained bi-encoder student fused with BM25, from their run files.

``hybrid_rrf`` fuses the two runs by reciprocal ranks (``evaluate.hybrid_rrf_k``); ``hybrid`` by
α·minmax(student) + (1−α)·minmax(bm25) (:mod:`distillrank.evaluation.hybrid`), α fixed, chosen on
dev queries, or the default. Their latency times BM25, the student's query encoding and search, and
the fusion, one query at a time; passages/s, parameters and disk are the student's.
"""

from __future__ import annotations

import logging

import numpy as np

from distillrank.artifacts import RUN
from distillrank.evaluation.dense import ScratchIndex, latency_ms
from distillrank.evaluation.hybrid import DEFAULT_ALPHA, choose_alpha, convex_runs, ranking, rrf_runs
from distillrank.evaluation.runs import read_trec_run
from distillrank.evaluation.targets import Settings, Target, judged
from distillrank.mining.fusion import convex_fuse, rrf_fuse

log = logging.getLogger(__name__)

HYBRID = ("hybrid_rrf", "hybrid")  # the student fused with BM25: reciprocal ranks, convex scores


def _dev_set(settings: Settings, target: Target) -> tuple[list[tuple[str, str]], dict[str, dict[str, int]]]:
    """The judged queries α is chosen on: ``evaluate.hybrid_dev_queries`` of ``target.dev_split``,
    sampled with ``seed`` (kept in the split's order), and their qrels."""
    queries, qrels = judged(target.coll, target.dev_split)
    if target.held_out is not None:
        held = set(target.held_out)
        queries = [(q, t) for q, t in queries if q in held]
    n = settings.hybrid_dev_queries
    if n is not None and int(n) < len(queries):
        keep = sorted(np.random.default_rng(settings.seed).permutation(len(queries))[: int(n)].tolist())
        queries = [queries[i] for i in keep]
    return queries, {q: qrels[q] for q, _ in queries}


def chooses_alpha(settings: Settings, target: Target, names: list[str]) -> bool:
    """Whether evaluating ``names`` chooses the convex system's α on the target's dev queries."""
    return "hybrid" in names and settings.hybrid_alpha is None and target.dev_split is not None


def bm25_run(index, queries: list[tuple[str, str]], depth: int, doc_ids: list[str]) -> dict[str, dict]:
    """BM25's run ``{qid: {docid: score}}`` of ``(qid, text)`` queries, top ``depth`` each."""
    rows, scores = index.search([t for _, t in queries], depth, progress=False)
    return {
        qid: {doc_ids[r]: float(s) for r, s in zip(rows[i], scores[i], strict=True) if r >= 0}
        for i, (qid, _) in enumerate(queries)
    }


def _alpha(settings: Settings, target: Target, student: ScratchIndex | None, bm25) -> tuple[float, dict]:
    """The convex system's α and how it was set: fixed, chosen on dev queries, or the default."""
    if settings.hybrid_alpha is not None:
        return float(settings.hybrid_alpha), {"alpha": float(settings.hybrid_alpha), "alpha_from": "fixed"}
    if target.dev_split is None:
        why = target.default_why or f"{target.name} has no judged dev or train split besides {target.split!r}"
        log.info("evaluate: hybrid α = %g, the default: %s", DEFAULT_ALPHA, why)
        return DEFAULT_ALPHA, {"alpha": DEFAULT_ALPHA, "alpha_from": "default", "why": why}
    queries, qrels = _dev_set(settings, target)
    held_out = target.held_out is not None
    log.info(
        "evaluate: hybrid α on %d %s%s queries of %s",
        len(queries), "held-out " if held_out else "", target.dev_split, target.name,
    )
    dense_dev = student.retrieve(queries, settings.top_k)
    bm25_dev = bm25_run(bm25, queries, settings.top_k, target.coll.doc_ids())
    choice = choose_alpha(dense_dev, bm25_dev, qrels, str(settings.hybrid_measure), depth=settings.top_k)
    record = choice.to_dict()
    return choice.alpha, {
        "alpha": choice.alpha,
        "alpha_from": "dev",
        "dev_split": target.dev_split,
        "dev_queries": record.pop("queries"),
        "dev_held_out": held_out,
        "measure": record.pop("measure"),
        "dev_value": record.pop("value"),
        "curve": record.pop("curve"),
    }


def evaluate_hybrid(
    target: Target, names: list[str], results: dict[str, dict], student: ScratchIndex | None, bm25, settings: Settings
) -> dict[str, dict]:
    """The hybrid systems ``names`` from the ``student`` and ``bm25`` run files of ``target``.

    ``student``: the student's corpus index, needed to choose α on dev queries and to time queries
    (None when neither is to be done); ``bm25``: the collection's BM25 index.
    """
    depth = int(settings.top_k)
    dense_run = read_trec_run(target.folder / "student" / RUN)
    bm25_run_ = read_trec_run(target.folder / "bm25" / RUN)
    doc_ids = target.coll.doc_ids()
    texts = [t for _, t in target.queries]
    parts = results["student"]
    out: dict[str, dict] = {}
    for name in names:
        if name == "hybrid_rrf":
            k = int(settings.hybrid_rrf_k)
            run = rrf_runs(dense_run, bm25_run_, k, depth)
            info = {"method": "rrf", "k": k}

            def fuse(dense: dict, lexical: dict, k: int = k) -> list:
                return rrf_fuse([ranking(dense), ranking(lexical)], k, depth)
        else:
            alpha, info = _alpha(settings, target, student, bm25)
            run = convex_runs(dense_run, bm25_run_, alpha, depth)
            info = {"method": "convex", **info}

            def fuse(dense: dict, lexical: dict, alpha: float = alpha) -> list:
                return convex_fuse(dense, lexical, alpha, depth)

        latency = None
        if student is not None and settings.latency_queries:
            def answer(text: str, fuse=fuse) -> list:  # BM25, the student (encode + search), fusion
                lexical = bm25_run(bm25, [("q", text)], depth, doc_ids)["q"]
                return fuse(student.search_one(text, depth), lexical)

            latency = latency_ms(answer, texts, settings.latency_queries)
        out[name] = {
            "run": run,
            "passages_per_s": parts.get("passages_per_s"),  # the student's corpus encoding
            "parameters": parts.get("parameters"),
            "latency": latency,
            "disk_mb": parts.get("disk_mb"),
            "hybrid": {**info, "fused": ["student", "bm25"], "depth": depth},
        }
    return out
