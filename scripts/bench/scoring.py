"""Benchmark 1: teacher scoring throughput (pairs/s) on SciFact BM25 candidates.

* cross-encoder: :class:`distillrank.teachers.CrossEncoderTeacher.score` vs
  ``sentence_transformers.CrossEncoder.predict``, same folder, batch size, pair truncation, fp32.
* bi-encoder: :class:`distillrank.teachers.BiEncoderTeacher.score` vs ``SentenceTransformer.encode``
  of the distinct queries (max length ``query_max_length``) and distinct passages (``passage_max_length``)
  followed by the dot products of the pairs: the same work, each text encoded once.

Both tools score the same pairs; the Spearman correlation of their scores is reported as a check
that they computed the same thing (sentence-transformers' cross-encoder applies its activation,
a monotone map, so the ranking is what must agree).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.stats import spearmanr

from bench.assets import bm25_pairs
from bench.common import Context, alternate, comparison, load_average, timed

GOAL = 1.5


def _agreement(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 3:
        return 1.0
    return float(spearmanr(a, b).statistic)


def run(ctx: Context) -> dict:
    from sentence_transformers import CrossEncoder, SentenceTransformer

    from distillrank.teachers import BiEncoderTeacher, CrossEncoderTeacher

    s = ctx.sizes
    device = torch.device("cpu")
    queries, passages, pairs = bm25_pairs(ctx, "test", s.score_queries, s.score_depth)
    pair_q = np.array([q for q, _ in pairs], dtype=np.int64)
    pair_p = np.array([p for _, p in pairs], dtype=np.int64)
    n = len(pairs)
    cases = []

    # ------------------------------------------------------------------ cross-encoder
    ours_ce = CrossEncoderTeacher(str(ctx.cross_encoder), max_length=s.ce_max_length, batch_size=s.batch_size)
    ours_ce.cross_encoder(device)
    theirs_ce = CrossEncoder(str(ctx.cross_encoder), max_length=s.ce_max_length, device="cpu")
    text_pairs = [(queries[q], passages[p]) for q, p in pairs]
    out: dict[str, np.ndarray] = {}

    def ce_ours() -> float:
        t = timed(lambda: out.__setitem__("ours", ours_ce.score(queries, passages, pair_q, pair_p, device, "fp32", progress=False)))
        return n / t

    def ce_theirs() -> float:
        t = timed(lambda: out.__setitem__("theirs", np.asarray(theirs_ce.predict(text_pairs, batch_size=s.batch_size, show_progress_bar=False))))
        return n / t

    load_before = load_average()
    rates = alternate({"distillrank": ce_ours, "sentence_transformers": ce_theirs}, s.repeats)
    cases.append(
        comparison(
            "cross_encoder", "pairs/s", rates["distillrank"], rates["sentence_transformers"], GOAL,
            spearman=_agreement(out["ours"], out["theirs"]), load_average=[load_before, load_average()],
        )
    )

    # ------------------------------------------------------------------ bi-encoder
    ours_bi = BiEncoderTeacher(
        str(ctx.bi_encoder), query_max_length=s.query_max_length, passage_max_length=s.passage_max_length,
        batch_size=s.batch_size,
    )
    ours_bi.encoder(device)
    theirs_bi = SentenceTransformer(str(ctx.bi_encoder), device="cpu")
    q_index, p_index = torch.as_tensor(pair_q), torch.as_tensor(pair_p)

    def st_score() -> np.ndarray:
        theirs_bi.max_seq_length = s.query_max_length
        q = theirs_bi.encode(queries, batch_size=s.batch_size, convert_to_tensor=True, show_progress_bar=False)
        theirs_bi.max_seq_length = s.passage_max_length
        p = theirs_bi.encode(passages, batch_size=s.batch_size, convert_to_tensor=True, show_progress_bar=False)
        return (q[q_index] * p[p_index]).sum(-1).numpy()

    def bi_ours() -> float:
        t = timed(lambda: out.__setitem__("ours", ours_bi.score(queries, passages, pair_q, pair_p, device, "fp32", progress=False)))
        return n / t

    def bi_theirs() -> float:
        t = timed(lambda: out.__setitem__("theirs", st_score()))
        return n / t

    load_before = load_average()
    rates = alternate({"distillrank": bi_ours, "sentence_transformers": bi_theirs}, s.repeats)
    cases.append(
        comparison(
            "bi_encoder", "pairs/s", rates["distillrank"], rates["sentence_transformers"], GOAL,
            spearman=_agreement(out["ours"], out["theirs"]),
            max_abs_diff=float(np.max(np.abs(out["ours"] - out["theirs"]))) if n else 0.0,
            load_average=[load_before, load_average()],
        )
    )
    return {
        "benchmark": "scoring",
        "settings": {
            "pairs": n,
            "distinct_queries": len(queries),
            "distinct_passages": len(passages),
            "bm25_depth": s.score_depth,
            "batch_size": s.batch_size,
            "cross_encoder_max_length": s.ce_max_length,
            "query_max_length": s.query_max_length,
            "passage_max_length": s.passage_max_length,
            "precision": "fp32",
            "cross_encoder": str(ctx.cross_encoder),
            "bi_encoder": str(ctx.bi_encoder),
            "repeats": s.repeats,
        },
        "cases": cases,
        "notes": [
            "cross-encoder: MiniLM-L6 backbone with a random 1-logit head (architecture and cost of "
            "cross-encoder/ms-marco-MiniLM-L6-v2, which has no offline copy)",
            "bi-encoder pairs/s counts (query, passage) pairs scored; both tools encode each distinct text once",
        ],
    }
