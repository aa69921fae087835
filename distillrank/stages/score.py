"""Stage 2, score: a teacher score for every mined (query, candidate) pair, positives included.

Scores are cached per (teacher fingerprint, collection) in ``<workspace>/_cache/scores/`` as
Parquet shards of ``qid, docid, score``: any later run — another experiment, a deeper mining — scores
only the pairs missing there, and a killed run resumes after its last complete shard.
Output ``scores.parquet``: the candidates table plus a ``teacher`` column and a boolean ``dropped``
column: negatives that de-noising (``score.denoise_margin`` / ``score.denoise_relative``, see
:mod:`distillrank.mining.denoise`) flags as probable unjudged positives. Their rows are kept for
inspection; training skips them. De-noising runs on the cached teacher scores, so changing its
settings reruns this stage without scoring a single pair again.

``score.normalize`` (``zscore`` | ``minmax``, per query or global; :mod:`distillrank.teachers.normalize`)
rewrites the ``teacher`` column students learn from and keeps the raw scores as ``teacher_raw``;
de-noising always reads raw scores. An ensemble teacher (``teacher=ensemble``) is scored member by
member, each through its own cache, and combined over all candidates.
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from omegaconf import DictConfig
from tqdm.auto import tqdm

from distillrank.errors import DistillrankError
from distillrank.evaluation.dense import (
    CORPUS_CHUNK,
    EMBEDDINGS_META,
    cached_corpus_embeddings,
    embedding_settings,
    embeddings_dir,
)
from distillrank.mining import denoise
from distillrank.ranking import Pairs, RankerKind
from distillrank.runtime import Runtime, configure
from distillrank.stages import context, mine
from distillrank.teachers import normalize
from distillrank.teachers.base import members as teacher_members
from distillrank.workspace import (
    Manifest,
    atomic_path,
    cache_dir,
    current_manifest,
    drop_unreadable,
    fingerprint,
    locked,
    locked_stage,
    remove_stale_temps,
    require_stage,
    seal,
    seal_path,
    stage_dir,
    to_plain,
    usable_entry,
)

log = logging.getLogger(__name__)

STAGE = "score"
OUTPUT = "scores.parquet"
COVER = 0.5  # a bi-encoder teacher encodes the whole corpus once when the pairs cover this much of it


class ScoreCache:
    """Teacher scores of (qid, docid) pairs for one teacher and one collection, as Parquet shards."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    @classmethod
    def for_teacher(cls, cfg: DictConfig, teacher_fp: str, collection_fp: str) -> ScoreCache:
        return cls(cache_dir(cfg) / "scores" / f"{teacher_fp[:16]}-{collection_fp[:16]}")

    def load(self) -> dict[tuple[str, str], float]:
        """Every cached score (complete shards only: partial ones never get their final name).

        A shard that does not match its checksums (truncated, zeroed) or cannot be read is dropped
        with a warning: its pairs are scored again.
        """
        cached: dict[tuple[str, str], float] = {}
        if not self.folder.is_dir():
            return cached
        for shard in sorted(self.folder.glob("shard-*.parquet")):
            # a shard without checksums (written before they were kept, or killed between its
            # rename and its seal) is kept, and sealed, when it reads in full: scoring is costly
            legacy = not seal_path(shard).exists()
            if not legacy and not usable_entry(shard, "teacher score shard"):
                continue
            try:
                table = pq.read_table(shard)
                pairs = zip(table["qid"].to_pylist(), table["docid"].to_pylist(), strict=True)
                cached.update(zip(pairs, table["score"].to_pylist(), strict=True))
            except (OSError, ValueError, KeyError, pa.ArrowException) as err:
                drop_unreadable(shard, "teacher score shard", err)
                continue
            if legacy:
                seal(shard)
        return cached

    def add(self, qids: list[str], docids: list[str], scores: np.ndarray) -> Path:
        """Write one shard atomically."""
        self.folder.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(self.folder, anywhere=True)  # shard names are never reused: clean by folder
        path = self.folder / f"shard-{time.time_ns()}-{os.getpid()}.parquet"
        table = pa.table(
            {"qid": pa.array(qids, pa.string()), "docid": pa.array(docids, pa.string()), "score": scores}
        )
        with atomic_path(path) as tmp:
            pq.write_table(table, tmp)
        seal(path)
        return path


def _denoise_settings(cfg: DictConfig) -> tuple[float | None, float | None]:
    """``(score.denoise_margin, score.denoise_relative)``; either may be None."""
    margin, relative = cfg.score.get("denoise_margin"), cfg.score.get("denoise_relative")
    return (None if margin is None else float(margin)), (None if relative is None else float(relative))


def stage_key(cfg: DictConfig) -> str:
    """The mining output, the teacher (weights and settings), the de-noising and normalisation settings.

    The de-noising / normalisation settings enter the key only when set, so runs without them keep
    the key they had before these options existed.
    """
    parts = {"stage": STAGE, "mine": mine.stage_key(cfg), "teacher": context.teacher_fingerprint(cfg)}
    margin, relative = _denoise_settings(cfg)
    if denoise.enabled(margin, relative):
        parts["denoise"] = {"margin": margin, "relative": relative}
    method, scope = _normalize_settings(cfg)
    if method != "none":
        parts["normalize"] = {"method": method, "scope": scope}
    return fingerprint(parts)


def _score_shard(teacher, passage_text, query_text: dict[str, str], qids: list[str], docids: list[str],
                 coll, cache_root: Path, runtime: Runtime, progress):
    uq, pair_q = np.unique(np.asarray(qids, dtype=object), return_inverse=True)
    ud, pair_p = np.unique(np.asarray(docids, dtype=object), return_inverse=True)
    pairs = Pairs(
        [query_text[q] for q in uq], passage_text(list(ud)), pair_q, pair_p, qids=list(uq), docids=list(ud),
        collection=coll, cache_root=cache_root,
    )
    scores = teacher.score_pairs(pairs, runtime, progress=progress)
    return _checked(scores.astype(np.float32), qids, docids)


def _checked(scores: np.ndarray, qids: list[str], docids: list[str]) -> np.ndarray:
    """``scores``, unless one is not finite: then an error naming the first such pair."""
    bad = np.flatnonzero(~np.isfinite(scores))
    if len(bad):
        i = int(bad[0])
        raise DistillrankError(
            f"the teacher returned {scores[i]} for (qid={qids[i]}, docid={docids[i]}) "
            f"and {len(bad) - 1} other pairs; nothing from this shard was kept"
        )
    return scores


def _corpus_embeddings(cfg: DictConfig, teacher, teacher_fp: str, coll, todo, query_text, runtime: Runtime):
    """For a teacher that retrieves (a bi-encoder), a scorer of (qids, docids) through its corpus embeddings in the
    workspace cache (those feature distillation and the teacher's evaluation read), when every
    passage is a corpus row and the embeddings are cached already or the pairs to score cover at
    least ``COVER`` of the corpus (encoding the whole corpus then costs at most twice the candidates,
    and is shared); else None (score pair by pair).
    """
    if not todo or not teacher.retrieves:
        return None
    corpus_ids = set(coll.doc_ids())
    if any(d not in corpus_ids for _, d in todo):  # passages made by the queries stage (ICT) are not rows
        return None
    encoder = teacher.encoder(runtime)
    folder = embeddings_dir(cache_dir(cfg), teacher_fp, coll.fingerprint, embedding_settings(encoder, runtime.precision))
    n_docs = len(coll.corpus)
    if not (folder / EMBEDDINGS_META).is_file() and len({d for _, d in todo}) < COVER * n_docs:
        return None
    matrix, _, _ = cached_corpus_embeddings(
        encoder, coll, cache_dir(cfg), teacher_fp, teacher.batch_size, CORPUS_CHUNK, runtime,
        name="teacher", progress=bool(cfg.score.progress),
    )
    qids = list(dict.fromkeys(q for q, _ in todo))
    q_emb = encoder.encode(
        [query_text[q] for q in qids], "query", teacher.batch_size, runtime, bool(cfg.score.progress),
        "teacher: queries",
    )
    q_row = {q: i for i, q in enumerate(qids)}

    def scores(pair_qids: list[str], pair_docids: list[str]) -> np.ndarray:
        rows = np.fromiter((coll.doc_row(d) for d in pair_docids), np.int64, len(pair_docids))
        q = q_emb[torch.as_tensor([q_row[x] for x in pair_qids], dtype=torch.long)]
        out = encoder.score(q, torch.from_numpy(np.asarray(matrix[rows], dtype=np.float32))).numpy()
        return _checked(out.astype(np.float32), pair_qids, pair_docids)

    log.info("score: the bi-encoder teacher scores through its cached corpus embeddings (%s)", folder)
    return scores


def _normalize_settings(cfg: DictConfig) -> tuple[str, str]:
    """``(score.normalize, score.normalize_scope)`` as plain strings (the schema checks their values)."""
    method, scope = str(cfg.score.get("normalize", "none")), str(cfg.score.get("normalize_scope", "query"))
    return method, scope


def _fill_cache(
    cfg: DictConfig, teacher, teacher_fp: str, coll, pairs: list[tuple[str, str]], query_text, passage_text, name: str,
    runtime: Runtime,
) -> tuple[dict[tuple[str, str], float], int, float]:
    """Score the pairs missing from ``teacher``'s cache, shard by shard.

    Returns:
        the cached scores (complete for ``pairs``), the number of pairs scored now, and the seconds spent.
    """
    lookup = teacher.kind is RankerKind.PRECOMPUTED  # scores looked up by id in a file
    if lookup:  # ids the collection lacks are an input error
        known_qids = set(coll.queries.with_format("arrow")[:].column("_id").to_pylist()) | set(query_text)
        teacher.check_ids(known_qids, set(coll.doc_ids()))
    cache = ScoreCache.for_teacher(cfg, teacher_fp, coll.fingerprint)
    with locked(cache.folder, "teacher score cache"):  # one process scores a teacher at a time
        cached = cache.load()
        if lookup:  # every pair the file lacks, named at once
            teacher.check_pairs([p for p in pairs if p not in cached])
        # by passage, then query: a shard holds a contiguous range of passages, so a teacher that encodes
        # each distinct text once per call (bi-encoder, ColBERT) encodes a passage in one shard only;
        # queries, short, repeat across shards instead
        todo = sorted({pair for pair in pairs if pair not in cached}, key=lambda p: (p[1], p[0]))
        start = time.perf_counter()
        via = _corpus_embeddings(cfg, teacher, teacher_fp, coll, todo, query_text, runtime)
        shard = int(cfg.score.shard_size)
        n_shards = math.ceil(len(todo) / shard) if todo else 0
        # one bar over every pair of the run (pairs/s, ETA); the teacher's own bars show within a shard
        bar = tqdm(total=len(todo), desc=f"score: {name}", unit="pair", disable=not cfg.score.progress or not todo)
        with bar:
            for s in range(n_shards):
                part = todo[s * shard : (s + 1) * shard]
                pq_ids, pd_ids = [q for q, _ in part], [d for _, d in part]
                scores = (
                    via(pq_ids, pd_ids)
                    if via is not None
                    else _score_shard(teacher, passage_text, query_text, pq_ids, pd_ids, coll, cache_dir(cfg), runtime,
                                      cfg.score.progress)
                )
                cache.add(pq_ids, pd_ids, scores)
                cached.update(zip(part, scores.tolist(), strict=True))
                bar.update(len(part))
        return cached, len(todo), time.perf_counter() - start


def teacher_scores(
    cfg: DictConfig, teacher, teacher_fp: str, coll, pairs: list[tuple[str, str]], query_text, passage_text,
    runtime: Runtime,
) -> tuple[np.ndarray, int, float, list[str]]:
    """Teacher scores [len(pairs)] of (qid, docid) pairs, scoring only what the caches lack, under
    ``runtime`` (the stage's, from ``hardware``).

    An :class:`~distillrank.teachers.ensemble.EnsembleTeacher` is scored member by member, each
    through its own cache, and combined over all the given pairs (grouped by query).

    Returns:
        the scores, the number of pairs scored now (over all members), seconds spent scoring, and
        the cache folders.
    """
    members = teacher_members(teacher)
    member_scores: list[np.ndarray] = []
    caches: list[str] = []
    scored = 0
    score_time = 0.0
    for i, member in enumerate(members):
        member_fp = teacher_fp if member is teacher else member.fingerprint(runtime)
        name = "pairs" if member is teacher else f"member {i + 1}/{len(members)} ({member.kind})"
        cached, n, seconds = _fill_cache(cfg, member, member_fp, coll, pairs, query_text, passage_text, name, runtime)
        member_scores.append(np.array([cached[p] for p in pairs], dtype=np.float32))
        caches.append(str(ScoreCache.for_teacher(cfg, member_fp, coll.fingerprint).folder))
        scored += n
        score_time += seconds
    if member_scores[0].size == 0:
        return np.zeros(0, np.float32), scored, score_time, caches
    if teacher.kind is RankerKind.ENSEMBLE:
        groups = np.array([q for q, _ in pairs], dtype=object)
        return teacher.combine(member_scores, groups), scored, score_time, caches
    return member_scores[0], scored, score_time, caches


@locked_stage(STAGE)
def run(cfg: DictConfig) -> Manifest:
    """Score the mined candidates with the teacher; skipped when the manifest matches.

    An :class:`~distillrank.teachers.ensemble.EnsembleTeacher` scores member by member, each with its
    own cache, and combines the members over all candidates at the end.
    """
    folder = stage_dir(cfg, STAGE)
    key = stage_key(cfg)
    if (done := current_manifest(cfg, STAGE, key)) is not None:
        return done
    margin, relative = _denoise_settings(cfg)
    denoise.check_settings(margin, relative)
    norm_method, norm_scope = _normalize_settings(cfg)
    mine_manifest, mine_dir = require_stage(cfg, mine.STAGE, mine.stage_key(cfg))
    start = time.perf_counter()
    coll = context.collection(cfg)
    teacher = context.teacher(cfg)
    teacher_fp = context.teacher_fingerprint(cfg)
    candidates = pq.read_table(mine_dir / mine.OUTPUT)
    qids = candidates["qid"].to_pylist()
    docids = candidates["docid"].to_pylist()
    pairs = list(zip(qids, docids, strict=True))
    query_text = dict(context.train_queries(cfg))
    passage_text = context.passage_lookup(cfg)
    groups = candidates["qid"].to_numpy(zero_copy_only=False)

    runtime = configure(cfg.hardware)
    raw, scored, score_time, caches = teacher_scores(
        cfg, teacher, teacher_fp, coll, pairs, query_text, passage_text, runtime
    )
    members = teacher_members(teacher)

    table = candidates.append_column("teacher", pa.array(raw, pa.float32()))
    table, denoised = denoise.denoise_table(table, margin, relative)
    if denoise.enabled(margin, relative):
        log.info(
            "score: de-noising (margin=%s, relative=%s) dropped %d of %d negatives; "
            "%d queries left without negatives",
            margin,
            relative,
            int(denoised.dropped.sum()),
            int(np.sum(table["label"].to_numpy() <= 0)),
            denoised.queries_without_negatives,
        )
    if norm_method != "none":  # de-noising reads raw scores; training reads the normalised ones
        normalised = normalize.normalize(raw, groups, norm_method, norm_scope)
        column = table.schema.get_field_index("teacher")
        table = table.set_column(column, "teacher", pa.array(normalised, pa.float32()))
        table = table.append_column("teacher_raw", pa.array(raw, pa.float32()))
    with atomic_path(folder / OUTPUT) as tmp:
        pq.write_table(table, tmp)
    total_pairs = len(pairs) * len(members)
    counts = {
        "pairs": len(qids),
        "pairs_scored": scored,
        "pairs_reused": total_pairs - scored,
        "pairs_per_s": round(scored / score_time, 2) if scored else None,
        "teacher_score_mean": float(np.mean(table["teacher"].to_numpy())) if len(qids) else None,
        "normalize": {"method": norm_method, "scope": norm_scope},
        **denoised.counts(),
    }
    if len(members) > 1:
        counts["members"] = len(members)
    log.info("score: %s", counts)
    manifest = Manifest(
        stage=STAGE,
        key=key,
        config={"teacher": to_plain(cfg.teacher), "score": to_plain(cfg.score), "hardware": to_plain(cfg.hardware)},
        inputs={"mine": mine_manifest.key, "teacher": teacher_fp, "cache": caches[0] if len(caches) == 1 else caches},
        counts=counts,
        outputs=[OUTPUT],
        wall_time_s=time.perf_counter() - start,
    )
    manifest.write(folder)
    return manifest
