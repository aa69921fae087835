"""The cross-encoder student: [query; passage] pairs through a one-logit sequence-classification head.

Each of a batch's B × L (query, candidate) pairs is one forward pass, so there are no in-batch
scores: a re-ranker student, as in Hofstätter et al. 2020 (Margin-MSE for BERT-CAT) and the listwise
distillation of cross-encoders (Schlatt et al. 2025, Rank-DistiLLM). Exported as a Hugging Face
folder that ``sentence_transformers.CrossEncoder(path)`` loads.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from distillrank.ranking import Pairs, RankerKind
from distillrank.runtime import Runtime
from distillrank.students.base import BatchScores, Student, check_in_batch


class CrossEncoderStudent(Student):
    """Scores each (query, passage) pair jointly; ``forward`` gives [B, L] group scores only."""

    kind = RankerKind.CROSS_ENCODER
    supports_in_batch = False

    def forward(
        self, queries: Sequence[str], passages: Sequence[str], index: torch.Tensor, in_batch: bool = False
    ) -> BatchScores:
        check_in_batch(self, in_batch)
        rows = index.cpu().tolist()
        pair_q = [queries[b] for b, row in enumerate(rows) for _ in row]
        pair_p = [passages[j] for row in rows for j in row]
        scores = self.model(pair_q, pair_p).float()  # [B * L]
        return BatchScores(scores.view(len(rows), -1))

    def score_pairs(
        self, pairs: Pairs, runtime: Runtime, *, batch_size: int | None = None, progress: bool = False
    ) -> np.ndarray:
        was_training = self.training
        try:
            return self.model.predict(
                pairs.query_texts(), pairs.passage_texts(), batch_size or self.batch_size, runtime, progress
            )
        finally:
            self.train(was_training)
