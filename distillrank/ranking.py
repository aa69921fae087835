"""One interface for everything that scores (query, passage) pairs or retrieves: :class:`Ranker`.

Teachers (:mod:`distillrank.teachers`) and students (:mod:`distillrank.students`) both implement
it, so the score stage, evaluation, dev re-ranking and the report call one method,
:meth:`Ranker.score_pairs`, on whatever they were given, and dispatch only on what a ranker
declares: its :class:`RankerKind` and whether it ``retrieves`` (encodes a corpus once and searches
it, as a bi-encoder does; every other ranker re-ranks candidates). Nothing asks a ranker for an
attribute it may lack, and nothing reads a class or ``_target_`` name.

The pairs a ranker scores travel as one value, :class:`Pairs`: de-duplicated query and passage
texts, the pairs as indices into them, the ids that name the texts (a ranker that looks scores up
needs them) and the collection the passages come from (a ranker that scores over corpus
statistics, BM25, needs it).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
from torch import nn

from distillrank.runtime import Runtime


class RankerKind(str, enum.Enum):
    """What a ranker is. The values are the names configs, saved folders and messages already use
    (late interaction is called ``colbert`` there)."""

    BI_ENCODER = "bi_encoder"  # query and passage encoded apart, one vector each: retrieves
    LATE_INTERACTION = "colbert"  # per-token embeddings, MaxSim
    CROSS_ENCODER = "cross_encoder"  # the pair read jointly
    SEQ2SEQ = "seq2seq"  # a generative re-ranker (monoT5): P(relevant) of the pair
    LEXICAL = "lexical"  # term statistics of a collection (BM25)
    ENSEMBLE = "ensemble"  # a combination of member rankers (``members``)
    PRECOMPUTED = "precomputed"  # scores looked up by (qid, docid) in a file

    def __str__(self) -> str:
        return self.value

    __format__ = str.__format__


def _index(values) -> np.ndarray:
    return np.asarray(values, dtype=np.int64).reshape(-1)


@dataclass(frozen=True)
class Pairs:
    """(query, passage) pairs as indices into de-duplicated text lists.

    Attributes:
        queries / passages: the distinct texts.
        pair_q / pair_p: [N] int64: pair i is ``(queries[pair_q[i]], passages[pair_p[i]])``.
        qids / docids: the ids of ``queries`` / ``passages`` (same order), or None. Models ignore
            them; a ranker that looks scores up (``PrecomputedTeacher``) needs them, and BM25 finds
            indexed passages by their docid.
        collection: the collection the docids name (``cache_root``: where its BM25 index is
            cached), for rankers that score over corpus statistics; None otherwise.
    """

    queries: Sequence[str]
    passages: Sequence[str]
    pair_q: np.ndarray
    pair_p: np.ndarray
    qids: Sequence[str] | None = None
    docids: Sequence[str] | None = None
    collection: Any = field(default=None, repr=False)
    cache_root: Path | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "pair_q", _index(self.pair_q))
        object.__setattr__(self, "pair_p", _index(self.pair_p))
        if len(self.pair_q) != len(self.pair_p):
            raise ValueError(f"pair_q has {len(self.pair_q)} entries and pair_p {len(self.pair_p)}")

    @classmethod
    def aligned(cls, queries: Sequence[str], passages: Sequence[str]) -> Pairs:
        """Pairs of two aligned lists of N texts (pair i = ``(queries[i], passages[i])``); each
        distinct text appears once in the lists a ranker encodes."""
        if len(queries) != len(passages):
            raise ValueError(f"{len(queries)} queries and {len(passages)} passages are not aligned")
        q_slot = {t: i for i, t in enumerate(dict.fromkeys(queries))}
        p_slot = {t: i for i, t in enumerate(dict.fromkeys(passages))}
        return cls(list(q_slot), list(p_slot), [q_slot[q] for q in queries], [p_slot[p] for p in passages])

    def __len__(self) -> int:
        return len(self.pair_q)

    def query_texts(self) -> list[str]:
        """The query text of every pair, in pair order."""
        return [self.queries[i] for i in self.pair_q.tolist()]

    def passage_texts(self) -> list[str]:
        """The passage text of every pair, in pair order."""
        return [self.passages[i] for i in self.pair_p.tolist()]


@runtime_checkable
class Ranker(Protocol):
    """What scores (query, passage) pairs or retrieves: every teacher and every student.

    ``kind`` and ``retrieves`` are declarations callers dispatch on. A ranker that ``retrieves``
    also gives ``encoder(runtime)`` (the bi-encoder that encodes a corpus and its queries) and
    ``batch_size`` (texts per encoding batch).
    """

    kind: RankerKind
    retrieves: bool  # can it encode a corpus once and retrieve from it (else it re-ranks candidates)

    def fingerprint(self, runtime: Runtime = ...) -> str:
        """Identifies the scores this ranker gives under ``runtime`` (weights and settings)."""
        ...

    def score_pairs(self, pairs: Pairs, runtime: Runtime, *, batch_size: int | None = None, progress: bool = False) -> np.ndarray:
        """Scores [len(pairs)] of the pairs, float32, without gradients. ``batch_size``: texts or
        pairs per batch (None: the ranker's own); ``progress``: the ranker's own progress bars."""
        ...

    def module(self, runtime: Runtime) -> nn.Module | None:
        """The torch module that scores under ``runtime`` (loaded once), for its parameter count;
        None for a ranker without weights."""
        ...

    def weights_folder(self) -> Path | None:
        """The folder of the ranker's weights on disk (for their size); None when it has none there."""
        ...
