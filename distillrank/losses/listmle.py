"""ListMLE: Plackett-Luce likelihood of the teacher's order."""

from __future__ import annotations

import torch
from torch import nn

from distillrank.losses._common import check_scores


def plackett_luce_terms(ordered_scores: torch.Tensor) -> torch.Tensor:
    """Per-position Plackett-Luce negative log-likelihood terms of a ranking.

    Args:
        ordered_scores: [B, L] scores of the items in the ranking's order (first = ranked first).

    Returns:
        [B, L]: at position k, ``log Σ_{l ≥ k} exp(x_l) − x_k`` (the last position's term is 0),
        computed with a reversed ``logcumsumexp`` so large scores do not overflow.
    """
    tail_logsumexp = torch.logcumsumexp(ordered_scores.flip(1), dim=1).flip(1)
    return tail_logsumexp - ordered_scores


class ListMLELoss(nn.Module):
    """Plackett-Luce negative log-likelihood of the teacher's ordering under the student's scores.

    Sort each row by descending teacher score (ties keep column order) into ``π``; the loss of a row is
    ``Σ_{k=1}^{K} [log Σ_{l=k}^{L} exp(s_{π_l}) − s_{π_k}]`` with ``K = L``, or ``K = min(top_k, L)``
    for the partial (top-K) Plackett-Luce likelihood — the denominators still run over every item not
    yet placed. Rows are summed over positions and averaged over the batch. The loss depends on the
    teacher only through its order, and adding a constant to a row of student scores changes nothing.

    Originally proposed in Xia et al., "Listwise Approach to Learning to Rank: Theory and Algorithm"
    (2008); the top-K restriction is the partial Plackett-Luce likelihood (Xia et al. 2009), as used
    for ranking distillation in CPRD.

    Args:
        top_k: K, the number of leading positions of the teacher's order whose choices are scored;
            ``None`` scores the whole permutation.

    Shapes:
        student: [B, L] scores (the layout of columns does not matter).
        teacher: [B, L] scores, same layout.
    """

    def __init__(self, top_k: int | None = None) -> None:
        super().__init__()
        if top_k is not None and (isinstance(top_k, bool) or int(top_k) != top_k or top_k < 1):
            raise ValueError(f"top_k must be None or an integer >= 1; got {top_k!r}")
        self.top_k = None if top_k is None else int(top_k)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        teacher = check_scores(student, teacher)
        order = torch.sort(teacher, dim=1, descending=True, stable=True).indices
        terms = plackett_luce_terms(student.gather(1, order))
        if self.top_k is not None:
            terms = terms[:, : self.top_k]
        return terms.sum(dim=1).mean()
