"""Stage 1, mine: first-stage candidates for every training query; positives from qrels, sampled negatives.

The first stage (``mining.method``) is ``bm25``; ``dense``, a bi-encoder ``mining.model`` (a hub id,
a folder, or a trained student of an earlier run: re-mining, ANCE-style) over corpus embeddings
cached in the workspace; or ``hybrid``, the reciprocal-rank fusion of ``mining.retrievers``
(score = Σ 1 / (rrf_k + rank)), cut to ``depth``.

Output ``candidates.parquet``, one row per (query, document):
``qid, docid, label`` (the qrels relevance; 0 for a sampled negative), ``rank`` (1-based first-stage
rank, 0 when not retrieved) and ``first_stage_score`` (the BM25, dense or RRF score; NaN when not
retrieved).

Under ``torchrun`` (:mod:`distillrank.sharding`) the ranks join a ``torch.distributed`` group and
every rank encodes its part of the dense retriever's corpus embeddings (the corpus is encoded once,
split over the ranks); rank 0 alone searches, samples and writes ``candidates.parquet`` and the
manifest, and the other ranks wait for that manifest (on the file system, so a long search by rank
0 hits no collective's timeout) and return it. The candidates are those of one process, to the byte.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from omegaconf import DictConfig

from distillrank import artifacts, keys, sharding
from distillrank.builders import components, training
from distillrank.mining.dense import corpus_embeddings, dense_key
from distillrank.mining.sampling import sample_negatives
from distillrank.runtime import configure
from distillrank.workspace import (
    MANIFEST,
    Manifest,
    atomic_path,
    current_manifest,
    locked_stage,
    read_manifest,
    stage_dir,
    to_plain,
)

log = logging.getLogger(__name__)

STAGE = artifacts.MINE
OUTPUT = artifacts.CANDIDATES


def stage_key(cfg: DictConfig) -> str:
    """This stage's key (:mod:`distillrank.keys`)."""
    return keys.stage_key(cfg, STAGE)


def run(cfg: DictConfig) -> Manifest:
    """Mine candidates for the training split; skipped when the manifest matches.

    Under ``torchrun`` (:func:`distillrank.sharding.from_env`) every rank must call this: the ranks
    encode the dense corpus embeddings together, rank 0 writes the output and the manifest, and
    every rank returns that manifest.
    """
    share = sharding.from_env()
    if share.group == 1:
        return _run(cfg)
    sharding.join_group(share, configure(cfg.hardware).device)
    if share.main:
        return _run(cfg, share)
    # rank 0's decision, taken under the stage's lock: whether the stage runs, and with it the encoding
    runs, dense, before = sharding.broadcast(share, None)
    folder = stage_dir(cfg, STAGE)
    if runs:
        if dense:  # this rank's part of the corpus embeddings (a collective with rank 0's)
            corpus_embeddings(cfg, components.collection(cfg), share=share)
        key = stage_key(cfg)
        sharding.wait_until(
            lambda: _stamp(folder) != before and getattr(read_manifest(folder), "key", None) == key,
            f"mine: rank 0 writing {folder}",
        )
    return read_manifest(folder)


def _stamp(folder: Path) -> tuple[int, int] | None:
    """Which manifest file the stage folder holds (inode and modification time; None: none), so
    ranks that wait for rank 0's manifest do not take a stale one (``force=true``) for it."""
    try:
        st = os.stat(folder / MANIFEST)
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns


@locked_stage(STAGE)
def _run(cfg: DictConfig, share: sharding.Share = sharding.WHOLE) -> Manifest:
    """The stage in one process, or as rank 0 of a ``torchrun`` group (``share``): it tells the
    other ranks whether the stage runs, encodes the dense corpus embeddings with them, and mines."""
    folder = stage_dir(cfg, STAGE)
    key = stage_key(cfg)
    done = current_manifest(cfg, STAGE, key)
    dense = done is None and "dense" in components.mining_retrievers(cfg)
    sharding.broadcast(share, (done is None, dense, _stamp(folder)))
    if done is not None:
        return done
    start = time.perf_counter()
    coll = components.collection(cfg)
    embeddings = None
    if dense and share.group > 1:
        embeddings = corpus_embeddings(cfg, coll, share=share)
    queries = training.train_queries(cfg)
    qrels = training.train_qrels(cfg)
    rows, scores, info = components.mining_first_stage(cfg, coll, [text for _, text in queries], embeddings)
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
    if "dense" in components.mining_retrievers(cfg):
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
