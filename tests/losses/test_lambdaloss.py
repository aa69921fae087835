"""LambdaLoss: hand-computed values (with k and sigma), order invariance, ties, bad arguments."""

from __future__ import annotations

import math

import pytest
import torch

from distillrank.losses import LambdaLoss


def test_two_items_hand_computed() -> None:
    # Teacher [2, 1]: ranks [1, 2], rel = L - rank = [1, 0], gains 2^rel - 1 = [1, 0]; maxDCG = 1/log2(2) = 1.
    # Student [0, 1] puts item 1 first: 1/D = [1/log2(3), 1/log2(2)] = [1/log2 3, 1].
    # Pair (0, 1): w = |1/log2 3 - 1| * |1 - 0| / 1; loss = log(1 + exp(-(0 - 1))) = log(1 + e).
    student = torch.tensor([[0.0, 1.0]])
    teacher = torch.tensor([[2.0, 1.0]])
    expected = (1.0 - 1.0 / math.log2(3.0)) * math.log(1.0 + math.e)
    loss = LambdaLoss()(student, teacher)
    assert loss.dim() == 0
    assert loss.item() == pytest.approx(expected)


# Teacher [3, 1, 2]: ranks [1, 3, 2], rel [2, 0, 1], gains [3, 0, 1]; maxDCG = 3/1 + 1/log2 3 + 0.
# Student [1, 2, 0] orders items 1, 0, 2: positions [2, 1, 3], 1/D = [1/log2 3, 1, 1/2].
STUDENT = torch.tensor([[1.0, 2.0, 0.0]])
TEACHER = torch.tensor([[3.0, 1.0, 2.0]])
INV_LOG2_3 = 1.0 / math.log2(3.0)
MAX_DCG = 3.0 + INV_LOG2_3


def _pair(diff: float, sigma: float = 1.0) -> float:
    return math.log(1.0 + math.exp(-sigma * diff))


def test_three_items_hand_computed() -> None:
    # Pairs with G_i > G_j: (0, 1): |dG| = 3, |d(1/D)| = 1 - 1/log2 3, s_0 - s_1 = -1;
    # (0, 2): |dG| = 2, |d(1/D)| = 1/log2 3 - 1/2, s_0 - s_2 = 1; (2, 1): |dG| = 1, |d(1/D)| = 1/2, s_2 - s_1 = -2.
    for sigma in (1.0, 2.0):
        total = (
            3 * (1.0 - INV_LOG2_3) * _pair(-1.0, sigma)
            + 2 * (INV_LOG2_3 - 0.5) * _pair(1.0, sigma)
            + 1 * 0.5 * _pair(-2.0, sigma)
        )
        loss = LambdaLoss(sigma=sigma)(STUDENT, TEACHER)
        assert loss.item() == pytest.approx(total / MAX_DCG)


def test_cutoff_hand_computed() -> None:
    # k = 1: only the student's first position (item 1) keeps 1/D = 1; items 0 and 2 get 0. maxDCG@1 = 3.
    # (0, 1): 3 * |0 - 1| * log(1 + e); (0, 2): |0 - 0| = 0; (2, 1): 1 * |0 - 1| * log(1 + e^2).
    expected = (3 * _pair(-1.0) + _pair(-2.0)) / 3
    assert LambdaLoss(k=1)(STUDENT, TEACHER).item() == pytest.approx(expected)


def test_batch_mean_of_row_sums() -> None:
    student = torch.cat([STUDENT, torch.tensor([[0.0, 1.0, 2.0]])])
    teacher = torch.cat([TEACHER, TEACHER])
    loss = LambdaLoss()
    rows = [loss(student[i : i + 1], teacher[i : i + 1]) for i in range(2)]
    torch.testing.assert_close(loss(student, teacher), (rows[0] + rows[1]) / 2)


def test_teacher_ties_share_gain_and_make_no_pair() -> None:
    # Teacher [1, 1]: both rank 1, equal gains -> no pair -> 0.
    assert LambdaLoss()(torch.tensor([[0.0, 5.0]]), torch.tensor([[1.0, 1.0]])).item() == 0.0


def test_invariant_to_order_preserving_teacher_change_and_student_shift() -> None:
    gen = torch.Generator().manual_seed(12)
    student = torch.randn(4, 8, generator=gen)
    teacher = torch.randn(4, 8, generator=gen)
    for loss in (LambdaLoss(), LambdaLoss(k=3, sigma=0.5)):
        base = loss(student, teacher)
        assert base.item() > 0
        torch.testing.assert_close(loss(student, 2.0 * teacher**3 + 1.0), base)
        torch.testing.assert_close(loss(student + 2.5, teacher), base)


def test_better_student_order_has_lower_loss() -> None:
    teacher = torch.tensor([[4.0, 3.0, 2.0, 1.0]])
    assert LambdaLoss()(teacher, teacher).item() < LambdaLoss()(-teacher, teacher).item()


@pytest.mark.parametrize("kwargs", [{"k": 0}, {"k": 2.5}, {"sigma": 0.0}])
def test_bad_arguments_raise(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="k|sigma"):
        LambdaLoss(**kwargs)  # type: ignore[arg-type]
