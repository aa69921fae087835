"""Training examples from the scored candidates: one query, one positive, n negatives."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa


@dataclass
class QueryPool:
    """One training query's scored candidates."""

    qid: str
    positives: list[tuple[str, float]]  # (docid, teacher score)
    negatives: list[tuple[str, float]]


@dataclass
class Example:
    """A training group: ``docids[0]`` is the positive; teacher scores aligned with ``docids``."""

    qid: str
    docids: list[str]
    teacher: list[float]


def query_pools(scores: pa.Table) -> tuple[list[QueryPool], int]:
    """Group the scores table by query; returns the pools and the number of queries dropped
    (no positive or no negative among the candidates), in first-appearance order.

    Rows whose ``dropped`` column is true (negatives removed by the score stage's de-noising) are
    skipped; a query left without negatives by them counts as dropped. A table without the column
    (written before de-noising existed) keeps every row.
    """
    n = scores.num_rows
    dropped = scores["dropped"].to_pylist() if "dropped" in scores.column_names else [False] * n
    pools: dict[str, QueryPool] = {}
    for qid, docid, label, teacher, skip in zip(
        scores["qid"].to_pylist(),
        scores["docid"].to_pylist(),
        scores["label"].to_pylist(),
        scores["teacher"].to_pylist(),
        dropped,
        strict=True,
    ):
        pool = pools.setdefault(qid, QueryPool(qid, [], []))
        if skip:
            continue
        (pool.positives if label > 0 else pool.negatives).append((docid, float(teacher)))
    usable = [p for p in pools.values() if p.positives and p.negatives]
    return usable, len(pools) - len(usable)


def epoch_examples(pools: list[QueryPool], negatives_per_example: int, rng: np.random.Generator) -> list[Example]:
    """This epoch's examples: each query's negatives reshuffled and split into groups of n, each group
    paired with one of the query's positives (in turn); the examples shuffled.

    Every mined negative is seen once per epoch (a query with fewer than n negatives yields one group
    padded by resampling), and the grouping changes from epoch to epoch.
    """
    n = negatives_per_example
    examples: list[Example] = []
    for pool in pools:
        order = rng.permutation(len(pool.negatives))
        if len(order) < n:
            order = rng.choice(len(pool.negatives), size=n, replace=True)
        groups = [order[i : i + n] for i in range(0, len(order) - n + 1, n)]
        pos_order = rng.permutation(len(pool.positives))
        for g, group in enumerate(groups):
            pos_id, pos_score = pool.positives[pos_order[g % len(pos_order)]]
            negs = [pool.negatives[j] for j in group]
            examples.append(
                Example(pool.qid, [pos_id] + [d for d, _ in negs], [pos_score] + [s for _, s in negs])
            )
    return [examples[i] for i in rng.permutation(len(examples))]
