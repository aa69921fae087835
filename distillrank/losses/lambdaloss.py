"""LambdaLoss: NDCG-weighted pairwise logistic loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from distillrank.losses._common import check_positive, check_scores, rank_gains


def ideal_dcg(gains: torch.Tensor, k: int | None = None) -> torch.Tensor:
    """[B] DCG of each row's gains sorted in descending order, cut at k positions when given."""
    ordered = torch.sort(gains, dim=1, descending=True).values
    positions = torch.arange(1, gains.shape[1] + 1, dtype=gains.dtype, device=gains.device)
    inverse_discount = 1.0 / torch.log2(1.0 + positions)
    if k is not None:
        inverse_discount = inverse_discount * (positions <= k)
    return (ordered * inverse_discount).sum(dim=1)


class LambdaLoss(nn.Module):
    """Pairwise logistic loss weighted by LambdaRank's |ΔNDCG|, with gains from the teacher's ranks.

    Gains: ``G_i = 2^{rel_i} − 1`` with ``rel_i = L − r_i`` and ``r_i`` the 1-based rank of item i by
    descending teacher score (ties share the best rank): the teacher's top item gets gain
    ``2^{L−1} − 1`` and its last one 0. Labels are ignored, so the gains depend only on the teacher's
    order and any strictly increasing change of the teacher scores leaves the loss unchanged.

    Discounts: ``D_i = log2(1 + p_i)`` with ``p_i`` the 1-based position of item i when the row is
    sorted by descending *student* score (positions carry no gradient; student ties keep column
    order); with ``k`` set, ``1/D_i = 0`` for ``p_i > k`` (NDCG@k).

    For each pair with ``G_i > G_j`` (the teacher prefers i):
    ``w_ij = |1/D_i − 1/D_j| · |G_i − G_j| / maxDCG`` (maxDCG: the ideal DCG of the row, cut at k) and
    the pair loss is ``log(1 + exp(−σ (s_i − s_j)))``. A row's loss is ``Σ_{i,j} w_ij · loss_ij``
    (the LambdaRank-weighted form of the LambdaLoss framework, natural log); rows are averaged over
    the batch. Adding a constant to a row of student scores changes nothing.

    Originally proposed in Wang et al., "The LambdaLoss Framework for Ranking Metric Optimization"
    (2018), building on LambdaRank (Burges et al. 2006).

    Args:
        k: NDCG cut-off; ``None`` uses the whole row.
        sigma: σ, scales the student score differences (> 0).

    Shapes:
        student: [B, L] scores (the layout of columns does not matter).
        teacher: [B, L] scores, same layout.
    """

    def __init__(self, k: int | None = None, sigma: float = 1.0) -> None:
        super().__init__()
        if k is not None and (isinstance(k, bool) or int(k) != k or k < 1):
            raise ValueError(f"k must be None or an integer >= 1; got {k!r}")
        self.k = None if k is None else int(k)
        self.sigma = check_positive("sigma", sigma)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        teacher = check_scores(student, teacher)
        gains = rank_gains(teacher)
        order = torch.sort(student.detach(), dim=1, descending=True, stable=True).indices
        positions = torch.empty_like(order)
        positions.scatter_(
            1, order, torch.arange(1, student.shape[1] + 1, device=student.device).expand_as(order)
        )
        positions = positions.to(student.dtype)
        inverse_discount = 1.0 / torch.log2(1.0 + positions)
        if self.k is not None:
            inverse_discount = inverse_discount * (positions <= self.k)
        # [B, i, j] with i the item the teacher prefers.
        gain_diff = gains.unsqueeze(2) - gains.unsqueeze(1)
        discount_diff = (inverse_discount.unsqueeze(2) - inverse_discount.unsqueeze(1)).abs()
        weights = discount_diff * gain_diff.clamp_min(0.0) / ideal_dcg(gains, self.k)[:, None, None]
        pair_loss = F.softplus(-self.sigma * (student.unsqueeze(2) - student.unsqueeze(1)))
        return (weights * pair_loss).sum(dim=(1, 2)).mean()
