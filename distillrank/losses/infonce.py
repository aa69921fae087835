"""InfoNCE, optionally with teacher-denoised negatives."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from distillrank.losses._common import check_positive, check_scores


class InfoNCELoss(nn.Module):
    """Cross-entropy of the positive (column 0) against the row's negatives, on student scores / τ.

    Per row: ``−s_0/τ + log Σ_j exp(s_j/τ)``, averaged over the batch. With ``false_negative_margin =
    m`` set, negatives the teacher scores close to or above the positive — ``t_j ≥ t_0 − m`` — are
    treated as likely false negatives and left out of the sum (their logits are set to −inf); the
    positive is always kept, so a row whose negatives are all removed contributes 0. Adding a
    constant to a row of student or teacher scores changes nothing.

    Originally proposed in van den Oord et al., "Representation Learning with Contrastive Predictive
    Coding" (2018), and for dense retrieval in Karpukhin et al., "Dense Passage Retrieval for
    Open-Domain Question Answering" (2020); the teacher-based removal of false negatives follows the
    de-noising of hard negatives with a cross-encoder (e.g. RocketQA, Qu et al. 2021).

    Args:
        temperature: τ, divides the student scores (> 0).
        false_negative_margin: m; ``None`` keeps every negative.

    Shapes:
        student: [B, 1 + n] scores, column 0 the positive.
        teacher: [B, 1 + n] scores, same layout (only used with ``false_negative_margin``).
        labels: ignored (accepted for the common loss signature).
    """

    def __init__(self, temperature: float = 0.05, false_negative_margin: float | None = None) -> None:
        super().__init__()
        self.temperature = check_positive("temperature", temperature)
        self.false_negative_margin = None if false_negative_margin is None else float(false_negative_margin)

    def forward(
        self, student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        teacher = check_scores(student, teacher, labels)
        logits = student / self.temperature
        if self.false_negative_margin is not None:
            drop = teacher >= teacher[:, :1] - self.false_negative_margin
            drop[:, 0] = False
            logits = logits.masked_fill(drop, float("-inf"))
        target = torch.zeros(student.shape[0], dtype=torch.long, device=student.device)
        return F.cross_entropy(logits, target)
