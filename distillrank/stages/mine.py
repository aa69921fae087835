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
from distillrank.builders import components, hardware, training
from distillrank.builders.mining import dense_key, mining_embeddings
from distillrank.mining.sampling import sample_negatives
from distillrank.runtime import resolve_device
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
    # the device only: hardware=auto's precision and backend are the mining encoder's, chosen by
    # rank 0's calibration (hardware.for_role), which every rank then reads
    sharding.join_group(share, resolve_device(str(cfg.hardware.device)))
    if share.main:
        return _run(cfg, share)
    # rank 0's decision, taken under the stage's lock: whether the stage runs, and with it the encoding
    runs, dense, before = sharding.broadcast(share, None)
    folder = stage_dir(cfg, STAGE)
    if runs:
        if dense:  # this rank's part of the corpus embeddings (a collective with rank 0's)
            mining_embeddings(hardware.for_role(cfg, "mining"), components.collection(cfg), share=share)
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
        embeddings = mining_embeddings(hardware.for_role(cfg, "mining"), coll, share=share)
    queries = training.train_queries(cfg)
    qrels = training.train_qrels(cfg)
    rows, scores, info = components.mining_first_stage(cfg, coll, [text for _, text in queries], embeddings)
    doc_ids = coll.doc_ids()
    rng = np.random.default_rng(cfg.seed)

    # the output as columns: per query a few numpy arrays (no Python object per row); a docid is a
    # code: a corpus row for a negative, past the corpus rows for a positive (its id from the qrels)
    n_docs = len(doc_ids)
    positive_ids: list[str] = []  # the qrels' own strings, one per positive row
    per_query: list[int] = []
    codes: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    ranks: list[np.ndarray] = []
    stage_scores: list[np.ndarray] = []

    retrieved_positives = total_positives = short_queries = 0
    keep_all = cfg.mining.sampling == "all"
    for i, (qid, _) in enumerate(queries):
        query_rows = np.asarray(rows[i], dtype=np.int64)
        ranked = [doc_ids[r] for r in query_rows]
        ranked_scores = np.asarray(scores[i], dtype=np.float64)
        position = {d: r for r, d in enumerate(ranked)}
        judged = qrels.get(qid, {})
        positives = {d: rel for d, rel in judged.items() if rel > 0}
        excluded = set(positives) | {d for d, rel in judged.items() if rel < 0}
        at = np.asarray([position.get(d, -1) for d in positives], dtype=np.int64)
        retrieved_positives += int(np.sum(at >= 0))
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
        neg_ranks = np.asarray([r for _, r in negatives], dtype=np.int64)
        per_query.append(len(positives) + len(negatives))
        first_positive = len(positive_ids)
        positive_ids.extend(positives)
        # a negative is the corpus row the first stage ranked there (Python's indexing of doc_ids)
        codes.append(
            np.concatenate(
                [
                    np.arange(first_positive, len(positive_ids), dtype=np.int64) + n_docs,
                    query_rows[neg_ranks - 1] % max(n_docs, 1),
                ]
            )
        )
        labels.append(
            np.concatenate(
                [np.asarray(list(positives.values()), dtype=np.int64), np.zeros(len(negatives), np.int64)]
            )
        )
        ranks.append(np.concatenate([np.where(at >= 0, at + 1, 0), neg_ranks]))
        positive_scores = np.full(len(at), np.nan)  # NaN: not retrieved
        positive_scores[at >= 0] = ranked_scores[at[at >= 0]]
        stage_scores.append(np.concatenate([positive_scores, ranked_scores[neg_ranks - 1]]))

    def joined(parts: list[np.ndarray], dtype) -> np.ndarray:
        return np.concatenate(parts).astype(dtype, copy=False) if parts else np.zeros(0, dtype)

    docid_values = pa.concat_arrays([pa.array(doc_ids, pa.string()), pa.array(positive_ids, pa.string())])
    label = joined(labels, np.int32)
    table = pa.table(
        {
            "qid": pa.array([qid for qid, _ in queries], pa.string()).take(
                np.repeat(np.arange(len(queries), dtype=np.int64), per_query)
            ),
            "docid": docid_values.take(joined(codes, np.int64)),
            "label": pa.array(label, pa.int32()),
            "rank": pa.array(joined(ranks, np.int32), pa.int32()),
            "first_stage_score": pa.array(joined(stage_scores, np.float64).astype(np.float32), pa.float32()),
        }
    )
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / OUTPUT) as tmp:
        pq.write_table(table, tmp)
    n_neg = int(np.sum(label == 0))
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
