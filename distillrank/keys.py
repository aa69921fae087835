"""Stage keys: what decides each stage's artifacts, for the stages that read another's.

A stage is skipped when its manifest carries its current key, and a stage that reads an upstream
stage's artifacts finds them by that stage's key (:func:`require`). Layer 2, not a stage: every
stage computes keys through here, so none imports another to know what it wrote.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from distillrank.artifacts import EVALUATE, MINE, QUERIES, SCORE, TRAIN
from distillrank.builders import components, evaluation
from distillrank.evaluation.hybrid import ALPHA_GRID, DEFAULT_ALPHA
from distillrank.evaluation.hybrid_systems import HYBRID
from distillrank.evaluation.targets import Target
from distillrank.mining import denoise
from distillrank.mining.dense import dense_key
from distillrank.models.hub import resolve_model
from distillrank.workspace import Manifest, dir_fingerprint, fingerprint, require_stage, to_plain

# train.* keys that do not change the trained model: never in the stage key
NOT_IN_KEY = ("checkpoint_every", "checkpoint_minutes", "logger")
# train.* keys added after the first release: in the key only when set, so older keys stay valid
KEY_IF_SET = {
    "eval_every": 0,
    "dev_queries": 0,
    "dev_split": None,
    "dev_depth": 30,
    "dev_measure": "nDCG@10",
    "dev_batch_size": 64,
    "early_stopping_patience": 0,
    "feature_batch_size": None,
    "feature_passages": True,
    "feature_queries": True,
    "feature_max_passages": None,
}
# student.* keys that act only while training (eval mode ignores them), added after the first
# release: in the train key only when set
STUDENT_TRAINING_KEYS = {"dropout": None}


def queries_key(cfg: DictConfig) -> str:
    """The collection, the queries config, the seed; the generator's weights, and for the filter the
    teacher and the BM25 parameters."""
    components.queries_enabled(cfg)
    settings = dict(to_plain(cfg.queries))
    what: dict = {"stage": QUERIES, "collection": components.collection(cfg).fingerprint, "seed": cfg.seed}
    if cfg.queries.method == "generator":
        settings.pop("generator", None)
        what["generator"] = components.generator(cfg).fingerprint()
    if components.consistency_filter(cfg) is None:
        settings.pop("filter_depth", None)
    else:
        what["teacher"] = components.teacher_fingerprint(cfg)
        what["bm25"] = bm25_identity(cfg)
    what["queries"] = settings
    return fingerprint(what)


def mine_key(cfg: DictConfig) -> str:
    """Identifies the mine stage's output: the collection's content, the mining config and the seed;
    for a dense retriever, the model folder's content (instead of its name) and the precision."""
    retrievers = components.mining_retrievers(cfg)
    coll = components.collection(cfg)
    what = {
        "stage": MINE,
        "collection": coll.fingerprint,
        "split": cfg.data.train_split,
        "mining": to_plain(cfg.mining),
        "seed": cfg.seed,
    }
    if components.queries_enabled(cfg):  # synthetic training queries: their stage's key, not the split
        what["split"] = None
        what["queries"] = queries_key(cfg)
    if what["mining"].get("index", "exact") == "exact" or "dense" not in retrievers:
        what["mining"].pop("index", None)  # the default search: keys stay those of runs made before FAISS
        what["mining"].pop("faiss_factory", None)
    if "dense" in retrievers:
        # the model is identified by its folder's content, not by where it lies or how it is named
        what["mining"].pop("model", None)
        what["dense"] = dense_key(cfg)
    return fingerprint(what)


def score_key(cfg: DictConfig) -> str:
    """The mining output, the teacher (weights and settings), the de-noising and normalisation settings.

    The de-noising / normalisation settings enter the key only when set, so runs without them keep
    the key they had before these options existed.
    """
    parts = {"stage": SCORE, "mine": mine_key(cfg), "teacher": components.teacher_fingerprint(cfg)}
    margin, relative = components.denoise_settings(cfg)
    if denoise.enabled(margin, relative):
        parts["denoise"] = {"margin": margin, "relative": relative}
    method, scope = components.normalize_settings(cfg)
    if method != "none":
        parts["normalize"] = {"method": method, "scope": scope}
    return fingerprint(parts)


def student_identity(cfg: DictConfig, training: bool = True) -> dict:
    """``cfg.student`` as it decides a model: the training-only keys (``dropout``) are left out
    when unset or, with ``training=False`` (an untrained student in eval mode), always."""
    student = dict(to_plain(cfg.student))
    for key, default in STUDENT_TRAINING_KEYS.items():
        if key in student and (not training or student[key] == default):
            del student[key]
    return student


def _train_inputs_key(cfg: DictConfig) -> str | dict:
    """What the training data comes from: the score stage's key, or, for a feature-only loss, the
    collection, the synthetic queries' settings and the teacher (its embeddings are the targets)."""
    if components.needs_scores(cfg):
        return score_key(cfg)
    return {
        "data": to_plain(cfg.data),
        "queries": to_plain(cfg.queries),
        "teacher": components.teacher_fingerprint(cfg),
    }


def train_key(cfg: DictConfig) -> str:
    """The scores, the student, the loss, the optimisation settings, the precision and the seed.

    ``train.checkpoint_every``, ``train.checkpoint_minutes`` and ``train.logger`` are left out: they do
    not change the results.
    """
    train = dict(to_plain(cfg.train))
    for key in NOT_IN_KEY:
        train.pop(key, None)
    for key, default in KEY_IF_SET.items():
        if key in train and train[key] == default:
            del train[key]
    return fingerprint(
        {
            "stage": TRAIN,
            "score": _train_inputs_key(cfg),
            "student": student_identity(cfg),
            "loss": to_plain(cfg.loss),
            "train": train,
            "precision": cfg.hardware.precision,
            "seed": cfg.seed,
        }
    )


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
        # on the main collection's training split: only the queries train.dev_queries held out
        "held_out": target.trained_on and int(cfg.train.dev_queries) > 0,
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
            "student": student_identity(cfg, training=False),
            "weights": dir_fingerprint(resolve_model(cfg.student.model)),
        }
    elif name == "student":
        what = {"train": train_key(cfg)}
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
            "precision": cfg.hardware.precision,
        }
    )


def evaluate_key(cfg: DictConfig) -> str:
    """The whole evaluate stage: every system's key on every collection, plus the significance
    settings (they change the table)."""
    names = evaluation.system_names(cfg)
    main, *extras = evaluation.targets(cfg)
    what = {
        "stage": EVALUATE,
        "systems": {n: system_key(cfg, n, main) for n in names},
        "baseline": cfg.evaluate.baseline,
        "alpha": cfg.evaluate.alpha,
    }
    if extras:  # absent otherwise, so single-collection keys stay as they were
        what["collections"] = {t.name: {n: system_key(cfg, n, t) for n in names} for t in extras}
    return fingerprint(what)


_KEYS = {QUERIES: queries_key, MINE: mine_key, SCORE: score_key, TRAIN: train_key, EVALUATE: evaluate_key}


def stage_key(cfg: DictConfig, stage: str) -> str:
    """The key of ``stage`` for ``cfg``."""
    return _KEYS[stage](cfg)


def require(cfg: DictConfig, stage: str) -> tuple[Manifest, Path]:
    """The manifest and folder of ``stage``'s artifacts for ``cfg``, complete and current
    (:func:`distillrank.workspace.require_stage` with the stage's key)."""
    return require_stage(cfg, stage, stage_key(cfg, stage))
