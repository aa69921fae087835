"""What several stages load: the collection and the teacher, memoised per config within a process."""

from __future__ import annotations

import functools
import logging

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from distillrank.data.collection import Collection, load_collection
from distillrank.errors import ConfigError
from distillrank.teachers.base import Teacher
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
def _teacher(teacher_yaml: str) -> Teacher:
    return instantiate(OmegaConf.create(teacher_yaml))


def teacher(cfg: DictConfig) -> Teacher:
    """The teacher named by ``cfg.teacher`` (built once; weights load on first use)."""
    return _teacher(OmegaConf.to_yaml(cfg.teacher, resolve=True))


@functools.lru_cache(maxsize=8)
def _teacher_fp(teacher_yaml: str) -> str:
    return _teacher(teacher_yaml).fingerprint()


def teacher_fingerprint(cfg: DictConfig) -> str:
    return _teacher_fp(OmegaConf.to_yaml(cfg.teacher, resolve=True))


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


def train_queries(cfg: DictConfig) -> list[tuple[str, str]]:
    """The training queries ``(qid, text)``: the collection's ``data.train_split``.

    Every stage that reads training queries (mine, score, train) goes through here, so that
    synthetic queries (the ``queries`` stage) reach them all the same way.
    """
    coll = collection(cfg)
    return coll.split_queries(split_or_fail(cfg, coll, "train_split"))


def passage_lookup(cfg: DictConfig):
    """A function ``docids -> texts`` over the collection (and any passages the training data adds)."""
    coll = collection(cfg)

    def texts(docids) -> list[str]:
        return coll.passage_texts([coll.doc_row(d) for d in docids])

    return texts
