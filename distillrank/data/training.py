"""Training queries as mine, score and train read them: a judged split of the collection, or the
synthetic queries the ``queries`` stage wrote (:mod:`distillrank.queries`), with the positives it
rewrote (passages that exist only in training, e.g. a passage without its ICT sentence)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from distillrank.artifacts import REWRITTEN_PASSAGES, SYNTHETIC_QUERIES


@dataclass(frozen=True)
class TrainingQueries:
    """The kept synthetic queries as the later stages read them."""

    queries: list[tuple[str, str]]
    qrels: dict[str, dict[str, int]]
    passages: dict[str, str]


def read_synthetic(folder: str | Path, key: str) -> TrainingQueries:
    """The kept queries of a ``queries`` stage folder (memoised per folder and stage key).

    The qrels give each query its positive (relevance 1) and, when the positive is a rewrite, its
    source document with relevance -1: never a sampled negative, never a positive.
    """
    return _read(str(folder), key)


@functools.lru_cache(maxsize=4)
def _read(folder: str, key: str) -> TrainingQueries:
    table = pq.read_table(Path(folder) / SYNTHETIC_QUERIES)
    table = table.filter(table["kept"])
    passages = pq.read_table(Path(folder) / REWRITTEN_PASSAGES)
    queries = list(zip(table["qid"].to_pylist(), table["text"].to_pylist(), strict=True))
    qrels: dict[str, dict[str, int]] = {}
    for qid, source, positive in zip(table["qid"].to_pylist(), table["source"].to_pylist(), table["positive"].to_pylist(), strict=True):
        qrels[qid] = {positive: 1} if positive == source else {positive: 1, source: -1}
    return TrainingQueries(queries, qrels, dict(zip(passages["docid"].to_pylist(), passages["text"].to_pylist(), strict=True)))


def passage_lookup(coll, extra: Mapping[str, str] | None = None) -> Callable[[Iterable[str]], list[str]]:
    """A function ``docids -> texts`` over the collection's passages and ``extra`` (docid -> text,
    the rewritten positives of synthetic queries), which wins where both have an id."""
    extra = extra or {}

    def texts(docids: Iterable[str]) -> list[str]:
        docids = list(docids)
        if not extra:
            return coll.passage_texts([coll.doc_row(d) for d in docids])
        corpus = [d for d in docids if d not in extra]
        found = dict(zip(corpus, coll.passage_texts([coll.doc_row(d) for d in corpus]), strict=True))
        return [extra[d] if d in extra else found[d] for d in docids]

    return texts
