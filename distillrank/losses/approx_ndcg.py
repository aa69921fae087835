"""ApproxNDCG: NDCG with sigmoid-smoothed ranks."""

from __future__ import annotations

import torch
from torch import nn

from distillrank.losses._common import check_positive, check_scores, rank_gains
from distillrank.losses.lambdaloss import ideal_dcg


class ApproxNDCGLoss(nn.Module):
    """``1 − ApproxNDCG``: NDCG of the student's ranking with each rank replaced by a smooth estimate.

    Smoothed rank of item i: ``π̂_i = 1 + Σ_{j ≠ i} sigmoid((s_j − s_i) / T)``. Per row,
    ``ApproxNDCG = Σ_i G_i / log2(1 + π̂_i) / maxDCG`` with maxDCG the ideal DCG of the row. Gains are
    those of :class:`~distillrank.losses.LambdaLoss`: ``G_i = 2^{L − r_i} − 1`` with ``r_i`` the
    1-based rank by descending teacher score (ties share the best rank), so the loss depends on the
    teacher only through its order. The loss is ``1 − mean_rows(ApproxNDCG)``; adding a constant to a
    row of student scores changes nothing.

    Originally proposed in Qin, Liu and Li, "A General Approximation Framework for Direct
    Optimization of Information Retrieval Measures" (2010), whose ``α`` is ``1 / T``.

    Args:
        temperature: T, smooths the rank indicator (> 0; smaller is closer to the true ranks).

    Shapes:
        student: [B, L] scores (the layout of columns does not matter).
        teacher: [B, L] scores, same layout.
    """

    def __init__(self, temperature: float = 1.0) -> None:
        super().__init__()
        self.temperature = check_positive("temperature", temperature)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        teacher = check_scores(student, teacher)
        gains = rank_gains(teacher)
        # [B, i, j]: sigmoid((s_j − s_i) / T); the diagonal is sigmoid(0) = 1/2, removed below.
        beats = torch.sigmoid((student.unsqueeze(1) - student.unsqueeze(2)) / self.temperature)
        approx_ranks = 0.5 + beats.sum(dim=2)
        dcg = (gains / torch.log2(1.0 + approx_ranks)).sum(dim=1)
        return 1.0 - (dcg / ideal_dcg(gains)).mean()
