"""Feature (embedding-level) distillation: the student's embeddings regress the teacher's.

A ranking loss teaches the student the teacher's *scores* on a few mined pairs per training query;
a feature loss teaches it the teacher's *representation* of every text it is shown — every passage
of the collection, the training queries, synthetic queries — without a single label. This is the
distillation of Reimers & Gurevych (2020, "Making monolingual sentence embeddings multilingual using
knowledge distillation", sentence-transformers' ``MSELoss`` model distillation: a 2-of-12-layer
student keeps 97.5% on STSb) applied to a retrieval collection, and the final-layer half of LEAD
(Sun et al. 2022, layer-wise distillation of a dense retriever).

The loss sees a :class:`Features` batch — student embeddings [F, d_s] and the teacher's embeddings
of the same texts [F, d_t] — and returns::

    mse_weight · mean_i ||P(s_i) − t_i||² / d_t  +  cosine_weight · mean_i (1 − cos(P(s_i), t_i))

where ``P`` is a learned linear projection d_s → d_t when the widths differ (``projection=auto``) and
the identity otherwise. The projection lives in the loss, is trained with the student, and is not
exported: the student keeps its own width. The MSE term is averaged over dimensions as
``torch.nn.MSELoss`` does (so it is comparable across widths); on unit vectors it equals
``(2 − 2 cos) / d_t``, which is why the cosine term is the stronger signal for cosine students.

It combines with any ranking loss in :class:`~distillrank.losses.WeightedSum`; alone it trains a
student on the collection's texts with no query and no label (``loss=feature``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

PROJECTIONS = ("auto", "always", "never")


@dataclass
class Features:
    """A batch of feature-distillation targets.

    student: [F, d_s] student embeddings of F texts (differentiable).
    teacher: [F, d_t] the teacher's embeddings of the same texts (constants).
    """

    student: torch.Tensor
    teacher: torch.Tensor


class FeatureDistillationLoss(nn.Module):
    """``mse_weight · MSE(P(s), t) + cosine_weight · (1 − cos(P(s), t))`` over a :class:`Features` batch.

    Args:
        mse_weight: weight of the mean squared error (averaged over dimensions and texts).
        cosine_weight: weight of the mean cosine distance.
        projection: ``auto`` — a learned ``nn.Linear(d_s, d_t)`` only when the widths differ;
            ``always`` — one even at equal widths; ``never`` — fail when the widths differ.

    Call :meth:`setup` with both widths before training (the training loop does), so the projection
    exists before the optimizer collects parameters. Called without features (a batch with only
    ranking scores), the loss is 0.

    Raises:
        ValueError: negative or all-zero weights, an unknown ``projection``, or widths that differ
            with ``projection=never``.
    """

    uses_features = True

    def __init__(self, mse_weight: float = 1.0, cosine_weight: float = 1.0, projection: str = "auto") -> None:
        super().__init__()
        if mse_weight < 0 or cosine_weight < 0 or mse_weight + cosine_weight <= 0:
            raise ValueError(f"mse_weight and cosine_weight must be >= 0, not both 0; got {mse_weight}, {cosine_weight}")
        if projection not in PROJECTIONS:
            raise ValueError(f"projection={projection!r}; expected one of {PROJECTIONS}")
        self.mse_weight = float(mse_weight)
        self.cosine_weight = float(cosine_weight)
        self.projection_mode = projection
        self.projection: nn.Module | None = None
        self.dims: tuple[int, int] | None = None

    def setup(self, student_dim: int, teacher_dim: int) -> None:
        """Create the projection for ``student_dim`` → ``teacher_dim`` when one is needed."""
        if self.dims == (student_dim, teacher_dim):
            return
        differ = student_dim != teacher_dim
        if differ and self.projection_mode == "never":
            raise ValueError(
                f"the student's embeddings have {student_dim} dimensions and the teacher's {teacher_dim}; "
                "feature distillation needs loss projection=auto to map one onto the other"
            )
        if differ or self.projection_mode == "always":
            self.projection = nn.Linear(student_dim, teacher_dim)
            if not differ:  # start at the identity: equal widths need no mapping at first
                nn.init.eye_(self.projection.weight)
                nn.init.zeros_(self.projection.bias)
        else:
            self.projection = None
        self.dims = (student_dim, teacher_dim)

    def forward(
        self,
        student: torch.Tensor | None = None,
        teacher: torch.Tensor | None = None,
        features: Features | None = None,
    ) -> torch.Tensor:
        if features is None:
            device = student.device if student is not None else None
            return torch.zeros((), device=device)
        s = features.student.float()
        t = features.teacher.to(s.device).float()
        if self.projection is not None:
            s = self.projection(s)
        if s.shape != t.shape:
            raise ValueError(
                f"student embeddings {tuple(s.shape)} and teacher embeddings {tuple(t.shape)} differ; "
                "call setup(student_dim, teacher_dim) first"
            )
        loss = s.new_zeros(())
        if self.mse_weight:
            loss = loss + self.mse_weight * nn.functional.mse_loss(s, t)
        if self.cosine_weight:
            loss = loss + self.cosine_weight * (1 - nn.functional.cosine_similarity(s, t, dim=-1)).mean()
        return loss
