"""Dev evaluation during training: re-ranking each dev query's candidates with the student.

This is *re-ranking of a fixed candidate list*, not full retrieval: no corpus is encoded, so it costs
one scoring pass over ~(positives + mined negatives) passages per dev query and can run every few
hundred steps. Its nDCG@10 is an optimistic, relative signal (judged positives are in the candidate
list even when the first stage missed them) — good for early stopping and for choosing the best
checkpoint, not a number to report; the evaluate stage measures the final student properly.

Candidates come from either
* ``train.dev_queries: N`` — N training queries set aside (deterministically, by the seed), their
  mined and scored candidates as they are in ``scores.parquet``; they are then not trained on; or
* ``train.dev_split`` — a judged split of the collection, its candidates the top ``train.dev_depth``
  of the first stage (``mining.method``) run for its queries.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from distillrank import sharding
from distillrank.evaluation.metrics import compute_metrics
from distillrank.ranking import Pairs
from distillrank.runtime import Runtime
from distillrank.sharding import WHOLE, Share
from distillrank.students.base import Student
from distillrank.training.batching import Pools, QueryPool


@dataclass
class DevSet:
    """Dev queries, their candidate lists and judgments.

    queries: qid -> text. candidates: qid -> docids to re-rank. qrels: qid -> docid -> relevance.
    """

    queries: dict[str, str]
    candidates: dict[str, list[str]]
    qrels: dict[str, dict[str, int]]

    def __len__(self) -> int:
        return len(self.queries)


def held_out_count(total: int, fraction: float) -> int:
    """How many of ``total`` training queries ``train.dev_fraction=fraction`` sets aside: the
    fraction rounded to the nearest integer, at least 1 (0 for a fraction of 0)."""
    return max(1, round(fraction * total)) if fraction > 0 else 0


def carve_dev_pools(pools: Pools | list[QueryPool], n: int, seed: int):
    """Split the training pools into (train, dev): ``n`` pools chosen by a seeded permutation
    (columnar :class:`Pools` give two :class:`Pools`, a list two lists).

    The choice depends only on the pools (their order) and the seed, so a rerun (or a resumed run)
    sets aside the same queries.
    """
    if n <= 0:
        return pools, []
    chosen = set(np.random.default_rng(seed).permutation(len(pools))[:n].tolist())
    if isinstance(pools, Pools):
        return (
            pools.take([i for i in range(len(pools)) if i not in chosen]),
            pools.take(sorted(chosen)),
        )
    train = [p for i, p in enumerate(pools) if i not in chosen]
    dev = [p for i, p in enumerate(pools) if i in chosen]
    return train, dev


def dev_from_pools(
    dev_pools: Pools | list[QueryPool],
    query_text: dict[str, str],
    candidates: dict[str, list[str]],
    qrels: dict[str, dict[str, int]],
) -> DevSet:
    """The dev set of carved training queries: every candidate the score stage holds for them."""
    qids = dev_pools.qids.to_pylist() if isinstance(dev_pools, Pools) else [p.qid for p in dev_pools]
    return DevSet(
        queries={q: query_text[q] for q in qids},
        candidates={q: list(candidates[q]) for q in qids},
        qrels={q: dict(qrels.get(q, {})) for q in qids},
    )


def evaluate_dev(
    student: Student,
    dev: DevSet,
    passage_text: Callable[[list[str]], list[str]],
    measures: list[str],
    dist: Share | None = None,
    batch_size: int = 64,
    runtime: Runtime | None = None,
) -> dict[str, float]:
    """Re-rank every dev query's candidates with ``student``; the aggregate ``measures``.

    With several ranks, each scores its share of the queries and the runs are gathered, so every
    rank returns the same metrics (early stopping decides alike everywhere).
    """
    dist = dist or WHOLE
    qids = dist.split(sorted(dev.queries))
    passages = list(dict.fromkeys(d for q in qids for d in dev.candidates[q]))
    slot = {d: i for i, d in enumerate(passages)}
    pair_q = [i for i, q in enumerate(qids) for _ in dev.candidates[q]]
    pair_p = [slot[d] for q in qids for d in dev.candidates[q]]
    run: dict[str, dict[str, float]] = {}
    if pair_q:
        pairs = Pairs([dev.queries[q] for q in qids], passage_text(passages), pair_q, pair_p)
        scores = student.score_pairs(pairs, runtime or Runtime(), batch_size=batch_size)
        for qi, pj, s in zip(pair_q, pair_p, scores.tolist(), strict=True):
            run.setdefault(qids[qi], {})[passages[pj]] = s if math.isfinite(s) else -1e30
    merged: dict[str, dict[str, float]] = {}
    for part in sharding.gather(dist, run):
        merged.update(part)
    qrels = {q: rel for q, rel in dev.qrels.items() if any(v > 0 for v in rel.values())}
    aggregate, _ = compute_metrics(qrels, merged, measures)
    return aggregate
