"""RankNet: pairwise logistic loss over the teacher's preferences."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from distillrank.losses._common import check_scores, competition_ranks

Weighting = Literal["rank", "score_diff"]
WEIGHTINGS = ("rank", "score_diff")


class RankNetLoss(nn.Module):
    """Pairwise logistic loss on every pair the teacher orders.

    For each row and every pair (i, j) with ``t_i > t_j`` the pair loss is
    ``log(1 + exp(−(s_i − s_j)))``; pairs the teacher ties are skipped. The result is the weighted mean
    ``Σ w_ij · loss_ij / Σ w_ij`` over the valid pairs of the whole batch (0 when there is none), with

    - ``weighting=None``: ``w_ij = 1``;
    - ``weighting="rank"``: ``w_ij = 1 / (r_i + r_j)``, ``r`` the 1-based teacher ranks (ties share the
      best rank), as in FIRST (Reddy et al. 2024);
    - ``weighting="score_diff"``: ``w_ij = |t_i − t_j|``.

    With ``None`` or ``"rank"`` the loss depends on the teacher only through its order, so any strictly
    increasing change of the teacher scores leaves it unchanged. Adding a constant to a row of student
    scores changes nothing.

    Originally proposed in Burges et al., "Learning to Rank using Gradient Descent" (2005); used to
    distil LLM rankers in Rank-DistiLLM (Schlatt et al. 2025).

    Args:
        weighting: ``None``, ``"rank"`` or ``"score_diff"``.

    Shapes:
        student: [B, L] scores (the layout of columns does not matter).
        teacher: [B, L] scores, same layout.
    """

    def __init__(self, weighting: Weighting | None = None) -> None:
        super().__init__()
        if weighting is not None and weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be None or one of {WEIGHTINGS}; got {weighting!r}")
        self.weighting = weighting

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        teacher = check_scores(student, teacher)
        # [B, i, j] with i the item the teacher prefers.
        valid = teacher.unsqueeze(2) > teacher.unsqueeze(1)
        pair_loss = F.softplus(-(student.unsqueeze(2) - student.unsqueeze(1)))
        if self.weighting == "rank":
            ranks = competition_ranks(teacher)
            weights = 1.0 / (ranks.unsqueeze(2) + ranks.unsqueeze(1))
        elif self.weighting == "score_diff":
            weights = (teacher.unsqueeze(2) - teacher.unsqueeze(1)).abs()
        else:
            weights = torch.ones_like(pair_loss)
        weights = weights * valid
        total = weights.sum()
        if total <= 0:
            return (student * 0.0).sum()
        return (weights * pair_loss).sum() / total
