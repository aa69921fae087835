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

    With ``learn_scale=True`` the student's margins are multiplied by a learned positive factor
    ``exp(log_scale)`` (initialised to 1, trained with the student, never exported) before the
    regression: the student keeps its own score scale and only the *shape* of the teacher's margins
    is matched. A ranking is unchanged by the factor, so the student needs no rescaling afterwards.
    This is for students whose scores live on another scale than the teacher's: a ColBERT student
    sums MaxSim over 32 query tokens (a scale up to 32) where a cosine or min-max normalised
    teacher's margins are below 1, and plain Margin-MSE can only meet them by shrinking its margins.

    Shapes:
        student: [B, 1 + n] scores, column 0 the positive.
        teacher: [B, 1 + n] scores, same layout.
    """

    def __init__(self, learn_scale: bool = False) -> None:
        super().__init__()
        self.learn_scale = bool(learn_scale)
        self.log_scale = nn.Parameter(torch.zeros(())) if self.learn_scale else None

    @property
    def scale(self) -> float:
        """The factor applied to the student's margins (1 without ``learn_scale``)."""
        return 1.0 if self.log_scale is None else float(self.log_scale.detach().exp())

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        if student.shape != teacher.shape or student.dim() != 2 or student.shape[1] < 2:
            raise ValueError(f"expected student and teacher of shape [B, 1+n], n>=1; got {student.shape}, {teacher.shape}")
        student_margin = student[:, :1] - student[:, 1:]
        if self.log_scale is not None:
            student_margin = student_margin * self.log_scale.exp()
        teacher_margin = teacher[:, :1] - teacher[:, 1:]
        return ((student_margin - teacher_margin.to(student_margin.dtype)) ** 2).mean()
