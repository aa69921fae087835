"""Stage keys: what decides each stage's artifacts, derived from the config sections it reads.

A stage is skipped when its manifest carries its current key, and a stage that reads an upstream
stage's artifacts finds them by that stage's key (:func:`require`). Layer 2, not a stage: each
stage's key is declared here (:data:`STAGE_KEYS`), so no stage imports another to know what it wrote.

A stage's key is the fingerprint of

- :data:`KEY_VERSION` and the stage's name;
- the config sections the stage reads, whole as composed (:func:`settings`), less the few keys it
  declares ``excluded`` (they change how the stage runs, not what it writes) or ``by_content``
  (they say where a component lies: its content's fingerprint stands for them);
- the fingerprints of the components it builds (:func:`inputs`): the collection's content, the
  teacher's, the query generator's, the dense retriever's weights; for evaluate, every system's key;
- the keys of the upstream stages whose artifacts it reads (:func:`upstream`).

So a key added to a section is in the key of every stage that reads the section, unless declared
excluded here. Runtime settings (``hardware.*``) enter where they change results: through the
identity of the components they affect (teacher, dense retriever) and in the sections of train and
evaluate. Under ``hardware=auto`` they enter as resolved for each model
(:mod:`distillrank.builders.hardware`): a key is the one the resolved hardware written out gives.
Bump :data:`KEY_VERSION` when a stage writes something else for the same config: every
stage then reruns once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig

from distillrank.artifacts import EVALUATE, MINE, QUERIES, SCORE, TRAIN
from distillrank.builders import components, evaluation, hardware
from distillrank.builders.mining import dense_key
from distillrank.evaluation.hybrid import ALPHA_GRID, DEFAULT_ALPHA
from distillrank.evaluation.hybrid_systems import HYBRID
from distillrank.evaluation.targets import Target
from distillrank.models.hub import resolve_model
from distillrank.workspace import Manifest, dir_fingerprint, fingerprint, require_stage, to_plain

KEY_VERSION = 2  # 2: keys derived from the declared sections (1: the hand-kept lists before)


@dataclass(frozen=True)
class StageKey:
    """What a stage's key covers: config sections (top-level keys of the config) and exceptions."""

    sections: tuple[str, ...]
    excluded: Mapping[str, str] = field(default_factory=dict)  # "section.key" -> why it changes no artifact
    by_content: Mapping[str, str] = field(default_factory=dict)  # "section.key" -> the input standing for it


# where the collection lies, not what it holds: the collection's content fingerprint stands for them
_COLLECTION = {key: "collection" for key in ("data.source", "data.path", "data.irds_id", "data.root")}
# where models run, not what they compute
_WHERE = {
    "hardware.device": "the device",
    "hardware.num_threads": "CPU threads",
    "hardware.max_forward_texts": "a batch cut into several forwards gives the same results",
    "hardware.max_batch_tokens": "batches sized by tokens: the same results up to float rounding",
    "hardware.max_forward_tokens": "a batch cut into forwards of fewer tokens: the same results up to float rounding",
    "hardware.prefetch": "tokenization one batch ahead: bit-identical results",
}

STAGE_KEYS: dict[str, StageKey] = {
    QUERIES: StageKey(
        sections=("queries", "seed"),
        by_content={"queries.generator": "generator"},
    ),
    MINE: StageKey(
        sections=("data", "mining", "seed"),
        excluded={"mining.batch_size": "texts per encoding batch: the same embeddings"},
        by_content={**_COLLECTION, "mining.model": "dense"},
    ),
    SCORE: StageKey(
        sections=("score",),
        excluded={
            "score.progress": "progress bars",
            "score.shard_size": "pairs per cache shard: how scores are stored, not what they are",
        },
    ),
    TRAIN: StageKey(
        sections=("data", "student", "loss", "train", "hardware", "seed"),
        excluded={
            "train.checkpoint_every": "resumable checkpoints: a resumed run ends identical",
            "train.checkpoint_minutes": "resumable checkpoints: a resumed run ends identical",
            "train.logger": "where the training curves also go (train_log.jsonl is written anyway)",
            "train.dev_batch_size": "pairs per dev re-ranking batch: the same dev scores",
            **_WHERE,
        },
        by_content=_COLLECTION,
    ),
    EVALUATE: StageKey(
        sections=("data", "evaluate", "hardware", "seed"),
        excluded={
            "evaluate.batch_size": "texts per encoding batch: the same runs",
            "evaluate.chunk_size": "corpus rows per block of the exact search: the same runs",
            "evaluate.latency_queries": "how many queries are timed: timings are measured, not reproduced",
            **_WHERE,
        },
        by_content=_COLLECTION,
    ),
}

# student.* keys that act only while training: an untrained student, evaluated in eval mode, ignores them
TRAINING_ONLY = ("dropout",)


def settings(cfg: DictConfig, stage: str) -> dict:
    """The config sections ``stage`` reads, as plain values, less its excluded and by-content keys."""
    spec = STAGE_KEYS[stage]
    out = {section: to_plain(cfg[section]) for section in spec.sections}
    if stage == TRAIN:  # under hardware=auto: the precision the student trains in, as if written out
        out["hardware"] = to_plain(hardware.node(cfg, "student"))
    for dotted in (*spec.excluded, *spec.by_content):
        section, _, key = dotted.partition(".")
        if isinstance(out.get(section), dict):
            out[section].pop(key, None)
    return out


def inputs(cfg: DictConfig, stage: str) -> dict:
    """The fingerprints of what ``stage`` builds that its config sections only name."""
    if stage == QUERIES:
        found: dict = {"collection": components.collection(cfg).fingerprint}
        if cfg.queries.method == "generator":
            found["generator"] = components.generator(cfg).fingerprint()
            # bf16 samples other queries
            found["generator_precision"] = str(hardware.node(cfg, "generator").precision)
        if components.consistency_filter(cfg) is not None:  # the teacher re-ranks BM25 candidates
            found["teacher"] = components.teacher_fingerprint(cfg)
            found["bm25"] = bm25_identity(cfg)
        return found
    if stage == MINE:
        found = {"collection": components.collection(cfg).fingerprint}
        if "dense" in components.mining_retrievers(cfg):
            # the weights' content, the precision and the backend
            found["dense"] = dense_key(hardware.for_role(cfg, "mining"))
        return found
    if stage == SCORE:
        return {"teacher": components.teacher_fingerprint(cfg)}
    if stage == TRAIN:  # the passages and, for feature distillation, the teacher's embeddings
        return {"collection": components.collection(cfg).fingerprint, "teacher": components.teacher_fingerprint(cfg)}
    if stage == EVALUATE:
        names = evaluation.system_names(cfg)
        return {"systems": {t.name: {n: system_key(cfg, n, t) for n in names} for t in evaluation.targets(cfg)}}
    raise KeyError(stage)


def upstream(cfg: DictConfig, stage: str) -> list[str]:
    """The stages whose artifacts ``stage`` reads for ``cfg``.

    Evaluate reads the trained student only as a system; its system key carries the train key."""
    if stage == MINE:
        return [QUERIES] if components.queries_enabled(cfg) else []
    if stage == SCORE:
        return [MINE]
    if stage == TRAIN:
        if components.needs_scores(cfg):
            return [SCORE]
        return [QUERIES] if components.queries_enabled(cfg) else []
    return []


def stage_key(cfg: DictConfig, stage: str) -> str:
    """The key of ``stage`` for ``cfg``: :data:`KEY_VERSION`, :func:`settings`, :func:`inputs` and
    the keys of the :func:`upstream` stages."""
    return fingerprint(
        {
            "version": KEY_VERSION,
            "stage": stage,
            "config": settings(cfg, stage),
            "inputs": inputs(cfg, stage),
            "upstream": {name: stage_key(cfg, name) for name in upstream(cfg, stage)},
        }
    )


def student_identity(cfg: DictConfig) -> dict:
    """``cfg.student`` as it decides an untrained student evaluated in eval mode: without the keys
    that act only while training (:data:`TRAINING_ONLY`)."""
    return {k: v for k, v in to_plain(cfg.student).items() if k not in TRAINING_ONLY}


def bm25_identity(cfg: DictConfig) -> dict:
    """What decides a BM25 index's rankings: the mining config's BM25 parameters."""
    return {k: cfg.mining[k] for k in ("k1", "b", "stemmer", "stopwords")}


def _first_stage_key(cfg: DictConfig) -> dict:
    ev = cfg.evaluate
    if ev.first_stage == "bm25":
        return {"bm25": bm25_identity(cfg), "depth": ev.rerank_depth}
    return {"dense": dir_fingerprint(resolve_model(ev.first_stage_model)), "depth": ev.rerank_depth}


def _hybrid_what(cfg: DictConfig, name: str, target: Target) -> dict:
    """What decides a hybrid system's run: its parts' keys and the fusion (α, or how it is chosen)."""
    ev = cfg.evaluate
    what: dict = {
        "hybrid": name,
        "bm25": system_key(cfg, "bm25", target),
        "student": system_key(cfg, "student", target),
    }
    if name == "hybrid_rrf":
        return {**what, "k": int(ev.hybrid_rrf_k)}
    if ev.hybrid_alpha is not None:
        return {**what, "alpha": float(ev.hybrid_alpha)}
    if target.dev_split is None:
        return {**what, "alpha": "default", "default": DEFAULT_ALPHA}
    return {
        **what,
        "alpha": "dev",
        "dev_split": target.dev_split,
        "dev_queries": ev.hybrid_dev_queries,
        "seed": cfg.seed,
        "measure": str(ev.hybrid_measure),
        "grid": list(ALPHA_GRID),
        "default": DEFAULT_ALPHA,
        # on the main collection's training split: only the queries train.dev_queries (or
        # train.dev_fraction) held out
        "held_out": target.trained_on and (int(cfg.train.dev_queries) > 0 or float(cfg.train.dev_fraction) > 0),
    }


def system_key(cfg: DictConfig, name: str, target: Target | None = None) -> str:
    """What decides one evaluated system's results on a collection's test split: the key its
    saved results in ``evaluate/<system>/`` carry (default ``target``: the main collection)."""
    target = target if target is not None else evaluation.main_target(cfg)
    if name in HYBRID:
        what = _hybrid_what(cfg, name, target)
    elif name == "bm25":
        what = bm25_identity(cfg)
    elif name == "teacher":
        what = {"teacher": components.teacher_fingerprint(cfg)}
    elif name == "student_init":
        what = {
            "student": student_identity(cfg),
            "weights": dir_fingerprint(resolve_model(cfg.student.model)),
        }
    elif name == "student":
        what = {"train": stage_key(cfg, TRAIN)}
    else:
        what = {"checkpoint": dir_fingerprint(resolve_model(cfg.evaluate.checkpoints[name]))}
    if evaluation.reranks(cfg, name):  # a re-ranker's results depend on its candidates
        what = {**what, "first_stage": _first_stage_key(cfg)}
    return fingerprint(
        {
            "system": what,
            "collection": target.coll.fingerprint,
            "split": target.split,
            "measures": list(cfg.evaluate.measures),
            "top_k": cfg.evaluate.top_k,
            "precision": str(hardware.node(cfg, "teacher" if name == "teacher" else "student").precision),
        }
    )


def require(cfg: DictConfig, stage: str) -> tuple[Manifest, Path]:
    """The manifest and folder of ``stage``'s artifacts for ``cfg``, complete and current
    (:func:`distillrank.workspace.require_stage` with the stage's key)."""
    return require_stage(cfg, stage, stage_key(cfg, stage))
