"""Stage 3, train: the student learns the teacher's scores on the mined candidates.

The student is any kind the ``student`` group builds (bi-encoder, cross-encoder, ColBERT; see
:mod:`distillrank.students`). Outputs: ``model/`` — the exported student with a model card
(bi-encoder: a sentence-transformers folder, ``SentenceTransformer(path)``; cross-encoder: a Hugging
Face folder, ``sentence_transformers.CrossEncoder(path)``; ColBERT: our own folder), read back by
:func:`distillrank.students.load_student` — and ``train_log.jsonl`` (step, loss, lr, gradient norm,
and dev metrics at evaluation steps); ``tensorboard/`` with ``train.logger=tensorboard``.

With ``train.dev_queries`` (or ``train.dev_fraction``) or ``train.dev_split`` and ``train.eval_every``,
the student is evaluated on dev re-ranking during training and the exported weights are the best
dev ones (:mod:`distillrank.training.dev`). The training queries ``train.dev_queries`` or
``train.dev_fraction`` set aside (never trained on, with or without ``eval_every``) are listed in
``dev_queries.txt``, one qid a line: the evaluate stage chooses the hybrid systems' α on them.

Resumable checkpoints go to ``checkpoints/`` in the stage folder every ``train.checkpoint_minutes``
(10 by default) and every ``train.checkpoint_every`` steps (0 = by time only; both 0 = none); a
killed run leaves them (but no model and no manifest) and the rerun resumes from the last one with
identical results. They are deleted once the model is saved, before the manifest is written.

Under ``torchrun --nproc_per_node=N distillrank train ...`` the stage trains data-parallel
(:mod:`distillrank.training.distributed`); rank 0 writes every output.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from hydra.utils import get_object
from omegaconf import DictConfig

from distillrank import artifacts, keys, sharding
from distillrank.builders import components, hardware, training
from distillrank.columns import open_parquet
from distillrank.errors import ConfigError
from distillrank.evaluation.dense import CORPUS_CHUNK, cached_corpus_embeddings
from distillrank.losses.margin_mse import MarginMSELoss
from distillrank.reporting import model_card
from distillrank.runtime import Runtime, seed_everything
from distillrank.teachers.base import embedding_source
from distillrank.training.batching import Pools, QueryPool, as_pools, pool_layout
from distillrank.training.dev import DevSet, carve_dev_pools, dev_from_pools, held_out_count
from distillrank.training.features import FeatureSet, cached_text_embeddings
from distillrank.training.loop import train_student
from distillrank.training.trackers import Tracker, check_logger, make_tracker
from distillrank.validation import check_targets
from distillrank.workspace import (
    Manifest,
    atomic_rename,
    atomic_write_text,
    cache_dir,
    current_manifest,
    locked_stage,
    replace_dir,
    stage_dir,
    to_plain,
)

log = logging.getLogger(__name__)

STAGE = artifacts.TRAIN
MODEL = artifacts.MODEL
LOG = artifacts.TRAIN_LOG
CHECKPOINTS = artifacts.CHECKPOINTS
DEV_QUERIES = artifacts.DEV_QUERIES
TENSORBOARD = artifacts.TENSORBOARD
# the logs as they are written, renamed to LOG / TENSORBOARD when the model is committed: a log
# under a manifest is always one whole run's (the stage lock keeps a second writer out meanwhile)
WORK_LOG = f".{LOG}.partial"
WORK_TENSORBOARD = f".{TENSORBOARD}.partial"
CARD_SECTIONS = ("data", "mining", "teacher", "student", "loss", "train")  # the config in the model card


def stage_key(cfg: DictConfig) -> str:
    """This stage's key (:mod:`distillrank.keys`)."""
    return keys.stage_key(cfg, STAGE)


COSINE_MARGIN = 2.0  # the largest score margin a cosine student can produce
MARGIN_SAMPLE_QUERIES = 20_000  # pools read from scores.parquet: the check reads these first queries' margins


def _is_margin_mse(loss: DictConfig) -> bool:
    """Whether the loss config builds Margin-MSE (the class its ``_target_`` names, not the name's spelling)."""
    built = get_object(str(loss._target_))
    return isinstance(built, type) and issubclass(built, MarginMSELoss)


def warn_unreachable_margins(cfg: DictConfig, pools: Pools | list[QueryPool]) -> float | None:
    """Warn when Margin-MSE asks a cosine student for teacher margins it cannot produce.

    Margin-MSE regresses the student's margin s(q, p) - s(q, n) onto the teacher's. A cosine
    student's margins lie in [-2, 2]; teacher scores on another scale (a cross-encoder's logits, a
    z-scored ensemble) set targets it cannot reach. Returns the share of |margins| above 2 (None
    when the check does not apply).
    """
    if not _is_margin_mse(cfg.loss) or cfg.student.get("similarity") != "cos":
        return None
    if cfg.loss.get("learn_scale"):  # the learned factor reaches any margin
        return None
    pools = as_pools(pools)
    if not pools.whole:  # read from scores.parquet when trained on: the first queries' rows, read here
        head = pools.take(np.arange(min(len(pools), MARGIN_SAMPLE_QUERIES)))
        pools = head.holding(np.arange(head.n_rows))
    margins = pools.first_positive_margins()
    if not margins.size:
        return None
    share = float(np.mean(margins > COSINE_MARGIN))
    if share > 0.1:
        log.warning(
            "train: %.0f%% of the teacher's margins exceed %.0f, the largest margin a cosine student can "
            "produce (median |margin| %.2f): Margin-MSE cannot fit them. Put the teacher on the student's "
            "scale (score.normalize=minmax, teacher.normalize=minmax for an ensemble) or train a dot-product "
            "student (student.similarity=dot)",
            100 * share, COSINE_MARGIN, float(np.median(margins)),
        )
    return share


def _candidates(scores: pa.Table | Path, qids: pa.Array) -> dict[str, list[str]]:
    """Every scored candidate (de-noised ones included) of the queries ``qids``, per query, in table
    order: Python strings for those queries' rows only (a path is read by row groups, filtered)."""
    if isinstance(scores, pa.Table):
        batches = scores.select(["qid", "docid"]).to_batches()
    else:
        batches = open_parquet(scores).iter_batches(columns=["qid", "docid"])
    out: dict[str, list[str]] = {}
    for batch in batches:
        batch = batch.filter(pc.is_in(batch.column("qid"), value_set=qids))
        for qid, docid in zip(
            batch.column("qid").to_pylist(), batch.column("docid").to_pylist(), strict=True
        ):
            out.setdefault(qid, []).append(docid)
    return out


def dev_set(
    cfg: DictConfig, pools: Pools, scores: pa.Table | Path, query_text: dict[str, str]
) -> tuple[Pools, DevSet | None]:
    """The training pools left after setting dev queries aside, and the dev set (None without one).

    Raises:
        ConfigError: more than one of ``dev_queries`` / ``dev_fraction`` / ``dev_split``, none of
            them with ``eval_every`` set, more dev queries than training queries, an unknown split.
    """
    t = cfg.train
    n, fraction, split = int(t.dev_queries), float(t.dev_fraction), t.dev_split
    if sum(map(bool, (n, fraction, split))) > 1:
        raise ConfigError("set one of train.dev_queries, train.dev_fraction and train.dev_split")
    if fraction:
        n = held_out_count(len(pools), fraction)
    if not n and not split:
        if t.eval_every:
            raise ConfigError(
                "train.eval_every needs a dev set: train.dev_queries=N or train.dev_fraction=F (carved "
                "from the training queries) or train.dev_split=SPLIT"
            )
        return pools, None
    coll = components.collection(cfg)
    if n:
        if n >= len(pools):
            asked = f"train.dev_fraction={fraction:g} sets aside {n}" if fraction else f"train.dev_queries={n}"
            raise ConfigError(f"{asked} but only {len(pools)} training queries are usable")
        train_pools, dev_pools = carve_dev_pools(pools, n, cfg.seed)
        qrels = training.train_qrels(cfg)
        dev_qids = as_pools(dev_pools).qids
        return train_pools, dev_from_pools(dev_pools, query_text, _candidates(scores, dev_qids), qrels)
    if split not in coll.splits():
        raise ConfigError(f"train.dev_split={split!r} but '{coll.name}' has the qrels splits {coll.splits()}")
    queries = coll.split_queries(split)
    rows, _, _ = components.mining_first_stage(cfg, coll, [text for _, text in queries])
    doc_ids = coll.doc_ids()
    depth = int(t.dev_depth)
    candidates = {q: [doc_ids[int(r)] for r in rs[:depth]] for (q, _), rs in zip(queries, rows, strict=True)}
    qrels = {q: dict(coll.qrels[split].get(q, {})) for q, _ in queries}
    return pools, DevSet(dict(queries), candidates, qrels)


def _feature_queries(cfg: DictConfig) -> list[tuple[str, str]]:
    """The queries feature distillation embeds: the training queries where there are (synthetic
    ones, or ``data.train_split`` when the collection has it), else none."""
    if not cfg.train.feature_queries:
        return []
    coll = components.collection(cfg)
    if cfg.queries.method == "none" and cfg.data.train_split not in coll.splits():
        return []  # a collection without training queries: passages alone
    return training.train_queries(cfg)


def feature_set(cfg: DictConfig, runtime: Runtime) -> FeatureSet:
    """The texts of feature distillation with the teacher's embeddings of them (cached per teacher,
    collection and settings in ``_cache/embeddings``: computed once, shared by every experiment)."""
    coll = components.collection(cfg)
    full = components.teacher(cfg)
    teacher = embedding_source(full)
    encoder = teacher.encoder(runtime)
    # an ensemble member is keyed as the score stage keys it (precision and backend included)
    model_fp = components.teacher_fingerprint(cfg) if teacher is full else teacher.fingerprint(runtime)
    t = cfg.train
    if t.feature_passages:
        targets, _, _ = cached_corpus_embeddings(
            encoder, coll, cache_dir(cfg), model_fp, teacher.batch_size, CORPUS_CHUNK, runtime,
            name="teacher embeddings",
        )
        rows = None
        if t.feature_max_passages is not None and t.feature_max_passages < len(targets):
            if t.feature_max_passages <= 0:
                raise ConfigError(f"train.feature_max_passages={t.feature_max_passages}; expected a positive count or null")
            rows = np.sort(np.random.default_rng(cfg.seed).choice(len(targets), t.feature_max_passages, replace=False))
    else:
        targets, rows = np.empty((0, encoder.dim), np.float32), None
    queries = [text for _, text in _feature_queries(cfg)]
    q_targets = (
        cached_text_embeddings(
            encoder, queries, "query", cache_dir(cfg), model_fp, teacher.batch_size, runtime,
            name="teacher embeddings",
        )
        if queries
        else np.empty((0, encoder.dim), np.float32)
    )
    if not queries and not len(targets):
        raise ConfigError(
            "feature distillation has no text: train.feature_passages=false and no training queries "
            f"(collection '{coll.name}', queries.method={cfg.queries.method})"
        )
    return FeatureSet(queries, q_targets, coll.passage_texts, targets, rows)


def commit_logs(folder: Path) -> None:
    """Rename the logs written during training to their final names (the last step before the manifest)."""
    atomic_rename(folder / WORK_LOG, folder / LOG)
    if (folder / WORK_TENSORBOARD).is_dir():
        replace_dir(folder / WORK_TENSORBOARD, folder / TENSORBOARD)  # an earlier run's, replaced whole


@locked_stage(STAGE)
def run(cfg: DictConfig) -> Manifest:
    """Train the student; skipped when the manifest matches."""
    folder = stage_dir(cfg, STAGE)
    key = stage_key(cfg)
    if (done := current_manifest(cfg, STAGE, key)) is not None:
        return done
    check_targets(cfg)
    check_logger(str(cfg.train.logger))
    ranking = components.needs_scores(cfg)
    inputs: dict[str, str] = {}
    if ranking:
        score_manifest, score_dir = keys.require(cfg, artifacts.SCORE)
        inputs["score"] = score_manifest.key
    start = time.perf_counter()
    seed_everything(cfg.seed)
    if cfg.hardware.precision == "int8":  # an inference precision (teachers); the student trains in fp32
        log.info("train: hardware.precision=int8 quantizes teachers only; the student trains in fp32")
    if ranking:
        # the layout alone (per query): each epoch reads the rows this rank trains on
        pools, dropped = pool_layout(score_dir / artifacts.SCORES)
        query_text = dict(training.train_queries(cfg))
        pools, dev = dev_set(cfg, pools, score_dir / artifacts.SCORES, query_text)
    else:  # feature terms only: the collection's texts, no query pools
        pools, dropped, query_text = Pools.empty(), 0, {}
        pools, dev = dev_set(cfg, pools, pa.table({"qid": [], "docid": []}), query_text)
    student = components.student(cfg)
    loss_fn = components.loss(cfg)
    warn_unreachable_margins(cfg, pools)

    passage_text = training.passages(cfg)

    checkpoint_dir = folder / CHECKPOINTS  # a checkpoint of this run found there is resumed
    runtime = hardware.runtime(cfg, "student")
    dist = sharding.from_env()  # this rank of a torchrun group (rank 0 of 1 without one)
    device = sharding.join_group(dist, runtime.device)  # this rank's device
    runtime = runtime.on(device)
    uses_features = getattr(loss_fn, "uses_features", False)
    features = feature_set(cfg, hardware.runtime(cfg, "teacher").on(device)) if uses_features else None
    tracker: Tracker = Tracker()
    if dist.main:
        tracker = make_tracker(
            str(cfg.train.logger),
            folder / WORK_TENSORBOARD,
            name=str(cfg.experiment),
            config={k: to_plain(cfg[k]) for k in ("student", "loss", "train")},
        )
    try:
        result = train_student(
            student,
            loss_fn,
            pools,
            query_text,
            passage_text,
            cfg.train,
            runtime,
            cfg.seed,
            folder / WORK_LOG,
            checkpoint_dir=checkpoint_dir,
            resume_key=key,
            dev=dev,
            tracker=tracker,
            dist=dist,
            features=features,
        )
    finally:
        tracker.close()
    counts = {
        "queries": len(pools),
        "queries_dropped": dropped,
        "steps": result.steps,
        "examples": result.examples,
        "final_loss": result.final_loss,
        "examples_per_s": round(result.examples_per_s * dist.group, 2),
    }
    if result.in_batch:
        counts["in_batch_negatives"] = True
    if features is not None:
        counts["feature_texts"] = {"queries": features.n_queries, "passages": len(features) - features.n_queries}
    if dev is not None:
        counts.update(
            dev_queries=len(dev),
            best_step=result.best_step,
            best_dev=result.best_dev,
            stopped_early=result.stopped_early,
        )
    if dist.group > 1:
        counts["world_size"] = dist.group
    counts.update(hardware.report(cfg, "student", *(["teacher"] if features is not None else [])))
    outputs = [MODEL, LOG] + ([TENSORBOARD] if cfg.train.logger == "tensorboard" else [])
    held_out = sorted(dev.queries) if dev is not None and (cfg.train.dev_queries or cfg.train.dev_fraction) else []
    if held_out:
        outputs.append(DEV_QUERIES)
    manifest = Manifest(
        stage=STAGE,
        key=key,
        config={k: to_plain(cfg[k]) for k in ("student", "loss", "train", "hardware", "seed")},
        inputs=inputs,
        counts=counts,
        outputs=outputs,
        wall_time_s=time.perf_counter() - start,
    )
    if dist.main:
        card = model_card.training_card(
            str(cfg.experiment), student.describe(), {k: to_plain(cfg[k]) for k in CARD_SECTIONS}, counts
        )
        student.cpu().save(folder / MODEL, model_card=card)
        log.info("train: %s", counts)
        shutil.rmtree(folder / CHECKPOINTS, ignore_errors=True)  # the model is saved: nothing left to resume
        commit_logs(folder)
        if held_out:
            atomic_write_text(folder / DEV_QUERIES, "".join(f"{q}\n" for q in held_out))
        manifest.write(folder)
    sharding.barrier(dist)
    return manifest
