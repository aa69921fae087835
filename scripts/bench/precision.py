"""Benchmark 6: what precision pays on this CPU, and what it costs in ranking quality.

Speed (measurement cases, no sentence-transformers side):

* ``forward``: the bi-encoder (MiniLM-L6) encoding ``precision_texts`` SciFact passages at the
  passage max length, through :meth:`BiEncoder.encode` (length-sorted batches, ``inference_mode``),
  in fp32, bf16 autocast, and int8 dynamic quantization (:mod:`distillrank.models.quantize`).
* ``train_step``: the student (2 MiniLM layers) forward + backward on one batch of passages, fp32 vs
  bf16 autocast (int8 cannot train).

Fidelity (``fidelity`` case): SciFact test queries re-ranked by the MiniLM bi-encoder teacher over
their BM25 top ``quality_depth``: nDCG@10 in fp32, int8 and bf16, and per query the Spearman and
Kendall correlation of the int8 / bf16 scores with the fp32 scores on the same candidates (mean
over queries), plus the fraction of queries whose top-1 candidate is unchanged.
"""

from __future__ import annotations

import copy
import statistics

import numpy as np
import torch
from scipy.stats import kendalltau, spearmanr

from bench.assets import bm25_pairs
from bench.common import Context, load_average, timed


def _median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    return statistics.median(timed(fn) for _ in range(max(repeats, 1)))


def speed(ctx: Context) -> list[dict]:
    from bench.common import distillrank_runtime
    from distillrank.models.bi_encoder import BiEncoder
    from distillrank.models.quantize import quantize_int8
    from distillrank.runtime import autocast

    s = ctx.sizes
    cpu = torch.device("cpu")
    texts = ctx.collection.passage_texts(list(range(min(s.precision_texts, len(ctx.collection.doc_ids())))))
    fp32 = BiEncoder.load(ctx.bi_encoder, passage_max_length=s.passage_max_length).eval()
    int8 = quantize_int8(copy.deepcopy(fp32))
    load_before = load_average()
    # alternate the three variants round by round, as the comparisons do
    runs: dict[str, list[float]] = {"fp32": [], "bf16": [], "int8": []}
    variants = {
        "fp32": lambda: fp32.encode(texts, "passage", s.batch_size, distillrank_runtime("cpu", "fp32")),
        "bf16": lambda: fp32.encode(texts, "passage", s.batch_size, distillrank_runtime("cpu", "bf16")),
        "int8": lambda: int8.encode(texts, "passage", s.batch_size, distillrank_runtime("cpu", "int8")),
    }
    for fn in variants.values():
        fn()
    for r in range(s.repeats):
        for name in list(variants) if r % 2 == 0 else reversed(list(variants)):
            runs[name].append(timed(variants[name]))
    med = {k: statistics.median(v) for k, v in runs.items()}
    forward = {
        "texts": len(texts),
        "max_length": s.passage_max_length,
        **{f"{k}_texts_per_s": len(texts) / v for k, v in med.items()},
        "bf16_speedup": med["fp32"] / med["bf16"],
        "int8_speedup": med["fp32"] / med["int8"],
        "runs_s": runs,
        "load_average": [load_before, load_average()],
    }

    student = BiEncoder.load(ctx.student, passage_max_length=s.passage_max_length).train()
    batch = texts[: max(2, min(len(texts), s.train_batch * 2))]

    def step(precision: str) -> None:
        student.zero_grad(set_to_none=True)
        with autocast(cpu, precision):
            emb = student(batch, "passage")
        emb.float().square().sum().backward()

    load_before = load_average()
    train = {"fp32": [], "bf16": []}
    for fn in ("fp32", "bf16"):
        step(fn)
    for r in range(s.repeats):
        for name in ("fp32", "bf16") if r % 2 == 0 else ("bf16", "fp32"):
            train[name].append(timed(lambda name=name: step(name)))
    tmed = {k: statistics.median(v) for k, v in train.items()}
    train_step = {
        "texts": len(batch),
        "max_length": s.passage_max_length,
        **{f"{k}_texts_per_s": len(batch) / v for k, v in tmed.items()},
        "bf16_speedup": tmed["fp32"] / tmed["bf16"],
        "runs_s": train,
        "load_average": [load_before, load_average()],
    }
    return [{"case": "forward", "unit": "texts/s", "values": forward}, {"case": "train_step", "unit": "texts/s", "values": train_step}]


def fidelity(ctx: Context) -> dict:
    from bench.common import distillrank_runtime
    from distillrank.evaluation.metrics import compute_metrics
    from distillrank.ranking import Pairs
    from distillrank.teachers import BiEncoderTeacher

    s = ctx.sizes
    coll = ctx.collection
    split = "test"
    queries, passages, pairs = bm25_pairs(ctx, split, s.quality_queries, s.quality_depth)
    qids = [q for q, _ in coll.split_queries(split)[: s.quality_queries]]
    pair_q = np.array([q for q, _ in pairs], dtype=np.int64)
    pair_p = np.array([p for _, p in pairs], dtype=np.int64)
    from distillrank.mining.bm25 import BM25Index

    index = BM25Index.build_or_load(coll, ctx.cache, progress=False)
    rows, bm25 = index.search(queries, s.quality_depth, progress=False)
    doc_ids = coll.doc_ids()
    # passage index -> docid: bm25_pairs numbers passages in first-appearance order of the same search
    order_docs = list(dict.fromkeys(doc_ids[int(r)] for ranked in rows for r in ranked if r >= 0))
    teacher = BiEncoderTeacher(
        str(ctx.bi_encoder), query_max_length=s.query_max_length, passage_max_length=s.passage_max_length,
        batch_size=s.batch_size,
    )
    scores: dict[str, np.ndarray] = {}
    seconds: dict[str, float] = {}
    scored = Pairs(queries, passages, pair_q, pair_p)
    for precision in ("fp32", "int8", "bf16"):
        scores[precision] = np.zeros(0)
        seconds[precision] = timed(
            lambda p=precision: scores.__setitem__(p, teacher.score_pairs(scored, distillrank_runtime("cpu", p), progress=False))
        )
    qrels = {q: dict(coll.qrels[split].get(q, {})) for q in qids}

    def run_of(values: np.ndarray) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {q: {} for q in qids}
        for (qi, pi), v in zip(pairs, values, strict=True):
            out[qids[qi]][order_docs[pi]] = float(v)
        return out

    bm25_run = {q: {doc_ids[int(r)]: float(sc) for r, sc in zip(ranked, sc_row, strict=True) if r >= 0} for q, ranked, sc_row in zip(qids, rows, bm25, strict=True)}
    ndcg = {"bm25": compute_metrics(qrels, bm25_run, ["nDCG@10"])[0]["nDCG@10"]}
    for precision, values in scores.items():
        ndcg[precision] = compute_metrics(qrels, run_of(values), ["nDCG@10"])[0]["nDCG@10"]
    agreement = {}
    for precision in ("int8", "bf16"):
        rho, tau, top1 = [], [], []
        for qi in range(len(queries)):
            sel = pair_q == qi
            a, b = scores["fp32"][sel], scores[precision][sel]
            if len(a) >= 3:
                rho.append(spearmanr(a, b).statistic)
                tau.append(kendalltau(a, b).statistic)
            if len(a):
                top1.append(float(np.argmax(a) == np.argmax(b)))
        agreement[precision] = {
            "spearman_mean": float(np.nanmean(rho)) if rho else 1.0,
            "spearman_min": float(np.nanmin(rho)) if rho else 1.0,
            "kendall_mean": float(np.nanmean(tau)) if tau else 1.0,
            "top1_unchanged": float(np.mean(top1)) if top1 else 1.0,
            "max_abs_diff": float(np.max(np.abs(scores[precision] - scores["fp32"]))) if len(pairs) else 0.0,
        }
    return {
        "case": "fidelity",
        "unit": "nDCG@10",
        "values": {
            "queries": len(queries),
            "depth": s.quality_depth,
            "pairs": len(pairs),
            "ndcg_at_10": ndcg,
            "agreement_with_fp32": agreement,
            "scoring_seconds": seconds,
        },
    }


def run(ctx: Context) -> dict:
    s = ctx.sizes
    cases = speed(ctx) + [fidelity(ctx)]
    return {
        "benchmark": "precision",
        "settings": {
            "bi_encoder": str(ctx.bi_encoder),
            "student": str(ctx.student),
            "precision_texts": s.precision_texts,
            "passage_max_length": s.passage_max_length,
            "batch_size": s.batch_size,
            "quality_queries": s.quality_queries,
            "quality_depth": s.quality_depth,
            "repeats": s.repeats,
        },
        "cases": cases,
        "notes": [
            "forward: BiEncoder.encode (length-sorted batches, inference_mode); int8 = torch dynamic quantization of nn.Linear",
            "train_step: student forward + backward of one batch; int8 cannot train",
            "fidelity: BM25 top-k of SciFact test queries re-ranked by the MiniLM teacher; agreement per query with fp32",
        ],
    }
