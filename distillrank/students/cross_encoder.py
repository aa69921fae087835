"""The cross-encoder student: [query; passage] pairs through a one-logit sequence-classification head.

Each of a batch's B × L (query, candidate) pairs is one forward pass, so there are no in-batch
scores: a re-ranker student, as in Hofstätter et al. 2020 (Margin-MSE for BERT-CAT) and the listwise
distillation of cross-encoders (Schlatt et al. 2025, Rank-DistiLLM). Exported as a Hugging Face
folder that ``sentence_transformers.CrossEncoder(path)`` loads.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from distillrank.models.cross_encoder import CrossEncoderModel
from distillrank.ranking import Pairs, RankerKind
from distillrank.runtime import Runtime
from distillrank.students.base import BatchScores, Description, Student, check_in_batch


class CrossEncoderStudent(Student):
    """Scores each (query, passage) pair jointly; ``forward`` gives [B, L] group scores only."""

    kind = RankerKind.CROSS_ENCODER
    model_type = CrossEncoderModel
    description = Description(
        "a distilled cross-encoder (re-ranker)",
        "sentence-transformers",
        "from sentence_transformers import CrossEncoder\nmodel = CrossEncoder(PATH)\n"
        "scores = model.predict([(query, passage), ...])",
        "a config.json of a *ForSequenceClassification model (cross-encoder)",
    )
    supports_in_batch = False

    @classmethod
    def detect(cls, folder: Path) -> bool:
        """A Hugging Face sequence-classification folder."""
        config = folder / "config.json"
        if not config.is_file():
            return False
        architectures = json.loads(config.read_text(encoding="utf-8")).get("architectures") or []
        return any(a.endswith("ForSequenceClassification") for a in architectures)

    @classmethod
    def load(cls, folder: Path, max_length: int | None = None) -> CrossEncoderStudent:
        return cls(CrossEncoderModel.load(folder, max_length or 512), source=folder).eval()

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
