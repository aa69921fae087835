"""Stage 0 (optional), queries: synthetic training queries made from the corpus (GPL-style training).

Most collections have a corpus and no labelled training queries. With ``queries=title|ict|generator``
this stage writes training queries, each with its source passage as positive, and mine / score /
train use them instead of ``data.train_split`` (:func:`distillrank.builders.training.train_queries`):

* ``title`` / ``ict`` — :mod:`distillrank.queries.synthetic` (titles; the inverse cloze task);
* ``generator`` — :class:`distillrank.queries.generator.QueryGenerator` (doc2query / GPL), ``per_doc``
  samples per source document.

Source documents are ``queries.max_docs`` documents sampled uniformly with the seed (all by
default). With ``queries.filter_top_k=k`` the **consistency filter** keeps a query only when the
teacher ranks its positive within the top k of its BM25 top ``filter_depth`` candidates (the source
document itself left out when the positive is a rewritten copy of it): the round-trip filter of
Gecko (Lee et al. 2024) and Tamber et al. 2025, and the reason GPL-style queries from a weak
generator stay usable. Teacher scores of the filter go to the teacher's score cache, so the score
stage reuses those of the positives and of the candidates that mining finds again.

Outputs: ``queries.parquet`` (``qid, text, source, positive, kept, positive_rank``; rank 0 when not
filtered) and ``passages.parquet`` (``docid, text``: rewritten positives, e.g. a passage without its
ICT sentence, whose ids ``<source>#<method>-<hash>`` exist only in training).
"""

from __future__ import annotations

import logging
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from omegaconf import DictConfig

from distillrank import artifacts, keys
from distillrank.builders import components, hardware
from distillrank.data.training import passage_lookup
from distillrank.errors import ConfigError
from distillrank.queries.synthetic import SyntheticQuery, ict_queries, make_query, title_queries
from distillrank.teachers.cache import teacher_scores
from distillrank.workspace import (
    Manifest,
    atomic_path,
    cache_dir,
    current_manifest,
    locked_stage,
    stage_dir,
    to_plain,
)

log = logging.getLogger(__name__)

STAGE = artifacts.QUERIES
OUTPUT = artifacts.SYNTHETIC_QUERIES
PASSAGES = artifacts.REWRITTEN_PASSAGES


def stage_key(cfg: DictConfig) -> str:
    """This stage's key (:mod:`distillrank.keys`)."""
    return keys.stage_key(cfg, STAGE)


def _source_rows(cfg: DictConfig, n_docs: int, rng: np.random.Generator) -> np.ndarray:
    max_docs = cfg.queries.max_docs
    if max_docs is None or int(max_docs) >= n_docs:
        return np.arange(n_docs)
    return np.sort(rng.choice(n_docs, size=int(max_docs), replace=False))


def _make_queries(cfg: DictConfig, coll, rows: np.ndarray, rng: np.random.Generator) -> list[SyntheticQuery]:
    q = cfg.queries
    docs = coll.corpus.select(rows.tolist())
    docids = docs["_id"]
    if q.method == "title":
        return title_queries(docids, docs["title"], docs["text"])
    if q.method == "ict":
        return ict_queries(docids, docs["text"], int(q.per_doc), rng, float(q.remove_prob), list(q.span_words), int(q.min_words), titles=docs["title"])
    generator = components.generator(cfg)
    texts = coll.passage_texts(rows.tolist())
    runtime = hardware.runtime(cfg, "generator")
    generated = generator.generate(texts, int(q.per_doc), int(cfg.seed), runtime.device, runtime.precision, progress=True)
    return [make_query("generator", text, docid) for docid, queries in zip(docids, generated, strict=True) for text in queries]


def _consistency_ranks(cfg: DictConfig, coll, queries: list[SyntheticQuery], k: int) -> np.ndarray:
    """The teacher rank (1 = best) of each query's positive among its BM25 candidates."""
    depth = int(cfg.queries.filter_depth)
    rows, _ = components.bm25_index(cfg, coll).search([s.text for s in queries], depth + 1)
    doc_ids = coll.doc_ids()
    qids: list[str] = []
    docids: list[str] = []
    spans: list[tuple[int, int]] = []
    for s, ranked in zip(queries, rows, strict=True):
        others = [doc_ids[r] for r in ranked if r >= 0 and doc_ids[r] not in (s.source, s.positive)][:depth]
        spans.append((len(docids), len(others) + 1))
        qids.extend([s.qid] * (len(others) + 1))
        docids.extend([s.positive, *others])
    pairs = pa.table({"qid": pa.array(qids, pa.string()), "docid": pa.array(docids, pa.string())})
    passage_text = passage_lookup(coll, {s.positive: s.positive_text for s in queries if s.positive_text is not None})
    teacher = components.teacher(cfg)
    scores, scored, seconds, _ = teacher_scores(
        teacher, components.teacher_fingerprint(cfg), coll, pairs, {s.qid: s.text for s in queries}, passage_text,
        cache_root=cache_dir(cfg), runtime=hardware.runtime(cfg, "teacher"),
        shard_size=int(cfg.score.shard_size), progress=bool(cfg.score.progress),
    )
    log.info("queries: consistency filter scored %d pairs in %.1f s (top %d of BM25 top %d)", scored, seconds, k, depth)
    ranks = np.empty(len(queries), dtype=np.int32)
    for i, (first, n) in enumerate(spans):
        group = scores[first : first + n]
        ranks[i] = 1 + int(np.sum(group[1:] > group[0]))
    return ranks


@locked_stage(STAGE)
def run(cfg: DictConfig) -> Manifest:
    """Make (and filter) the synthetic training queries; skipped when the manifest matches."""
    if not components.queries_enabled(cfg):
        raise ConfigError("queries.method=none: there are no synthetic queries to make (choose queries=title|ict|generator)")
    folder = stage_dir(cfg, STAGE)
    key = stage_key(cfg)
    if (done := current_manifest(cfg, STAGE, key)) is not None:
        return done
    start = time.perf_counter()
    coll = components.collection(cfg)
    rng = np.random.default_rng(cfg.seed)
    rows = _source_rows(cfg, len(coll.corpus), rng)
    made = _make_queries(cfg, coll, rows, rng)
    unique: dict[str, SyntheticQuery] = {}
    for s in made:
        unique.setdefault(s.qid, s)
    queries = list(unique.values())
    if not queries:
        raise ConfigError(
            f"queries={cfg.queries.method} made no query from {len(rows)} documents of '{coll.name}' "
            "(no titles? passages shorter than queries.min_words?)"
        )
    k = components.consistency_filter(cfg)
    ranks = _consistency_ranks(cfg, coll, queries, k) if k else np.zeros(len(queries), dtype=np.int32)
    kept = ranks <= k if k else np.ones(len(queries), dtype=bool)
    if not kept.any():
        raise ConfigError(
            f"the consistency filter (top {k} of {cfg.queries.filter_depth}) kept none of {len(queries)} queries; "
            "raise queries.filter_top_k or check the teacher"
        )
    table = pa.table(
        {
            "qid": pa.array([s.qid for s in queries], pa.string()),
            "text": pa.array([s.text for s in queries], pa.string()),
            "source": pa.array([s.source for s in queries], pa.string()),
            "positive": pa.array([s.positive for s in queries], pa.string()),
            "kept": pa.array(kept, pa.bool_()),
            "positive_rank": pa.array(ranks, pa.int32()),
        }
    )
    rewritten = [s for s, keep in zip(queries, kept, strict=True) if keep and s.positive_text is not None]
    passages = pa.table(
        {
            "docid": pa.array([s.positive for s in rewritten], pa.string()),
            "text": pa.array([s.positive_text for s in rewritten], pa.string()),
        }
    )
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / OUTPUT) as tmp:
        pq.write_table(table, tmp)
    with atomic_path(folder / PASSAGES) as tmp:
        pq.write_table(passages, tmp)
    counts = {
        "source_docs": len(rows),
        "queries_made": len(queries),
        "duplicates_dropped": len(made) - len(queries),
        "queries_kept": int(kept.sum()),
        "kept_fraction": round(float(kept.mean()), 4),
        "rewritten_positives": len(rewritten),
    }
    if k:
        counts["positive_rank_median"] = float(np.median(ranks))
    roles = (["generator"] if cfg.queries.method == "generator" else []) + (["teacher"] if k else [])
    counts.update(hardware.report(cfg, *roles))
    log.info("queries (%s): %s", cfg.queries.method, counts)
    manifest = Manifest(
        stage=STAGE,
        key=key,
        config={"queries": to_plain(cfg.queries), "seed": cfg.seed},
        inputs={"collection": coll.fingerprint, **({"teacher": components.teacher_fingerprint(cfg)} if k else {})},
        counts=counts,
        outputs=[OUTPUT, PASSAGES],
        wall_time_s=time.perf_counter() - start,
    )
    manifest.write(folder)
    return manifest
