"""ListNet (top-one probabilities)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from distillrank.losses._common import check_positive, check_scores


class ListNetLoss(nn.Module):
    """Cross-entropy between the teacher's and the student's top-one probabilities.

    Per row: ``−Σ_i softmax(t / τ)_i · log softmax(s)_i``, averaged over the batch. It differs from
    :class:`~distillrank.losses.KLDivergenceLoss` (with ``student_temperature = 1``) only by the
    teacher's entropy, a constant for the student. Adding a constant to a row of student or teacher
    scores changes nothing.

    Originally proposed in Cao et al., "Learning to Rank: From Pairwise Approach to Listwise Approach"
    (2007).

    Args:
        temperature: τ, divides the teacher scores (> 0).

    Shapes:
        student: [B, L] scores (the layout of columns does not matter).
        teacher: [B, L] scores, same layout.
    """

    def __init__(self, temperature: float = 1.0) -> None:
        super().__init__()
        self.temperature = check_positive("temperature", temperature)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        teacher = check_scores(student, teacher)
        target = F.softmax(teacher / self.temperature, dim=1)
        return -(target * F.log_softmax(student, dim=1)).sum(dim=1).mean()
