"""The bi-encoder student: a :class:`~distillrank.models.bi_encoder.BiEncoder` behind the student protocol."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from distillrank.models.bi_encoder import BiEncoder
from distillrank.ranking import Pairs, RankerKind
from distillrank.runtime import Runtime
from distillrank.students.base import BatchScores, Description, Student


class BiEncoderStudent(Student):
    """Queries and passages encoded independently; a score is the dot product of the embeddings
    (cosine when the encoder normalises). In-batch scores come for free: [B, d] × [P, d]ᵀ."""

    kind = RankerKind.BI_ENCODER
    model_type = BiEncoder
    description = Description(
        "a distilled bi-encoder",
        "sentence-transformers",
        "from sentence_transformers import SentenceTransformer\nmodel = SentenceTransformer(PATH)",
        "modules.json (bi-encoder)",
    )
    retrieves = True
    supports_in_batch = True
    supports_gather = True
    supports_features = True

    @classmethod
    def detect(cls, folder: Path) -> bool:
        """A sentence-transformers folder (``modules.json``)."""
        return (folder / "modules.json").is_file()

    @classmethod
    def load(cls, folder: Path, max_length: int | None = None) -> BiEncoderStudent:
        return cls(BiEncoder.load(folder), source=folder).eval()

    def forward(
        self,
        queries: Sequence[str],
        passages: Sequence[str],
        index: torch.Tensor,
        in_batch: bool = False,
        gather: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> BatchScores:
        q_emb = self.model(list(queries), "query").float()  # [B, d]
        p_emb = self.model(list(passages), "passage").float()  # [P, d]
        if gather is not None:  # this rank's passages -> the global batch's (index refers to those)
            p_emb = gather(p_emb)
        index = index.to(p_emb.device)
        groups = torch.einsum("bd,bld->bl", q_emb, p_emb[index])  # [B, L]
        return BatchScores(groups, q_emb @ p_emb.T if in_batch else None)

    @property
    def embedding_dim(self) -> int:
        return self.model.dim

    def embed(self, texts: Sequence[str], kind: str) -> torch.Tensor:
        """The retrieval embedding itself (normalised for a cosine student)."""
        return self.model(list(texts), kind).float()

    def score_pairs(
        self, pairs: Pairs, runtime: Runtime, *, batch_size: int | None = None, progress: bool = False
    ) -> np.ndarray:
        return self.model.pair_scores(pairs, batch_size or self.batch_size, runtime, progress)

    def encoder(self, runtime: Runtime | None = None) -> BiEncoder:
        """The bi-encoder that embeds a corpus and its queries (the model itself)."""
        return self.model
