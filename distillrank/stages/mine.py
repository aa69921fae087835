"""Stage 1, mine: first-stage candidates for every training query; positives from qrels, sampled negatives.

The first stage (``mining.method``) is ``bm25``; ``dense``, a bi-encoder ``mining.model`` (a hub id,
a folder, or a trained student of an earlier run: re-mining, ANCE-style) over corpus embeddings
cached in the workspace; or ``hybrid``, the reciprocal-rank fusion of ``mining.retrievers``
(score = Σ 1 / (rrf_k + rank)), cut to ``depth``.

Output ``candidates.parquet``, one row per (query, document):
``qid, docid, label`` (the qrels relevance; 0 for a sampled negative), ``rank`` (1-based first-stage
rank, 0 when not retrieved) and ``first_stage_score`` (the BM25, dense or RRF score; NaN when not
retrieved).
"""

from __future__ import annotations

import logging
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from omegaconf import DictConfig

from distillrank.errors import ConfigError
from distillrank.mining.bm25 import BM25Index
from distillrank.mining.dense import dense_key, dense_search
from distillrank.mining.fusion import rrf_fuse
from distillrank.mining.sampling import sample_negatives
from distillrank.stages import context
from distillrank.stages import queries as queries_stage
from distillrank.workspace import (
    Manifest,
    atomic_path,
    cache_dir,
    current_manifest,
    fingerprint,
    locked_stage,
    stage_dir,
    to_plain,
)

log = logging.getLogger(__name__)

STAGE = "mine"
OUTPUT = "candidates.parquet"


def _check_method(cfg: DictConfig) -> None:
    """``hybrid`` fuses at least one retriever, none twice (the schema checks their names)."""
    if cfg.mining.method == "hybrid":
        retrievers = list(cfg.mining.retrievers)
        if not retrievers or len(set(retrievers)) != len(retrievers):
            raise ConfigError(f"mining.retrievers={retrievers}; expected distinct retrievers for mining=hybrid")


def _retrievers(cfg: DictConfig) -> list[str]:
    """The first-stage retrievers the config runs (one, or the fused ones of ``hybrid``)."""
    return list(cfg.mining.retrievers) if cfg.mining.method == "hybrid" else [cfg.mining.method]


def stage_key(cfg: DictConfig) -> str:
    """Identifies this stage's output: the collection's content, the mining config and the seed;
    for a dense retriever, the model folder's content (instead of its name) and the precision."""
    _check_method(cfg)
    coll = context.collection(cfg)
    what = {
        "stage": STAGE,
        "collection": coll.fingerprint,
        "split": cfg.data.train_split,
        "mining": to_plain(cfg.mining),
        "seed": cfg.seed,
    }
    if queries_stage.enabled(cfg):  # synthetic training queries: their stage's key, not the split
        what["split"] = None
        what["queries"] = queries_stage.stage_key(cfg)
    if what["mining"].get("index", "exact") == "exact" or "dense" not in _retrievers(cfg):
        what["mining"].pop("index", None)  # the default search: keys stay those of runs made before FAISS
        what["mining"].pop("faiss_factory", None)
    if "dense" in _retrievers(cfg):
        # the model is identified by its folder's content, not by where it lies or how it is named
        what["mining"].pop("model", None)
        what["dense"] = dense_key(cfg)
    return fingerprint(what)


def bm25_index(cfg: DictConfig, coll) -> BM25Index:
    """The BM25 index of the collection with the mining config's parameters (cached)."""
    m = cfg.mining
    return BM25Index.build_or_load(coll, cache_dir(cfg), k1=m.k1, b=m.b, stemmer=m.stemmer, stopwords=m.stopwords)


def first_stage(
    cfg: DictConfig, coll, query_texts: list[str]
) -> tuple[list[np.ndarray], list[np.ndarray], dict]:
    """Each query's ranked corpus rows and first-stage scores (best first, at most ``depth``).

    Returns:
        rows and scores per query, and info for the manifest counts.
    """
    depth = cfg.mining.depth
    runs: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] = {}
    info: dict = {}
    for name in _retrievers(cfg):
        if name == "bm25":
            rows, scores = bm25_index(cfg, coll).search(query_texts, depth)
        else:
            rows, scores, dense_info = dense_search(cfg, coll, query_texts, depth)
            info["embeddings_cached"] = dense_info["embeddings_cached"]
            info["index"] = dense_info["index"]
            if dense_info["passages_per_s"] is not None:
                info["passages_per_s"] = dense_info["passages_per_s"]
        valid = rows >= 0
        runs[name] = (
            [r[v] for r, v in zip(rows, valid, strict=True)],
            [s[v] for s, v in zip(scores, valid, strict=True)],
        )
    if cfg.mining.method != "hybrid":
        return *runs[cfg.mining.method], info
    fused_rows: list[np.ndarray] = []
    fused_scores: list[np.ndarray] = []
    for i in range(len(query_texts)):
        fused = rrf_fuse([runs[name][0][i].tolist() for name in runs], cfg.mining.rrf_k, depth)
        fused_rows.append(np.array([r for r, _ in fused], dtype=np.int64))
        fused_scores.append(np.array([s for _, s in fused], dtype=np.float32))
    return fused_rows, fused_scores, info


@locked_stage(STAGE)
def run(cfg: DictConfig) -> Manifest:
    """Mine candidates for the training split; skipped when the manifest matches."""
    folder = stage_dir(cfg, STAGE)
    key = stage_key(cfg)
    if (done := current_manifest(cfg, STAGE, key)) is not None:
        return done
    start = time.perf_counter()
    coll = context.collection(cfg)
    queries = context.train_queries(cfg)
    qrels = context.train_qrels(cfg)
    rows, scores, info = first_stage(cfg, coll, [text for _, text in queries])
    doc_ids = coll.doc_ids()
    rng = np.random.default_rng(cfg.seed)

    out: dict[str, list] = {"qid": [], "docid": [], "label": [], "rank": [], "first_stage_score": []}

    def add(qid: str, docid: str, label: int, rank: int, score: float) -> None:
        out["qid"].append(qid)
        out["docid"].append(docid)
        out["label"].append(label)
        out["rank"].append(rank)
        out["first_stage_score"].append(score)

    retrieved_positives = total_positives = short_queries = 0
    keep_all = cfg.mining.sampling == "all"
    for i, (qid, _) in enumerate(queries):
        ranked = [doc_ids[r] for r in rows[i]]
        ranked_scores = scores[i]
        position = {d: r for r, d in enumerate(ranked)}
        judged = qrels.get(qid, {})
        positives = {d: rel for d, rel in judged.items() if rel > 0}
        excluded = set(positives) | {d for d, rel in judged.items() if rel < 0}
        for docid, rel in positives.items():
            r = position.get(docid)
            add(qid, docid, rel, 0 if r is None else r + 1, float("nan") if r is None else float(ranked_scores[r]))
            retrieved_positives += r is not None
        total_positives += len(positives)
        negatives = sample_negatives(
            ranked,
            excluded,
            cfg.mining.num_negatives,
            cfg.mining.sampling,
            cfg.mining.window_start,
            cfg.mining.window_end,
            rng,
        )
        short_queries += not keep_all and len(negatives) < cfg.mining.num_negatives
        for docid, rank in negatives:
            add(qid, docid, 0, rank, float(ranked_scores[rank - 1]))

    table = pa.table(
        {
            "qid": pa.array(out["qid"], pa.string()),
            "docid": pa.array(out["docid"], pa.string()),
            "label": pa.array(out["label"], pa.int32()),
            "rank": pa.array(out["rank"], pa.int32()),
            "first_stage_score": pa.array(out["first_stage_score"], pa.float32()),
        }
    )
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / OUTPUT) as tmp:
        pq.write_table(table, tmp)
    n_neg = int(sum(1 for label in out["label"] if label == 0))
    counts = {
        "queries": len(queries),
        "rows": table.num_rows,
        "positives": total_positives,
        "negatives": n_neg,
        "positive_recall_at_depth": retrieved_positives / max(total_positives, 1),
        "queries_with_fewer_negatives": short_queries,
        **info,
    }
    log.info("mine (%s): %s", cfg.mining.method, counts)
    inputs = {"collection": coll.fingerprint}
    if "dense" in _retrievers(cfg):
        inputs["mining_model"] = dense_key(cfg)["weights"]
    manifest = Manifest(
        stage=STAGE,
        key=key,
        config={
            "method": cfg.mining.method,
            "data": to_plain(cfg.data),
            "mining": to_plain(cfg.mining),
            "seed": cfg.seed,
        },
        inputs=inputs,
        counts=counts,
        outputs=[OUTPUT],
        wall_time_s=time.perf_counter() - start,
    )
    manifest.write(folder)
    return manifest
