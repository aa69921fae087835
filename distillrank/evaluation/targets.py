"""What an evaluation covers: the collections evaluated (targets), with their judged queries, and
the settings the systems read."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distillrank.errors import ConfigError


@dataclass(frozen=True)
class Settings:
    """What the systems read of ``evaluate.*`` (and the seed of the hybrid dev sample)."""

    measures: tuple[str, ...]
    top_k: int  # retrieval depth of every run file
    batch_size: int
    chunk_size: int  # corpus rows per block of the exact top-k matrix product
    latency_queries: int  # queries timed one at a time; 0 = off
    seed: int
    hybrid_alpha: float | None
    hybrid_dev_queries: int | None
    hybrid_measure: str
    hybrid_rrf_k: int


@dataclass
class Target:
    """One collection evaluated: its judged test queries and the folder of its systems' results."""

    name: str
    coll: Any
    split: str
    queries: list[tuple[str, str]]  # (qid, text) of the queries with at least one relevant document
    qrels: dict[str, dict[str, int]]
    folder: Path  # evaluate/ for the main collection, evaluate/<name>/ for an extra one
    rel: str  # folder relative to evaluate/ ("." or the name)
    dev_split: str | None = None  # the split the hybrid α is chosen on (None: the default α)
    # when dev_split is the split the student trained on: the queries train.dev_queries (or
    # train.dev_fraction) held out of training, α's only dev queries
    held_out: list[str] | None = None
    trained_on: bool = False  # the dev split is the student's training split
    default_why: str | None = None  # why α is the default (dev_split None)

    @property
    def header(self) -> str:
        return f"{self.name} / {self.split}: {len(self.queries)} queries, {len(self.coll.corpus):,} passages"


def judged(coll, split: str) -> tuple[list[tuple[str, str]], dict[str, dict[str, int]]]:
    """The (qid, text) of a split's queries with at least one relevant document, and their qrels."""
    qrels = {q: docs for q, docs in coll.qrels[split].items() if any(r > 0 for r in docs.values())}
    queries = [(q, t) for q, t in coll.split_queries(split) if q in qrels]
    return queries, {q: qrels[q] for q, _ in queries}


def make_target(name: str, coll, split: str, folder: Path, rel: str, dev_split: str | None) -> Target:
    """The target of a collection's judged ``split`` (a ConfigError when it has no judged query)."""
    queries, qrels = judged(coll, split)
    if not queries:
        raise ConfigError(f"collection {name!r} has no {split!r} query with a relevant document to evaluate")
    return Target(name, coll, split, queries, qrels, folder, rel, dev_split)
