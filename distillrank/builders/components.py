"""The components of a config: collection, teacher, student, loss, query generator, BM25 index and
first stage, built from the config (memoised per config within a process where loading costs).

Layer 2: the stages (and the keys) build through here and hand the components, with plain values,
to the domain code of layer 1.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from distillrank import sharding
from distillrank.builders.mining import dense_candidates
from distillrank.data.collection import Collection, load_collection
from distillrank.errors import ConfigError
from distillrank.losses import uses_scores
from distillrank.mining.bm25 import BM25Index
from distillrank.mining.dense import MiningEmbeddings
from distillrank.mining.first_stage import Search, first_stage
from distillrank.runtime import Runtime
from distillrank.students import Student, as_student
from distillrank.teachers.base import Teacher
from distillrank.validation import allows_external, instantiate_checked
from distillrank.workspace import cache_dir

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- collection
@functools.lru_cache(maxsize=8)
def _collection(data_json: str, cache: str) -> Collection:
    data = OmegaConf.create(data_json)
    return load_collection(data, cache)


def collection(cfg: DictConfig) -> Collection:
    """The collection named by ``cfg.data`` (parsed once, then memory-mapped from the cache)."""
    return collection_of(cfg.data, cache_dir(cfg))


def collection_of(data: DictConfig, cache: str | Path) -> Collection:
    """The collection of a data config (an extra collection of the evaluate stage), through ``cache``."""
    return _collection(OmegaConf.to_yaml(data, resolve=True), str(cache))


def split_or_fail(cfg: DictConfig, coll: Collection, key: str) -> str:
    """The split named by ``cfg.data.<key>``, checked against the collection's splits."""
    split = cfg.data[key]
    if not split:
        raise ConfigError(
            f"data.{key} is not set for collection '{coll.name}' (its qrels splits: {coll.splits()})"
        )
    if split not in coll.splits():
        raise ConfigError(f"data.{key}={split!r} but '{coll.name}' has the qrels splits {coll.splits()}")
    return split


# --------------------------------------------------------------------------- teacher
@functools.lru_cache(maxsize=8)
def _teacher(teacher_yaml: str, allow_external: bool = False) -> Teacher:
    return instantiate_checked(OmegaConf.create(teacher_yaml), "teacher", allow_external)


def teacher(cfg: DictConfig) -> Teacher:
    """The teacher named by ``cfg.teacher`` (built once; weights load on first use). Nothing is
    bound to it: the pairs it scores name their collection (:class:`~distillrank.ranking.Pairs`)."""
    return _teacher(OmegaConf.to_yaml(cfg.teacher, resolve=True), allows_external(cfg))


@functools.lru_cache(maxsize=8)
def _teacher_fp(teacher_yaml: str, precision: str, backend: str = "torch", allow_external: bool = False) -> str:
    # only the precision and the backend decide scores: the device is not resolved (a key of a GPU
    # config can be computed on a machine without one)
    return _teacher(teacher_yaml, allow_external).fingerprint(Runtime(precision=precision, backend=backend))


def teacher_fingerprint(cfg: DictConfig) -> str:
    """The teacher's fingerprint under ``hardware.precision`` and ``hardware.backend`` (int8 and
    ONNX Runtime scores are cached apart), as resolved for the teacher under ``hardware=auto``."""
    from distillrank.builders import hardware  # it builds the teacher through here

    hw = hardware.node(cfg, "teacher")
    return _teacher_fp(
        OmegaConf.to_yaml(cfg.teacher, resolve=True), str(hw.precision), str(hw.backend), allows_external(cfg)
    )


# --------------------------------------------------------------------------- queries, student, loss
def queries_enabled(cfg: DictConfig) -> bool:
    """Whether the config trains on synthetic queries (``queries.method`` other than ``none``)."""
    return cfg.queries.method != "none"


def generator(cfg: DictConfig):
    """The query generator of ``queries=generator`` (built once per config)."""
    node = cfg.queries.generator
    if node is None or "_target_" not in node:
        raise ConfigError("queries=generator needs queries.generator with a _target_ (see conf/queries/generator.yaml)")
    return _build_generator(OmegaConf.to_yaml(node, resolve=True), allows_external(cfg))


@functools.lru_cache(maxsize=4)
def _build_generator(node_yaml: str, allow_external: bool = False):
    return instantiate_checked(OmegaConf.create(node_yaml), "queries.generator", allow_external)


def student(cfg: DictConfig) -> Student:
    """The student of ``cfg.student`` behind the training protocol (untrained)."""
    return as_student(instantiate_checked(cfg.student, "student", allows_external(cfg)))


def loss(cfg: DictConfig):
    """The loss of ``cfg.loss``."""
    return instantiate_checked(cfg.loss, "loss", allows_external(cfg))


def needs_scores(cfg: DictConfig) -> bool:
    """Whether the loss learns from teacher scores, so training needs the mine and score stages.
    A loss of feature terms only (``loss=feature``) trains on the collection's texts alone."""
    return uses_scores(loss(cfg))


def uses_features(cfg: DictConfig) -> bool:
    """Whether the loss has a feature (embedding) term."""
    return bool(getattr(loss(cfg), "uses_features", False))


# --------------------------------------------------------------------------- first stage
def bm25_index(cfg: DictConfig, coll: Collection) -> BM25Index:
    """The BM25 index of the collection with the mining config's parameters (cached); it retrieves
    on ``hardware.num_threads`` threads, or every CPU this process may use when that is unset."""
    m = cfg.mining
    return BM25Index.build_or_load(
        coll,
        cache_dir(cfg),
        k1=m.k1,
        b=m.b,
        stemmer=m.stemmer,
        stopwords=m.stopwords,
        threads=getattr(cfg.hardware, "num_threads", None),
    )


def mining_retrievers(cfg: DictConfig) -> list[str]:
    """The first-stage retrievers of ``mining.method`` (one, or the fused ones of ``hybrid``): ``hybrid``
    fuses at least one retriever, none twice (the schema checks their names)."""
    method = str(cfg.mining.method)
    if method != "hybrid":
        return [method]
    retrievers = [str(r) for r in cfg.mining.retrievers]
    if not retrievers or len(set(retrievers)) != len(retrievers):
        raise ConfigError(f"mining.retrievers={retrievers}; expected distinct retrievers for mining=hybrid")
    return retrievers


def _dense(cfg: DictConfig, coll: Collection, texts, depth: int, embeddings: MiningEmbeddings | None = None):
    from distillrank.builders import hardware  # it builds the teacher through here

    share = sharding.from_env() if embeddings is None else sharding.WHOLE
    rows, scores, dense_info = dense_candidates(
        hardware.for_role(cfg, "mining"), coll, texts, depth, share=share, embeddings=embeddings
    )
    info = {"embeddings_cached": dense_info["embeddings_cached"], "index": dense_info["index"]}
    if dense_info["passages_per_s"] is not None:
        info["passages_per_s"] = dense_info["passages_per_s"]
    return rows, scores, info


def mining_first_stage(
    cfg: DictConfig, coll: Collection, query_texts: list[str], embeddings: MiningEmbeddings | None = None
):
    """The mining first stage (``mining.method``, to ``mining.depth``) of ``query_texts``:
    rows, scores per query and info for the manifest (:func:`distillrank.mining.first_stage.first_stage`).

    The dense retriever searches ``embeddings`` when given (the mine stage's ranks encoded them
    together); else it takes them from the cache or encodes them, under ``torchrun`` each rank its
    part (:func:`distillrank.sharding.from_env`: every rank must then call this).
    """
    retrievers: dict[str, Search] = {}
    for name in mining_retrievers(cfg):
        if name == "bm25":
            retrievers[name] = lambda texts, depth: (*bm25_index(cfg, coll).search(texts, depth), {})
        else:
            retrievers[name] = functools.partial(_dense, cfg, coll, embeddings=embeddings)
    rrf_k = int(cfg.mining.rrf_k) if cfg.mining.method == "hybrid" else None
    return first_stage(retrievers, query_texts, int(cfg.mining.depth), rrf_k)


# --------------------------------------------------------------------------- settings read by more than one module
def consistency_filter(cfg: DictConfig) -> int | None:
    """``queries.filter_top_k`` when the consistency filter is on (None: off), checked."""
    k = cfg.queries.filter_top_k
    if k is None or int(k) <= 0:
        return None
    if int(k) > int(cfg.queries.filter_depth) + 1:  # ranks go to depth + 1 (the positive and depth others)
        raise ConfigError(
            f"queries.filter_top_k={k} exceeds queries.filter_depth + 1 = {int(cfg.queries.filter_depth) + 1}: "
            "it would keep every query"
        )
    return int(k)


def denoise_settings(cfg: DictConfig) -> tuple[float | None, float | None]:
    """``(score.denoise_margin, score.denoise_relative)``; either may be None."""
    margin, relative = cfg.score.denoise_margin, cfg.score.denoise_relative
    return (None if margin is None else float(margin)), (None if relative is None else float(relative))


def normalize_settings(cfg: DictConfig) -> tuple[str, str]:
    """``(score.normalize, score.normalize_scope)`` as plain strings (the schema checks their values)."""
    return str(cfg.score.normalize), str(cfg.score.normalize_scope)
