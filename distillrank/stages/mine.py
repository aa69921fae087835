"""Stage 1, mine: BM25 candidates for every training query; positives from qrels, sampled negatives.

Output ``candidates.parquet``, one row per (query, document):
``qid, docid, label`` (the qrels relevance; 0 for a sampled negative), ``rank`` (1-based first-stage
rank, 0 when not retrieved) and ``first_stage_score`` (NaN when not retrieved).
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
from distillrank.mining.sampling import sample_negatives
from distillrank.stages import context
from distillrank.workspace import (
    Manifest,
    atomic_path,
    cache_dir,
    current_manifest,
    fingerprint,
    stage_dir,
    to_plain,
)

log = logging.getLogger(__name__)

STAGE = "mine"
OUTPUT = "candidates.parquet"
METHODS = ("bm25",)


def stage_key(cfg: DictConfig) -> str:
    """Identifies this stage's output: the collection's content, the mining config and the seed."""
    coll = context.collection(cfg)
    return fingerprint(
        {
            "stage": STAGE,
            "collection": coll.fingerprint,
            "split": cfg.data.train_split,
            "mining": to_plain(cfg.mining),
            "seed": cfg.seed,
        }
    )


def bm25_index(cfg: DictConfig, coll) -> BM25Index:
    """The BM25 index of the collection with the mining config's parameters (cached)."""
    m = cfg.mining
    return BM25Index.build_or_load(coll, cache_dir(cfg), k1=m.k1, b=m.b, stemmer=m.stemmer, stopwords=m.stopwords)


def run(cfg: DictConfig) -> Manifest:
    """Mine candidates for the training split; skipped when the manifest matches."""
    folder = stage_dir(cfg, STAGE)
    key = stage_key(cfg)
    if (done := current_manifest(cfg, STAGE, key)) is not None:
        return done
    if cfg.mining.method not in METHODS:
        raise ConfigError(f"mining.method={cfg.mining.method!r}; available: {METHODS}")
    start = time.perf_counter()
    coll = context.collection(cfg)
    split = context.split_or_fail(cfg, coll, "train_split")
    queries = coll.split_queries(split)
    qrels = coll.qrels[split]
    index = bm25_index(cfg, coll)
    rows, scores = index.search([text for _, text in queries], cfg.mining.depth)
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
    for i, (qid, _) in enumerate(queries):
        valid = rows[i] >= 0
        ranked = [doc_ids[r] for r in rows[i][valid]]
        ranked_scores = scores[i][valid]
        position = {d: r for r, d in enumerate(ranked)}
        positives = {d: rel for d, rel in qrels.get(qid, {}).items() if rel > 0}
        for docid, rel in positives.items():
            r = position.get(docid)
            add(qid, docid, rel, 0 if r is None else r + 1, float("nan") if r is None else float(ranked_scores[r]))
            retrieved_positives += r is not None
        total_positives += len(positives)
        negatives = sample_negatives(
            ranked,
            set(positives),
            cfg.mining.num_negatives,
            cfg.mining.sampling,
            cfg.mining.window_start,
            cfg.mining.window_end,
            rng,
        )
        short_queries += len(negatives) < cfg.mining.num_negatives
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
    }
    log.info("mine: %s", counts)
    manifest = Manifest(
        stage=STAGE,
        key=key,
        config={"data": to_plain(cfg.data), "mining": to_plain(cfg.mining), "seed": cfg.seed},
        inputs={"collection": coll.fingerprint},
        counts=counts,
        outputs=[OUTPUT],
        wall_time_s=time.perf_counter() - start,
    )
    manifest.write(folder)
    return manifest
