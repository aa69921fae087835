"""The texts of feature distillation and the teacher's embeddings of them.

Feature distillation (:mod:`distillrank.losses.feature`) shows the student texts and asks for the
teacher's embeddings of them. The texts are the collection itself — every passage, encoded as a
passage — and the queries there are (training queries, synthetic queries), encoded as queries. No
label is needed, so a collection without a single training query still trains a student.

A :class:`FeatureSet` numbers its texts ``0 … len-1``: queries first, then passages (by corpus row).
Each epoch visits them in a fresh seeded order, ``batch_size`` at a time (:meth:`FeatureSet.batches`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from distillrank.errors import DistillrankError
from distillrank.runtime import Runtime
from distillrank.workspace import atomic_path, cache_entry, drop_unreadable, fingerprint, seal

log = logging.getLogger(__name__)
TEXT_EMBEDDINGS_VERSION = 1  # bumped when the stored layout or the encoding changes


@dataclass
class FeatureBatch:
    """Texts of one feature batch, split by how they are encoded, and their teacher targets.

    queries / passages: the texts (queries first in ``targets``), targets: [len(q) + len(p), d_t].
    """

    queries: list[str]
    passages: list[str]
    targets: torch.Tensor

    def __len__(self) -> int:
        return len(self.queries) + len(self.passages)


class FeatureSet:
    """Queries and passages with the teacher's embeddings of them.

    Args:
        query_texts: the query texts (may be empty).
        query_targets: [len(query_texts), d] the teacher's query embeddings.
        passage_texts: corpus rows -> passage texts (one read per batch).
        passage_targets: [n_passages, d] the teacher's passage embeddings (a memmap is fine: only
            the rows of a batch are read).
        passage_rows: which corpus rows take part (None: all ``len(passage_targets)``).

    Raises:
        DistillrankError: no text at all, or targets whose shapes do not match the texts.
    """

    def __init__(
        self,
        query_texts: Sequence[str],
        query_targets: np.ndarray,
        passage_texts: Callable[[Sequence[int]], list[str]],
        passage_targets: np.ndarray,
        passage_rows: np.ndarray | None = None,
    ) -> None:
        self.query_texts = list(query_texts)
        query_targets = np.asarray(query_targets, dtype=np.float32)
        if not self.query_texts:
            query_targets = np.empty((0, passage_targets.shape[1] if passage_targets.ndim == 2 else 0), np.float32)
        elif query_targets.shape[0] != len(self.query_texts):
            raise DistillrankError(
                f"{len(self.query_texts)} query texts but {query_targets.shape[0]} query embeddings"
            )
        self.query_targets = query_targets
        self.passage_texts = passage_texts
        self.passage_targets = passage_targets
        rows = np.arange(len(passage_targets)) if passage_rows is None else np.asarray(passage_rows, dtype=np.int64)
        self.passage_rows = rows
        if not len(self):
            raise DistillrankError("feature distillation has no text to learn from: no query and no passage")
        dims = {a.shape[1] for a in (self.query_targets, passage_targets) if len(a)}
        if len(dims) != 1:
            raise DistillrankError(f"the teacher's query and passage embeddings differ in width: {sorted(dims)}")
        self.dim = dims.pop()

    def __len__(self) -> int:
        return len(self.query_texts) + len(self.passage_rows)

    @property
    def n_queries(self) -> int:
        return len(self.query_texts)

    def batch(self, ids: Sequence[int]) -> FeatureBatch:
        """The texts and targets of the feature ids ``ids`` (queries first, each group in id order)."""
        ids = np.asarray(ids, dtype=np.int64)
        q = np.sort(ids[ids < self.n_queries])
        p_rows = np.sort(self.passage_rows[ids[ids >= self.n_queries] - self.n_queries])
        parts = [self.query_targets[q]]
        if len(p_rows):
            parts.append(np.asarray(self.passage_targets[p_rows], dtype=np.float32))
        return FeatureBatch(
            [self.query_texts[i] for i in q],
            self.passage_texts(p_rows.tolist()) if len(p_rows) else [],
            torch.from_numpy(np.ascontiguousarray(np.concatenate(parts), dtype=np.float32)),
        )

    def n_batches(self, batch_size: int) -> int:
        return -(-len(self) // batch_size)

    def batches(self, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
        """One epoch's batches of feature ids: a seeded permutation cut into ``batch_size`` pieces."""
        order = rng.permutation(len(self))
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def iter_texts(batch: FeatureBatch) -> Iterator[tuple[str, list[str]]]:
    """``("query", texts)`` and ``("passage", texts)`` for the non-empty parts of ``batch``."""
    if batch.queries:
        yield "query", batch.queries
    if batch.passages:
        yield "passage", batch.passages


def cached_text_embeddings(
    encoder,
    texts: Sequence[str],
    kind: str,
    cache_root: Path,
    model_fp: str,
    batch_size: int,
    runtime: Runtime,
    name: str = "teacher embeddings",
    progress: bool = True,
) -> np.ndarray:
    """Embeddings [len(texts), dim] of short texts (queries) by a bi-encoder ``encoder``, from the
    workspace cache, encoded and cached on a miss. Keyed by the model, the texts themselves, ``kind``
    and the encoding settings; stored as ``<cache_root>/embeddings/texts/<key>.npy``, written to a
    temporary name and renamed. (Corpus embeddings use the block-wise memmap of
    :func:`distillrank.evaluation.dense.cached_corpus_embeddings`.)
    """
    settings = {**encoder.settings(), "kind": kind, "precision": runtime.precision, "version": TEXT_EMBEDDINGS_VERSION}
    key = fingerprint({"model": model_fp, "settings": settings, "texts": list(texts)})
    path = Path(cache_root) / "embeddings" / "texts" / f"{model_fp[:16]}-{key[:24]}.npy"
    what = f"{name}: cached {kind} embeddings"
    with cache_entry(path, what) as present:  # locked while checked and encoded
        if present:
            try:
                matrix = np.load(path, allow_pickle=False)
                if matrix.shape == (len(texts), encoder.dim):
                    log.info("%s: %d %s embeddings reused from %s", name, len(texts), kind, path)
                    return matrix
                log.warning("%s: cached embeddings %s have shape %s, re-encoding", name, path, matrix.shape)
            except (OSError, ValueError) as err:
                drop_unreadable(path, what, err)
        encoder = encoder.to(runtime.device).eval()
        emb = encoder.encode(list(texts), kind, batch_size, runtime, progress, f"{name}: {kind}s")
        matrix = emb.numpy().astype(np.float32)
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.save(f, matrix, allow_pickle=False)
        seal(path)
        return matrix
