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
"""

from __future__ import annotations

import logging
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from omegaconf import DictConfig

from distillrank import artifacts, keys
from distillrank.builders import components, training
from distillrank.mining import denoise
from distillrank.runtime import configure
from distillrank.teachers import normalize
from distillrank.teachers.base import members as teacher_members
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

STAGE = artifacts.SCORE
OUTPUT = artifacts.SCORES


def stage_key(cfg: DictConfig) -> str:
    """This stage's key (:mod:`distillrank.keys`)."""
    return keys.stage_key(cfg, STAGE)


@locked_stage(STAGE)
def run(cfg: DictConfig) -> Manifest:
    """Score the mined candidates with the teacher; skipped when the manifest matches.

    An ensemble teacher scores member by member, each with its own cache, and combines the members
    over all candidates at the end.
    """
    folder = stage_dir(cfg, STAGE)
    key = stage_key(cfg)
    if (done := current_manifest(cfg, STAGE, key)) is not None:
        return done
    margin, relative = components.denoise_settings(cfg)
    denoise.check_settings(margin, relative)
    norm_method, norm_scope = components.normalize_settings(cfg)
    mine_manifest, mine_dir = keys.require(cfg, artifacts.MINE)
    start = time.perf_counter()
    coll = components.collection(cfg)
    teacher = components.teacher(cfg)
    teacher_fp = components.teacher_fingerprint(cfg)
    candidates = pq.read_table(mine_dir / artifacts.CANDIDATES)
    qids = candidates["qid"].to_pylist()
    docids = candidates["docid"].to_pylist()
    pairs = list(zip(qids, docids, strict=True))
    query_text = dict(training.train_queries(cfg))
    passage_text = training.passages(cfg)
    groups = candidates["qid"].to_numpy(zero_copy_only=False)

    raw, scored, score_time, caches = teacher_scores(
        teacher, teacher_fp, coll, pairs, query_text, passage_text, cache_root=cache_dir(cfg),
        runtime=configure(cfg.hardware), shard_size=int(cfg.score.shard_size), progress=bool(cfg.score.progress),
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
