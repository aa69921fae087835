"""Helpers shared by the losses: input checks, teacher ranks and rank-derived gains."""

from __future__ import annotations

import torch


def check_scores(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Check the common loss inputs and return the teacher scores ready to compare with the student's.

    Args:
        student: [B, L] student scores, L >= 2.
        teacher: [B, L] teacher scores.

    Returns:
        The teacher scores, detached and cast to the student's dtype and device.

    Raises:
        ValueError: when the shapes are not both [B, L] with L >= 2.
    """
    if student.shape != teacher.shape or student.dim() != 2 or student.shape[1] < 2:
        raise ValueError(
            f"expected student and teacher of the same shape [B, L] with L >= 2; "
            f"got {tuple(student.shape)}, {tuple(teacher.shape)}"
        )
    return teacher.detach().to(dtype=student.dtype, device=student.device)


def check_positive(name: str, value: float) -> float:
    """Return ``value`` as a float; raise ValueError unless it is > 0."""
    if not value > 0:
        raise ValueError(f"{name} must be > 0; got {value}")
    return float(value)


def competition_ranks(scores: torch.Tensor) -> torch.Tensor:
    """1-based ranks in descending score order, ties sharing the best rank ("1224" ranking).

    ``rank_i = 1 + #{j : scores_j > scores_i}``, so a strictly increasing transformation of the scores
    leaves the ranks unchanged and tied items get the same rank.

    Args:
        scores: [B, L] scores.

    Returns:
        [B, L] ranks in the scores' dtype, between 1 and L.
    """
    greater = scores.unsqueeze(1) > scores.unsqueeze(2)  # [b, i, j]: scores_j > scores_i
    return 1 + greater.sum(dim=2).to(scores.dtype)


def rank_gains(teacher: torch.Tensor) -> torch.Tensor:
    """Graded gains from the teacher's ranks: ``G = 2^rel − 1`` with ``rel = L − rank``.

    The teacher's top item (rank 1) gets relevance L − 1 and gain 2^(L−1) − 1; an item ranked last
    gets relevance 0 and gain 0. Depends only on the teacher's order, not on its scale.

    Args:
        teacher: [B, L] teacher scores.

    Returns:
        [B, L] gains in the teacher's dtype.
    """
    relevance = teacher.shape[1] - competition_ranks(teacher)
    return torch.pow(2.0, relevance) - 1
