"""Listwise KL divergence."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from distillrank.losses._common import check_positive, check_scores


class KLDivergenceLoss(nn.Module):
    """Listwise KL divergence from the teacher's to the student's softmax over each row.

    Computes ``KL(softmax(t / τ_t) ‖ softmax(s / τ_s)) = Σ_i p_i (log p_i − log q_i)`` per row, with
    ``p = softmax(t / τ_t)`` and ``q = softmax(s / τ_s)``, and averages over the batch. There is no
    ``τ²`` factor. A constant added to a row of student or teacher scores changes nothing; with
    equal temperatures the loss is 0 exactly when the student matches the teacher up to such a shift.

    Originally proposed in Hinton et al., "Distilling the Knowledge in a Neural Network" (2015); used
    listwise for rankers by Tamber et al. (2025) with ``τ_t = 0.3`` and ``τ_s = 0.05``.

    Args:
        teacher_temperature: τ_t, divides the teacher scores (> 0).
        student_temperature: τ_s, divides the student scores (> 0).

    Shapes:
        student: [B, L] scores (the layout of columns does not matter).
        teacher: [B, L] scores, same layout.
    """

    def __init__(self, teacher_temperature: float = 1.0, student_temperature: float = 1.0) -> None:
        super().__init__()
        self.teacher_temperature = check_positive("teacher_temperature", teacher_temperature)
        self.student_temperature = check_positive("student_temperature", student_temperature)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        teacher = check_scores(student, teacher)
        log_p = F.log_softmax(teacher / self.teacher_temperature, dim=1)
        log_q = F.log_softmax(student / self.student_temperature, dim=1)
        return F.kl_div(log_q, log_p, reduction="batchmean", log_target=True)
