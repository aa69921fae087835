"""Stage 2, score: a teacher score for every mined (query, candidate) pair, positives included.

Scores are cached per (teacher fingerprint, collection) in ``<workspace>/_cache/scores/`` as
Parquet shards of ``qid, docid, score`` (:mod:`distillrank.teachers.cache`): any later run — another
experiment, a deeper mining — scores only the pairs missing there, and a killed run resumes after
its last complete shard.
Output ``scores.parquet``: the candidates table plus a ``teacher`` column and a boolean ``dropped``
column: negatives that de-noising (``score.denoise_margin`` / ``score.denoise_relative``, see
:mod:`distillrank.mining.denoise`) flags as probable unjudged positives. Their rows are kept for
inspection; training skips them. De-noising runs on the cached teacher scores, so changing its
settings reruns this stage without scoring a single pair again.

``score.normalize`` (``zscore`` | ``minmax``, per query or global; :mod:`distillrank.teachers.normalize`)
rewrites the ``teacher`` column students learn from and keeps the raw scores as ``teacher_raw``;
de-noising always reads raw scores. An ensemble teacher (``teacher=ensemble``) is scored member by
member, each through its own cache, and combined over all candidates.

Sharded scoring (docs/SCALE.md, "Sharded scoring"): under ``torchrun`` or in a SLURM array
(:mod:`distillrank.sharding`) each worker scores its share of the missing pairs into the shared
cache; then ``torchrun``'s rank 0, or a later single ``distillrank score``, writes ``scores.parquet``
from the cache, identical to one process's. A ``torchrun`` rank reads only its share of the candidates
(:func:`distillrank.teachers.cache.score_share`): its memory while scoring is O(pairs / ranks); rank 0's
final pass holds every pair's columns, as one process does.
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
from distillrank.errors import DistillrankError
from distillrank.mining import denoise
from distillrank.teachers import normalize
from distillrank.teachers.base import members as teacher_members
from distillrank.teachers.cache import PairFile, RowScores, file_scores, score_share
from distillrank.workspace import (
    Manifest,
    atomic_path,
    cache_dir,
    current_manifest,
    locked_stage,
    read_manifest,
    stage_dir,
    to_plain,
)

log = logging.getLogger(__name__)

STAGE = artifacts.SCORE
OUTPUT = artifacts.SCORES


def stage_key(cfg: DictConfig) -> str:
    """This stage's key (:mod:`distillrank.keys`)."""
    return keys.stage_key(cfg, STAGE)


def run(cfg: DictConfig) -> Manifest | None:
    """Score the mined candidates with the teacher; skipped when the manifest matches.

    An ensemble teacher scores member by member, each with its own cache, and combines the members
    over all candidates at the end.

    Under ``torchrun`` or in a SLURM array (:func:`distillrank.sharding.from_env`), this worker first
    scores its share of the missing pairs into the caches. ``torchrun``'s ranks then wait for each
    other; rank 0 writes the output and the manifest, and every rank returns the manifest. A SLURM
    array task returns None: a later ``distillrank score`` (one process) finds every pair cached and
    writes the output.
    """
    share = sharding.from_env(os.environ)
    if share.whole:
        return _run(cfg)
    if (done := current_manifest(cfg, STAGE, stage_key(cfg))) is not None:
        return done
    _score_share(cfg, share)
    sharding.barrier(share)  # every rank's share is in the caches
    if share.assembles:
        _run(cfg)
    sharding.barrier(share)  # the manifest is written
    if share.group == 1:
        return None
    return read_manifest(stage_dir(cfg, STAGE))


def _inputs(cfg: DictConfig, read: bool = True):
    """The collection, teacher, its fingerprint, the mine stage's manifest and candidates (the table,
    or with ``read=False`` the file to read in batches), and the texts."""
    mine_manifest, mine_dir = keys.require(cfg, artifacts.MINE)
    coll = components.collection(cfg)
    teacher = components.teacher(cfg)
    teacher_fp = components.teacher_fingerprint(cfg)
    path = mine_dir / artifacts.CANDIDATES
    candidates = pq.read_table(path) if read else PairFile(path)
    query_text = dict(training.train_queries(cfg))
    passage_text = training.passages(cfg)
    return coll, teacher, teacher_fp, mine_manifest, candidates, query_text, passage_text


def _score_share(cfg: DictConfig, share: sharding.Share) -> None:
    """Score this worker's share of the pairs missing from the caches (outside the stage's lock:
    it writes only into the caches, which the workers share). The candidates go as a file: a rank
    of a ``torchrun`` group reads only its share of them (:func:`score_share`)."""
    runtime = hardware.runtime(cfg, "teacher")
    runtime = runtime.on(sharding.join_group(share, runtime.device))  # a torchrun rank's GPU
    coll, teacher, teacher_fp, _, candidates, query_text, passage_text = _inputs(cfg, read=False)
    scored, seconds = score_share(
        teacher,
        teacher_fp,
        coll,
        candidates,
        query_text,
        passage_text,
        cache_root=cache_dir(cfg),
        runtime=runtime,
        shard_size=int(cfg.score.shard_size),
        progress=bool(cfg.score.progress),
        share=share,
    )
    log.info("score: %s scored %d pairs in %.1f s", share.describe(), scored, seconds)


@locked_stage(STAGE)
def _run(cfg: DictConfig) -> Manifest:
    """The stage in one process: score what the caches lack, write the output and the manifest."""
    folder = stage_dir(cfg, STAGE)
    key = stage_key(cfg)
    if (done := current_manifest(cfg, STAGE, key)) is not None:
        return done
    margin, relative = components.denoise_settings(cfg)
    denoise.check_settings(margin, relative)
    norm_method, norm_scope = components.normalize_settings(cfg)
    start = time.perf_counter()
    coll, teacher, teacher_fp, mine_manifest, pair_file, query_text, passage_text = _inputs(cfg, read=False)
    scores = file_scores(
        teacher,
        teacher_fp,
        coll,
        pair_file,
        query_text,
        passage_text,
        cache_root=cache_dir(cfg),
        runtime=hardware.runtime(cfg, "teacher"),
        shard_size=int(cfg.score.shard_size),
        progress=bool(cfg.score.progress),
    )
    members = teacher_members(teacher)
    with atomic_path(folder / OUTPUT) as tmp:
        written = assemble(pair_file.path, tmp, scores, margin, relative, norm_method, norm_scope)
    n_pairs = len(scores.scores)
    scored = scores.scored
    counts = {
        "pairs": n_pairs,
        "pairs_scored": scored,
        "pairs_reused": n_pairs * len(members) - scored,
        "pairs_per_s": round(scored / scores.seconds, 2) if scored else None,
        **written,
        "normalize": {"method": norm_method, "scope": norm_scope},
        **hardware.report(cfg, "teacher"),
    }
    if len(members) > 1:
        counts["members"] = len(members)
    log.info("score: %s", counts)
    manifest = Manifest(
        stage=STAGE,
        key=key,
        config={
            "teacher": to_plain(cfg.teacher),
            "score": to_plain(cfg.score),
            "hardware": to_plain(cfg.hardware),
        },
        inputs={
            "mine": mine_manifest.key,
            "teacher": teacher_fp,
            "cache": scores.caches[0] if len(scores.caches) == 1 else scores.caches,
        },
        counts=counts,
        outputs=[OUTPUT],
        wall_time_s=time.perf_counter() - start,
    )
    manifest.write(folder)
    return manifest


def assemble(
    candidates: str | os.PathLike,
    out: str | os.PathLike,
    scores: RowScores,
    margin: float | None,
    relative: float | None,
    norm_method: str,
    norm_scope: str,
    batch_rows: int = 1 << 20,
) -> dict:
    """Write ``scores.parquet`` at ``out``: the ``candidates`` file's rows and columns, plus
    ``teacher`` (the scores students learn from), ``dropped`` (de-noising) and, when normalised,
    ``teacher_raw``; the manifest's counts of it.

    The per-query work (de-noising, normalisation) runs on number arrays grouped by
    ``scores.query_codes``; the candidates are copied batch by batch, never held whole, so beyond
    the scores this holds a few numbers a pair (the labels, the flags, the normalised copy).
    A batch is a row group: ``batch_rows`` defaults to ``pyarrow.parquet.write_table``'s row group
    (1Mi rows), so the file is laid out as the in-memory write laid it out and readers see as few
    chunks.
    """
    path = Path(candidates)
    raw = scores.scores
    with pq.ParquetFile(path) as source:  # one handle: row count, labels, then the batches copied
        rows = source.metadata.num_rows
        if rows != len(raw):
            raise DistillrankError(f"{path} has {rows} rows, scored {len(raw)} (it changed while it was read)")
        labels = source.read(columns=["label"])["label"].to_numpy()
        denoised = denoise.denoise(scores.query_codes, labels, raw, margin, relative)
        if denoise.enabled(margin, relative):
            log.info(
                "score: de-noising (margin=%s, relative=%s) dropped %d of %d negatives; "
                "%d queries left without negatives",
                margin,
                relative,
                int(denoised.dropped.sum()),
                int(np.sum(labels <= 0)),
                denoised.queries_without_negatives,
            )
        del labels
        # de-noising reads raw scores; training reads the normalised ones
        teacher = (
            raw
            if norm_method == "none"
            else normalize.normalize(raw, scores.query_codes, norm_method, norm_scope)
        )
        columns = {"teacher": teacher, denoise.DROPPED: denoised.dropped}
        if norm_method != "none":
            columns["teacher_raw"] = raw
        types = {"teacher": pa.float32(), denoise.DROPPED: pa.bool_(), "teacher_raw": pa.float32()}
        kept = [n for n in source.schema_arrow.names if n not in columns]
        schema = pa.schema(
            [source.schema_arrow.field(n) for n in kept] + [pa.field(n, types[n]) for n in columns],
            metadata=source.schema_arrow.metadata,
        )
        start = 0
        with pq.ParquetWriter(out, schema) as writer:
            for batch in source.iter_batches(batch_size=batch_rows, columns=kept):
                end = start + batch.num_rows
                arrays = batch.columns + [pa.array(v[start:end], types[n]) for n, v in columns.items()]
                writer.write_batch(pa.RecordBatch.from_arrays(arrays, schema=schema))
                start = end
    return {
        "teacher_score_mean": float(np.mean(teacher)) if len(teacher) else None,
        **denoised.counts(),
    }
