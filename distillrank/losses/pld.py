"""PLD: Plackett-Luce distillation."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from distillrank.losses._common import check_positive, check_scores
from distillrank.losses.listmle import plackett_luce_terms


class PLDLoss(nn.Module):
    """Confidence-weighted Plackett-Luce likelihood of the teacher-optimal permutation.

    Variant implemented (the paper's classification loss, with the positive in the role of the true
    class): for each row let ``π`` be the positive (column 0) first, then the other items by
    descending teacher score (ties keep column order) — whatever the teacher thinks of the positive.
    With weights ``α = softmax(t / T)`` over the row (they sum to 1), the loss of a row is

        ``Σ_{k=1}^{L} α_{π_k} · [log Σ_{l=k}^{L} exp(s_{π_l}) − s_{π_k}]``,

    i.e. each position's Plackett-Luce choice term is weighted by the teacher's tempered softmax
    probability of the item chosen there; student scores are used untempered. Rows are averaged
    over the batch. Adding a constant to a row of student or teacher scores changes nothing; the
    loss is convex in the student scores.

    Originally proposed in Bassam, Zhu and Bian, "PLD: A Choice-Theoretic List-Wise Knowledge
    Distillation" (Plackett-Luce Distillation, 2025).

    Args:
        temperature: T, divides the teacher scores in the weights (> 0).

    Shapes:
        student: [B, 1 + n] scores, column 0 the positive.
        teacher: [B, 1 + n] scores, same layout.
    """

    def __init__(self, temperature: float = 1.0) -> None:
        super().__init__()
        self.temperature = check_positive("temperature", temperature)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        teacher = check_scores(student, teacher)
        negatives = torch.sort(teacher[:, 1:], dim=1, descending=True, stable=True).indices + 1
        positive = torch.zeros_like(negatives[:, :1])
        order = torch.cat([positive, negatives], dim=1)
        weights = F.softmax(teacher / self.temperature, dim=1).gather(1, order)
        terms = plackett_luce_terms(student.gather(1, order))
        return (weights * terms).sum(dim=1).mean()
