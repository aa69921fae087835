"""The student protocol: what the training loop, the dev evaluation and the evaluate stage need.

A :class:`Student` wraps one model (a :class:`~distillrank.models.bi_encoder.BiEncoder`, a
:class:`~distillrank.models.cross_encoder.CrossEncoderModel`, a ColBERT model) as an ``nn.Module``
(``self.model``), so ``train()``, ``eval()``, ``to()``, ``parameters()`` and ``state_dict()`` reach
the wrapped weights. Its ``forward`` is the training-time scoring of a batch:

* ``queries``: B query texts;
* ``passages``: the P distinct passage texts of the batch (each encoded once);
* ``index``: a LongTensor [B, L] — row b's list (1 positive + n negatives) as positions in
  ``passages``;
* ``in_batch``: also return the [B, P] matrix of every query against every distinct passage of the
  batch (only for students with ``supports_in_batch``: bi-encoders and late interaction; a
  cross-encoder would have to score B × P pairs).

It returns :class:`BatchScores`: ``groups`` [B, L] and ``matrix`` [B, P] or None, differentiable.
Making this the ``forward`` keeps every student usable under ``torch.nn.parallel`` wrappers.

:meth:`Student.rerank_scores` scores arbitrary (query, passage) pairs without gradients: the dev
evaluation and the evaluate stage re-rank candidates with it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from distillrank.runtime import Runtime


@dataclass
class BatchScores:
    """Student scores of a training batch.

    groups: [B, L] — row b's scores of its own list (column 0 the positive).
    matrix: [B, P] — every query against every distinct passage of the batch, or None.
    """

    groups: torch.Tensor
    matrix: torch.Tensor | None = None


class Student(nn.Module):
    """Base class of the student adapters (see the module docstring for the protocol)."""

    kind: str = ""  # bi_encoder | cross_encoder | colbert: the folder format of ``save``
    supports_in_batch: bool = False
    supports_features: bool = False  # has one embedding per text (feature distillation)

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def forward(
        self, queries: Sequence[str], passages: Sequence[str], index: torch.Tensor, in_batch: bool = False
    ) -> BatchScores:
        raise NotImplementedError

    @property
    def embedding_dim(self) -> int:
        """The width of :meth:`embed`'s vectors."""
        raise NotImplementedError

    def embed(self, texts: Sequence[str], kind: str) -> torch.Tensor:
        """One differentiable embedding [len(texts), embedding_dim] per text (``kind``: ``query`` or
        ``passage``), the vector feature distillation regresses onto the teacher's. Only students with
        ``supports_features``."""
        raise NotImplementedError

    def rerank_scores(
        self,
        queries: Sequence[str],
        passages: Sequence[str],
        pair_q: Sequence[int] | np.ndarray,
        pair_p: Sequence[int] | np.ndarray,
        batch_size: int = 64,
        runtime: Runtime | None = None,
    ) -> np.ndarray:
        """Scores [len(pair_q)] (float32) of the pairs ``(queries[pair_q[i]], passages[pair_p[i]])``.

        Inference only (no gradients); the train/eval mode is restored afterwards.
        """
        raise NotImplementedError

    def save(self, path: str | Path, model_card: str | None = None) -> Path:
        """Export the trained model (format per ``kind``), atomically."""
        return self.model.save(path, model_card=model_card)


def check_in_batch(student: Student, in_batch: bool) -> None:
    """Fail clearly when a loss asks for in-batch scores a student cannot give."""
    if in_batch and not student.supports_in_batch:
        from distillrank.errors import ConfigError

        raise ConfigError(
            f"the loss needs in-batch negatives, which a {student.kind} student cannot score "
            "(it would have to score every query with every passage of the batch); "
            "use a loss without in-batch negatives (e.g. loss.in_batch_negatives=false for infonce)"
        )
