"""What several stages load: the collection and the teacher, memoised per config within a process."""

from __future__ import annotations

import functools
import logging

from omegaconf import DictConfig, OmegaConf

from distillrank.data.collection import Collection, load_collection
from distillrank.errors import ConfigError
from distillrank.runtime import Runtime, configured_backend
from distillrank.teachers.base import Teacher
from distillrank.validation import allows_external, instantiate_checked
from distillrank.workspace import cache_dir

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=8)
def _collection(data_json: str, cache: str) -> Collection:
    data = OmegaConf.create(data_json)
    return load_collection(data, cache)


def collection(cfg: DictConfig) -> Collection:
    """The collection named by ``cfg.data`` (parsed once, then memory-mapped from the cache)."""
    return _collection(OmegaConf.to_yaml(cfg.data, resolve=True), str(cache_dir(cfg)))


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
    ONNX Runtime scores are cached apart)."""
    return _teacher_fp(
        OmegaConf.to_yaml(cfg.teacher, resolve=True),
        str(cfg.hardware.precision),
        configured_backend(cfg.hardware),
        allows_external(cfg),
    )


def split_or_fail(cfg: DictConfig, coll: Collection, key: str) -> str:
    """The split named by ``cfg.data.<key>``, checked against the collection's splits."""
    split = cfg.data.get(key)
    if not split:
        raise ConfigError(
            f"data.{key} is not set for collection '{coll.name}' (its qrels splits: {coll.splits()})"
        )
    if split not in coll.splits():
        raise ConfigError(f"data.{key}={split!r} but '{coll.name}' has the qrels splits {coll.splits()}")
    return split


def _synthetic(cfg: DictConfig):
    """The ``queries`` stage's output when the config trains on synthetic queries, else None."""
    from distillrank.stages import queries  # late: the queries stage itself uses this module

    return queries.load(cfg) if queries.enabled(cfg) else None


def train_queries(cfg: DictConfig) -> list[tuple[str, str]]:
    """The training queries ``(qid, text)``: the synthetic ones of the ``queries`` stage when
    ``queries.method`` is set, else the collection's ``data.train_split``.

    Every stage that reads training queries (mine, score, train) goes through here.
    """
    if (synthetic := _synthetic(cfg)) is not None:
        return synthetic.queries
    coll = collection(cfg)
    return coll.split_queries(split_or_fail(cfg, coll, "train_split"))


def train_qrels(cfg: DictConfig) -> dict[str, dict[str, int]]:
    """The training qrels: relevance > 0 marks a positive; < 0 a document never to use as a negative."""
    if (synthetic := _synthetic(cfg)) is not None:
        return synthetic.qrels
    coll = collection(cfg)
    return coll.qrels[split_or_fail(cfg, coll, "train_split")]


def passage_lookup(cfg: DictConfig):
    """A function ``docids -> texts`` over the collection and the passages synthetic queries add."""
    coll = collection(cfg)
    synthetic = _synthetic(cfg)
    extra = synthetic.passages if synthetic is not None else {}

    def texts(docids) -> list[str]:
        docids = list(docids)
        if not extra:
            return coll.passage_texts([coll.doc_row(d) for d in docids])
        corpus = [d for d in docids if d not in extra]
        found = dict(zip(corpus, coll.passage_texts([coll.doc_row(d) for d in corpus]), strict=True))
        return [extra[d] if d in extra else found[d] for d in docids]

    return texts
