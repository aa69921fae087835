"""The bi-encoder student: a :class:`~distillrank.models.bi_encoder.BiEncoder` behind the student protocol."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from distillrank.models.bi_encoder import BiEncoder
from distillrank.runtime import Runtime
from distillrank.students.base import BatchScores, Student


class BiEncoderStudent(Student):
    """Queries and passages encoded independently; a score is the dot product of the embeddings
    (cosine when the encoder normalises). In-batch scores come for free: [B, d] × [P, d]ᵀ."""

    kind = "bi_encoder"
    supports_in_batch = True
    supports_features = True

    def __init__(self, model: BiEncoder) -> None:
        super().__init__(model)

    def forward(
        self, queries: Sequence[str], passages: Sequence[str], index: torch.Tensor, in_batch: bool = False
    ) -> BatchScores:
        q_emb = self.model(list(queries), "query").float()  # [B, d]
        p_emb = self.model(list(passages), "passage").float()  # [P, d]
        index = index.to(p_emb.device)
        groups = torch.einsum("bd,bld->bl", q_emb, p_emb[index])  # [B, L]
        return BatchScores(groups, q_emb @ p_emb.T if in_batch else None)

    @property
    def embedding_dim(self) -> int:
        return self.model.dim

    def embed(self, texts: Sequence[str], kind: str) -> torch.Tensor:
        """The retrieval embedding itself (normalised for a cosine student)."""
        return self.model(list(texts), kind).float()

    def rerank_scores(
        self,
        queries: Sequence[str],
        passages: Sequence[str],
        pair_q: Sequence[int] | np.ndarray,
        pair_p: Sequence[int] | np.ndarray,
        batch_size: int = 64,
        runtime: Runtime | None = None,
    ) -> np.ndarray:
        q_emb = self.model.encode(list(queries), "query", batch_size=batch_size, runtime=runtime)
        p_emb = self.model.encode(list(passages), "passage", batch_size=batch_size, runtime=runtime)
        q_idx = torch.as_tensor(np.asarray(pair_q, dtype=np.int64))
        p_idx = torch.as_tensor(np.asarray(pair_p, dtype=np.int64))
        return (q_emb[q_idx] * p_emb[p_idx]).sum(-1).numpy().astype(np.float32)
