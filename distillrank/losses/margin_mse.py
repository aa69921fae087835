"""Margin-MSE."""

from __future__ import annotations

import torch
from torch import nn


class MarginMSELoss(nn.Module):
    """Mean squared error between student and teacher score margins.

    Originally proposed in Hofstätter et al., "Improving Efficient Neural Ranking Models with
    Cross-Architecture Knowledge Distillation" (2020): for a triple (q, p⁺, p⁻),
    ``((s⁺ − s⁻) − (t⁺ − t⁻))²``. Only margins are matched, so teacher and student may score on
    different scales (a shift of all teacher scores by a constant changes nothing). Generalised to one
    positive and n negatives by averaging over the n margins.

    Shapes:
        student: [B, 1 + n] scores, column 0 the positive.
        teacher: [B, 1 + n] scores, same layout.
        labels: ignored (accepted for the common loss signature).
    """

    def forward(
        self, student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        if student.shape != teacher.shape or student.dim() != 2 or student.shape[1] < 2:
            raise ValueError(f"expected student and teacher of shape [B, 1+n], n>=1; got {student.shape}, {teacher.shape}")
        student_margin = student[:, :1] - student[:, 1:]
        teacher_margin = teacher[:, :1] - teacher[:, 1:]
        return ((student_margin - teacher_margin.to(student_margin.dtype)) ** 2).mean()
