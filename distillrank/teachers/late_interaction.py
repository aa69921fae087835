"""A late-interaction (ColBERT) teacher: MaxSim over per-token embeddings."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from distillrank.models.colbert import ColBERTModel
from distillrank.models.half_weights import frozen
from distillrank.models.hub import resolve_model
from distillrank.ranking import Pairs, RankerKind
from distillrank.runtime import Runtime
from distillrank.teachers.base import DEFAULT_RUNTIME, Teacher
from distillrank.workspace import dir_fingerprint


class ColBERTTeacher(Teacher):
    """Scores pairs by ColBERT MaxSim; each distinct query and passage is encoded once.

    Args:
        model: folder or hub id of a ColBERT model: a Stanford checkpoint (``colbert-ir/colbertv2.0``),
            a PyLate folder, or one saved by :class:`ColBERTModel`.
        query_max_length: query length in tokens (``[MASK]``-padded to it).
        passage_max_length: passage truncation length in tokens.
        batch_size: texts per encoding batch.
        pair_batch_size: pairs per MaxSim batch.
        attend_to_expansion_tokens / do_query_expansion / skiplist_words: override the model
            folder's settings (None keeps them).
    """

    kind = RankerKind.LATE_INTERACTION

    def __init__(
        self,
        model: str,
        query_max_length: int = 32,
        passage_max_length: int = 180,
        batch_size: int = 32,
        pair_batch_size: int = 1024,
        attend_to_expansion_tokens: bool | None = None,
        do_query_expansion: bool | None = None,
        skiplist_words: list[str] | None = None,
    ) -> None:
        self.model = model
        self.query_max_length = query_max_length
        self.passage_max_length = passage_max_length
        self.batch_size = batch_size
        self.pair_batch_size = pair_batch_size
        self.attend_to_expansion_tokens = attend_to_expansion_tokens
        self.do_query_expansion = do_query_expansion
        self.skiplist_words = None if skiplist_words is None else list(skiplist_words)
        self._model: ColBERTModel | None = None
        self._precision: str | None = None  # the precision the loaded model's weights are stored for

    def _overrides(self) -> dict:
        return {
            "query_max_length": self.query_max_length,
            "passage_max_length": self.passage_max_length,
            "attend_to_expansion_tokens": self.attend_to_expansion_tokens,
            "do_query_expansion": self.do_query_expansion,
            "skiplist_words": self.skiplist_words,
        }

    def identity(self, runtime: Runtime) -> dict:
        return {"kind": "colbert", "weights": dir_fingerprint(resolve_model(self.model)), **self._overrides()}

    def colbert(self, runtime: Runtime = DEFAULT_RUNTIME) -> ColBERTModel:
        """The loaded model, frozen, on the runtime's device (loaded once per precision: under bf16 /
        fp16 its linear weights, the projection's too, stored in that dtype once —
        :func:`~distillrank.models.half_weights.frozen`, bit-identical to autocast's casts)."""
        if self._model is not None and self._precision != runtime.precision:
            self._model = None  # another precision: load the float weights again
        if self._model is None:
            self._model = frozen(ColBERTModel.load(self.model, **self._overrides()), runtime.precision)
            self._precision = runtime.precision
        return self._model.to(runtime.device)

    def score_pairs(
        self, pairs: Pairs, runtime: Runtime, *, batch_size: int | None = None, progress: bool = False
    ) -> np.ndarray:
        model = self.colbert(runtime)
        batch = batch_size or self.batch_size
        # The lists are de-duplicated by the caller already; equal texts at two indices are merged
        # anyway, so that they are encoded once and always get the same score.
        queries, q_index = _distinct(pairs.queries)
        passages, p_index = _distinct(pairs.passages)
        # Embeddings stay on the device: MaxSim of many pairs is cheap there, costly on a CPU copy.
        on = runtime.device
        q = model.embed(queries, "query", batch, runtime, progress, "teacher: queries", on)
        p = model.embed(passages, "passage", batch, runtime, progress, "teacher: passages", on)
        return ColBERTModel.score_indexed(q, p, q_index[pairs.pair_q], p_index[pairs.pair_p], self.pair_batch_size)

    def module(self, runtime: Runtime) -> ColBERTModel:
        return self.colbert(runtime)

    def weights_folder(self) -> Path:
        return resolve_model(self.model)


def _distinct(texts: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """The distinct texts (first-seen order) and, per input text, the index of its distinct text."""
    first: dict[str, int] = {}
    index = np.fromiter((first.setdefault(t, len(first)) for t in texts), dtype=np.int64, count=len(texts))
    return list(first), index
