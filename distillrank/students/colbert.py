"""The ColBERT student: late interaction (Khattab & Zaharia 2020; ColBERTv2, Santhanam et al. 2022).

Token embeddings projected to a small dimension and L2-normalised; a score is MaxSim summed over the
query tokens (:class:`distillrank.models.colbert.ColBERTModel`). Like a bi-encoder, queries and
passages are encoded independently, so the [B, P] in-batch matrix costs only the MaxSim products.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from distillrank.models.colbert import SETTINGS_FILE, ColBERTModel
from distillrank.ranking import Pairs, RankerKind
from distillrank.runtime import Runtime
from distillrank.students.base import BatchScores, Description, Student


def is_colbert_folder(path: str | Path) -> bool:
    """Whether ``path`` is a ColBERT folder saved by :meth:`ColBERTModel.save`."""
    return (Path(path) / SETTINGS_FILE).is_file()


class ColBERTStudent(Student):
    """MaxSim over token embeddings; ``forward`` gives [B, L] groups and, asked, the [B, P] matrix."""

    kind = RankerKind.LATE_INTERACTION
    model_type = ColBERTModel
    description = Description(
        "a distilled ColBERT (late interaction)",
        "distillrank",
        "from distillrank.students import load_student\nstudent = load_student(PATH)",
        "a ColBERT folder",
    )
    supports_in_batch = True
    supports_features = True

    def forward(
        self, queries: Sequence[str], passages: Sequence[str], index: torch.Tensor, in_batch: bool = False
    ) -> BatchScores:
        q_emb, q_mask = self.model.encode(list(queries), "query")  # [B, Tq, d], [B, Tq]
        p_emb, p_mask = self.model.encode(list(passages), "passage")  # [P, Tp, d], [P, Tp]
        if in_batch:
            matrix = ColBERTModel.score_matrix(q_emb, q_mask, p_emb, p_mask).float()  # [B, P]
            return BatchScores(torch.gather(matrix, 1, index.to(matrix.device)), matrix)
        index = index.to(p_emb.device)
        b, n = index.shape
        flat = index.reshape(-1)
        groups = ColBERTModel.score_pairs(
            q_emb.repeat_interleave(n, dim=0),
            q_mask.repeat_interleave(n, dim=0),
            p_emb[flat],
            p_mask[flat],
        )
        return BatchScores(groups.float().view(b, n))

    @classmethod
    def detect(cls, folder: Path) -> bool:
        """A folder with our ColBERT metadata (:func:`is_colbert_folder`)."""
        return is_colbert_folder(folder)

    @classmethod
    def load(cls, folder: Path, max_length: int | None = None) -> ColBERTStudent:
        return cls(ColBERTModel.load(folder), source=folder).eval()

    @property
    def embedding_dim(self) -> int:
        return self.model.dim

    def embed(self, texts: Sequence[str], kind: str) -> torch.Tensor:
        """The mean of the text's scoring token embeddings [N, dim]: one vector per text for feature
        distillation (the loss projects it to the teacher's width)."""
        emb, mask = self.model.encode(list(texts), kind)
        return emb.sum(1) / mask.sum(1, keepdim=True).clamp(min=1).to(emb.dtype)

    def score_pairs(
        self, pairs: Pairs, runtime: Runtime, *, batch_size: int | None = None, progress: bool = False
    ) -> np.ndarray:
        batch = batch_size or self.batch_size
        q = self.model.embed(pairs.queries, "query", batch, runtime, progress)
        p = self.model.embed(pairs.passages, "passage", batch, runtime, progress)
        return ColBERTModel.score_indexed(q, p, pairs.pair_q, pairs.pair_p, batch)
