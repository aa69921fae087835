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
cache; then ``torchrun``'s ranks together (each its row range, rank 0 joining the parts), or a later
single ``distillrank score``, write ``scores.parquet`` from the cache, identical to one process's. A ``torchrun`` rank reads only its share of the candidates
(:func:`distillrank.teachers.cache.score_share`), and in the final pass only its row range of them
(:func:`assemble_share`): its memory is O(pairs / ranks) in both.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from omegaconf import DictConfig

from distillrank import artifacts, keys, sharding
from distillrank.builders import components, hardware, training
from distillrank.columns import Reduce, group_cuts, one_worker, open_parquet, range_batches
from distillrank.errors import DistillrankError
from distillrank.mining import denoise
from distillrank.teachers import normalize
from distillrank.teachers.base import members as teacher_members
from distillrank.teachers.cache import PairFile, RowScores, file_scores, part_scores, score_share
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
    scored, seconds = _score_share(cfg, share)
    sharding.barrier(share)  # every rank's share is in the caches
    assembled = False
    if share.grouped and share.group == share.count:  # the ranks write the output together
        assembled = _assemble_ranks(cfg, share, scored, seconds)
    if share.assembles and not assembled:  # one process: a SLURM array's final run, or a lost shard
        _run(cfg)
    sharding.barrier(share)  # the manifest is written
    if share.group == 1:
        return None
    return read_manifest(stage_dir(cfg, STAGE))


def _inputs(cfg: DictConfig, read: bool = True, texts: bool = True):
    """The collection, teacher, its fingerprint, the mine stage's manifest and candidates (the table,
    or with ``read=False`` the file to read in batches), and the texts (None with ``texts=False``)."""
    mine_manifest, mine_dir = keys.require(cfg, artifacts.MINE)
    coll = components.collection(cfg)
    teacher = components.teacher(cfg)
    teacher_fp = components.teacher_fingerprint(cfg)
    path = mine_dir / artifacts.CANDIDATES
    candidates = pq.read_table(path) if read else PairFile(path)
    if not texts:
        return coll, teacher, teacher_fp, mine_manifest, candidates, None, None
    query_text = dict(training.train_queries(cfg))
    passage_text = training.passages(cfg)
    return coll, teacher, teacher_fp, mine_manifest, candidates, query_text, passage_text


def _score_share(cfg: DictConfig, share: sharding.Share) -> tuple[int, float]:
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
    return scored, seconds


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
    with atomic_path(folder / OUTPUT) as tmp:
        written = assemble(pair_file.path, tmp, scores, margin, relative, norm_method, norm_scope)
    n_pairs = len(scores.scores)
    return _finish(cfg, key, start, mine_manifest, teacher, teacher_fp, scores.caches, n_pairs, scores.scored, scores.seconds, written)


def _finish(
    cfg: DictConfig, key: str, start: float, mine_manifest: Manifest, teacher, teacher_fp: str, caches: list[str],
    n_pairs: int, scored: int, seconds: float, written: dict,
) -> Manifest:  # fmt: skip
    """Write the stage's manifest (``scores.parquet`` is in place) and return it."""
    members = teacher_members(teacher)
    norm_method, norm_scope = components.normalize_settings(cfg)
    counts = {
        "pairs": n_pairs,
        "pairs_scored": scored,
        "pairs_reused": n_pairs * len(members) - scored,
        "pairs_per_s": round(scored / seconds, 2) if scored and seconds else None,
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
            "cache": caches[0] if len(caches) == 1 else caches,
        },
        counts=counts,
        outputs=[OUTPUT],
        wall_time_s=time.perf_counter() - start,
    )
    manifest.write(stage_dir(cfg, STAGE))
    return manifest


def _assemble_ranks(cfg: DictConfig, share: sharding.Share, scored: int, seconds: float) -> bool:
    """The final pass shared by the ranks of a ``torchrun`` group (a collective): each writes its
    part (:func:`assemble_share`); rank 0 joins the parts into ``scores.parquet`` (identical to one
    process's) and writes the manifest.

    Returns:
        True once the output is written; False (on every rank) when a pair is missing from the
        caches (a shard lost since it was written): rank 0 then scores it and writes the output
        alone (:func:`_run`).
    """
    start = time.perf_counter()
    margin, relative = components.denoise_settings(cfg)
    denoise.check_settings(margin, relative)
    norm_method, norm_scope = components.normalize_settings(cfg)
    coll, teacher, teacher_fp, mine_manifest, pair_file, _, _ = _inputs(cfg, read=False, texts=False)
    parts = stage_dir(cfg, STAGE) / f".parts-{stage_key(cfg)[:16]}"
    done = assemble_share(
        pair_file, parts, teacher, teacher_fp, coll, cache_root=cache_dir(cfg),
        runtime=hardware.runtime(cfg, "teacher"), share=share, margin=margin, relative=relative,
        norm_method=norm_method, norm_scope=norm_scope,
    )  # fmt: skip
    if done is None:
        log.warning("score: a scored pair is missing from the cache; rank 0 scores it and writes %s", OUTPUT)
        return False
    rows, written, caches = done
    scored = int(sharding.reduce_array(share, np.array([scored], np.int64), "sum")[0])
    seconds = float(sharding.reduce_array(share, np.array([seconds], np.float64), "max")[0])
    sharding.barrier(share)  # every part is written
    if share.main:
        _write_joined(
            cfg, part_names(parts, share.group), start, mine_manifest, teacher, teacher_fp, caches, rows,
            scored, seconds, written,
        )  # fmt: skip
        shutil.rmtree(parts, ignore_errors=True)
    return True


def part_names(folder: Path, ranks: int) -> list[Path]:
    """The part files of ``ranks`` ranks in ``folder``, in rank order (:func:`assemble_share`)."""
    return [folder / f"part-{r:05d}-of-{ranks:05d}.parquet" for r in range(ranks)]


def assemble_share(
    pair_file: PairFile,
    folder: Path,
    teacher,
    teacher_fp: str,
    coll,
    *,
    cache_root: Path,
    runtime,
    share: sharding.Share,
    margin: float | None,
    relative: float | None,
    norm_method: str,
    norm_scope: str,
) -> tuple[int, dict, list[str]] | None:
    """This rank's part of the final pass (a collective of the ``torchrun`` group, every pair in the
    caches): the rows of one range of the candidates — ranges that split no query
    (:func:`distillrank.columns.group_cuts`) — scored from the caches, de-noised and normalised with
    per-query statistics reduced over the ranks, written to its part file in ``folder``
    (:func:`part_names`); :func:`join_parts` then gives the file one process writes. A rank holds a
    few numbers per pair of its range: O(pairs / ranks), plus O(distinct ids).

    Returns:
        the number of rows of the file, the counts of all of them (:func:`assemble`) and the cache
        folders; None on every rank when a pair of some range is missing from a cache.
    """
    ids = pair_file.ids()
    n_rows = pair_file.rows()
    # one read of every row's query, by rank 0, rather than one per rank
    cuts = sharding.broadcast(
        share, group_cuts(*pair_file.query_rows(ids[0]), n_rows, share.group) if share.main else None
    )
    rows = range(cuts[share.rank], cuts[share.rank + 1])

    def reduce(values: np.ndarray, how: str) -> np.ndarray:
        return sharding.reduce_array(share, values, how)

    part = part_scores(
        teacher, teacher_fp, coll, pair_file, ids, rows, cache_root=cache_root, runtime=runtime, reduce=reduce
    )
    if part is None:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(part_names(folder, share.group)[share.rank]) as tmp:
        written = assemble(pair_file.path, tmp, part, margin, relative, norm_method, norm_scope, reduce=reduce)
    log.info("score: %s wrote rows %d-%d of %d", share.describe(), rows.start, rows.stop, n_rows)
    return n_rows, written, part.caches


@locked_stage(STAGE)
def _write_joined(cfg: DictConfig, names: list[Path], *manifest_args) -> Manifest:
    """Rank 0: the ranks' part files joined into ``scores.parquet``, and the manifest."""
    with atomic_path(stage_dir(cfg, STAGE) / OUTPUT) as tmp:
        join_parts(names, tmp)
    return _finish(cfg, stage_key(cfg), *manifest_args)


def join_parts(parts: list[Path], out: str | os.PathLike, batch_rows: int = 1 << 20) -> None:
    """Write the rows of the Parquet files ``parts``, in order, as one file at ``out`` in row groups of
    ``batch_rows`` rows, as :func:`assemble` writes the whole file at once: the same bytes."""
    schema = pq.read_schema(parts[0])
    with pq.ParquetWriter(out, schema) as writer:
        for group in _regrouped(parts, batch_rows):
            writer.write_table(pa.Table.from_batches(group, schema).combine_chunks(), row_group_size=batch_rows)


def _regrouped(parts: list[Path], batch_rows: int):
    """The rows of the files ``parts``, in order, as lists of record batches of ``batch_rows`` rows
    in all (the last fewer)."""
    held: list[pa.RecordBatch] = []
    count = 0
    for path in parts:
        with open_parquet(path) as source:
            for batch in source.iter_batches(batch_size=batch_rows):
                while batch.num_rows:
                    take = min(batch.num_rows, batch_rows - count)
                    held.append(batch.slice(0, take))
                    count += take
                    batch = batch.slice(take)
                    if count == batch_rows:
                        yield held
                        held, count = [], 0
    if held:
        yield held


def assemble(
    candidates: str | os.PathLike,
    out: str | os.PathLike,
    scores: RowScores,
    margin: float | None,
    relative: float | None,
    norm_method: str,
    norm_scope: str,
    batch_rows: int = 1 << 20,
    reduce: Reduce | None = None,
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

    With ``reduce`` (a rank of the score stage's group, :func:`_assemble_ranks`), ``scores`` are
    those of one row range of the file (:func:`distillrank.teachers.cache.part_scores`) and only
    those rows are written; per-query statistics and the counts returned are reduced over the ranks.
    """
    path = Path(candidates)
    raw = scores.scores
    rows = scores.rows
    combine = reduce or one_worker
    with open_parquet(path) as source:  # one handle: row count, labels, then the batches copied
        total = source.metadata.num_rows
        if rows.stop > total or (reduce is None and total != len(raw)):
            raise DistillrankError(f"{path} has {total} rows, scored {len(raw)} (it changed while it was read)")
        labels = _column(source, "label", rows).to_numpy()
        group = {"n_groups": scores.queries or None, "reduce": reduce}
        denoised = denoise.denoise(scores.query_codes, labels, raw, margin, relative, **group)
        negatives = int(combine(np.array([np.sum(labels <= 0)], np.int64), "sum")[0])
        del labels
        # de-noising reads raw scores; training reads the normalised ones
        teacher = (
            raw
            if norm_method == "none"
            else normalize.normalize(
                raw, scores.query_codes, norm_method, norm_scope, first_row=rows.start, **group
            )
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
            for batch in range_batches(source, kept, rows, batch_rows):
                end = start + batch.num_rows
                arrays = batch.columns + [pa.array(v[start:end], types[n]) for n, v in columns.items()]
                writer.write_batch(pa.RecordBatch.from_arrays(arrays, schema=schema))
                start = end
    counts = {k: int(combine(np.array([v], np.int64), "sum")[0]) for k, v in denoised.counts().items()}
    counts["queries_without_negatives_after_denoise"] = denoised.queries_without_negatives  # reduced already
    if denoise.enabled(margin, relative):
        log.info(
            "score: de-noising (margin=%s, relative=%s) dropped %d of %d negatives; "
            "%d queries left without negatives",
            margin, relative, counts["negatives_dropped"], negatives, counts["queries_without_negatives_after_denoise"],
        )  # fmt: skip
    n = int(combine(np.array([len(teacher)], np.int64), "sum")[0])
    mean = float(combine(np.array([np.sum(teacher, dtype=np.float64)]), "sum")[0])
    return {"teacher_score_mean": mean / n if n else None, **counts}


def _column(source: pq.ParquetFile, name: str, rows: range) -> pa.Array:
    """One column of the rows ``rows`` of an open Parquet file."""
    parts = [b.column(0) for b in range_batches(source, [name], rows, 1 << 20)]
    return pa.concat_arrays(parts) if parts else pa.array([], source.schema_arrow.field(name).type)
