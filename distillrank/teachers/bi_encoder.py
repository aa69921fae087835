"""A bi-encoder teacher (a sentence-transformers folder or hub id)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from distillrank.models.bi_encoder import BiEncoder
from distillrank.models.hub import resolve_model
from distillrank.runtime import autocast
from distillrank.workspace import dir_fingerprint, fingerprint


class BiEncoderTeacher:
    """Scores pairs by the similarity of independently encoded query and passage.

    Args:
        model: folder or hub id (sentence-transformers format, or a plain HF encoder).
        query_max_length / passage_max_length: truncation lengths in tokens.
        batch_size: texts per encoding batch.
        pooling / similarity: override what the model folder says (None keeps it).
    """

    kind = "bi_encoder"

    def __init__(
        self,
        model: str,
        query_max_length: int = 64,
        passage_max_length: int = 256,
        batch_size: int = 64,
        pooling: str | None = None,
        similarity: str | None = None,
    ) -> None:
        self.model = model
        self.query_max_length = query_max_length
        self.passage_max_length = passage_max_length
        self.batch_size = batch_size
        self.pooling = pooling
        self.similarity = similarity
        self._encoder: BiEncoder | None = None

    def fingerprint(self) -> str:
        return fingerprint(
            {
                "kind": self.kind,
                "weights": dir_fingerprint(resolve_model(self.model)),
                "query_max_length": self.query_max_length,
                "passage_max_length": self.passage_max_length,
                "pooling": self.pooling,
                "similarity": self.similarity,
            }
        )

    def encoder(self, device: torch.device) -> BiEncoder:
        """The loaded bi-encoder, frozen, on ``device`` (loaded once)."""
        if self._encoder is None:
            self._encoder = BiEncoder.load(
                self.model,
                pooling=self.pooling,
                similarity=self.similarity,
                query_max_length=self.query_max_length,
                passage_max_length=self.passage_max_length,
            ).eval()
            self._encoder.requires_grad_(False)
        return self._encoder.to(device)

    def score(
        self,
        queries: Sequence[str],
        passages: Sequence[str],
        pair_q: np.ndarray,
        pair_p: np.ndarray,
        device: torch.device,
        precision: str,
        progress: bool = True,
        *,
        qids: Sequence[str] | None = None,
        docids: Sequence[str] | None = None,
    ) -> np.ndarray:
        encoder = self.encoder(device)
        amp = lambda: autocast(device, precision)  # noqa: E731
        q_emb = encoder.encode(queries, "query", self.batch_size, amp, progress, "teacher: queries")
        p_emb = encoder.encode(passages, "passage", self.batch_size, amp, progress, "teacher: passages")
        scores = encoder.score(q_emb[torch.as_tensor(pair_q)], p_emb[torch.as_tensor(pair_p)])
        return scores.numpy().astype(np.float32)
