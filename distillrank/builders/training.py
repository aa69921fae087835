"""The training queries of a config, as mine, score and train read them: the synthetic ones of the
``queries`` stage when ``queries.method`` is set, else the collection's ``data.train_split``."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from omegaconf import DictConfig

from distillrank import keys
from distillrank.artifacts import QUERIES
from distillrank.builders import components
from distillrank.data.training import TrainingQueries, passage_lookup, read_synthetic


def synthetic(cfg: DictConfig) -> TrainingQueries | None:
    """The ``queries`` stage's output when the config trains on synthetic queries (the stage must
    be complete and current), else None."""
    if not components.queries_enabled(cfg):
        return None
    manifest, folder = keys.require(cfg, QUERIES)
    return read_synthetic(folder, manifest.key)


def train_queries(cfg: DictConfig) -> list[tuple[str, str]]:
    """The training queries ``(qid, text)``: the synthetic ones of the ``queries`` stage when
    ``queries.method`` is set, else the collection's ``data.train_split``.

    Every stage that reads training queries (mine, score, train) goes through here.
    """
    if (made := synthetic(cfg)) is not None:
        return made.queries
    coll = components.collection(cfg)
    return coll.split_queries(components.split_or_fail(cfg, coll, "train_split"))


def train_qrels(cfg: DictConfig) -> dict[str, dict[str, int]]:
    """The training qrels: relevance > 0 marks a positive; < 0 a document never to use as a negative."""
    if (made := synthetic(cfg)) is not None:
        return made.qrels
    coll = components.collection(cfg)
    return coll.qrels[components.split_or_fail(cfg, coll, "train_split")]


def passages(cfg: DictConfig) -> Callable[[Iterable[str]], list[str]]:
    """A function ``docids -> texts`` over the collection and the passages synthetic queries add."""
    made = synthetic(cfg)
    return passage_lookup(components.collection(cfg), made.passages if made is not None else None)
