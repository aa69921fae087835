"""ListMLELoss: hand-computed values, top-k, order invariance, numerical stability."""

from __future__ import annotations

import math

import pytest
import torch

from distillrank.losses import ListMLELoss

# Teacher [1, 3, 2] orders the items 1, 2, 0; student [0, 2, 1] gives them scores 2, 1, 0 in that order.
STUDENT = torch.tensor([[0.0, 2.0, 1.0]])
TEACHER = torch.tensor([[1.0, 3.0, 2.0]])
TERM_1 = math.log(math.exp(2) + math.exp(1) + math.exp(0)) - 2.0
TERM_2 = math.log(math.exp(1) + math.exp(0)) - 1.0  # the last position's term is log(e^0) - 0 = 0


def test_full_permutation_hand_computed() -> None:
    loss = ListMLELoss()(STUDENT, TEACHER)
    assert loss.dim() == 0
    assert loss.item() == pytest.approx(TERM_1 + TERM_2)


def test_top_k_hand_computed() -> None:
    assert ListMLELoss(top_k=1)(STUDENT, TEACHER).item() == pytest.approx(TERM_1)
    assert ListMLELoss(top_k=2)(STUDENT, TEACHER).item() == pytest.approx(TERM_1 + TERM_2)
    # K beyond the list length is the full likelihood.
    assert ListMLELoss(top_k=10)(STUDENT, TEACHER).item() == pytest.approx(TERM_1 + TERM_2)


def test_batch_mean_hand_computed() -> None:
    # Row 1: teacher [0, 1] orders 1, 0; student [0, 0] -> log(e^0 + e^0) - 0 = log 2.
    student = torch.tensor([[0.0, 2.0], [0.0, 0.0]])
    teacher = torch.tensor([[2.0, 1.0], [0.0, 1.0]])
    # Row 0: order 0, 1 with student scores 0, 2 -> log(e^0 + e^2) - 0.
    expected = (math.log(1.0 + math.exp(2.0)) + math.log(2.0)) / 2
    assert ListMLELoss()(student, teacher).item() == pytest.approx(expected)


def test_invariant_to_order_preserving_teacher_change_and_student_shift() -> None:
    gen = torch.Generator().manual_seed(8)
    student = torch.randn(4, 8, generator=gen)
    teacher = torch.randn(4, 8, generator=gen)
    for loss in (ListMLELoss(), ListMLELoss(top_k=3)):
        base = loss(student, teacher)
        torch.testing.assert_close(loss(student, torch.sigmoid(teacher) * 10 - 2), base)
        torch.testing.assert_close(loss(student - 6.0, teacher), base)


def test_large_scores_are_stable() -> None:
    # Naive exp() would overflow at 1000; the logcumsumexp form gives the exact value.
    student = torch.tensor([[1000.0, 1001.0]], requires_grad=True)
    teacher = torch.tensor([[2.0, 1.0]])
    loss = ListMLELoss()(student, teacher)
    assert loss.item() == pytest.approx(math.log(1.0 + math.e), abs=1e-3)  # fp32 spacing at 1000 is 6e-5
    loss.backward()
    assert torch.isfinite(student.grad).all()


def test_perfect_student_has_lower_loss() -> None:
    teacher = torch.tensor([[4.0, 3.0, 2.0, 1.0]])
    good = ListMLELoss()(teacher * 5, teacher)
    bad = ListMLELoss()(-teacher * 5, teacher)
    assert good.item() < bad.item()


@pytest.mark.parametrize("top_k", [0, -2, 1.5, True])
def test_bad_top_k_raises(top_k: object) -> None:
    with pytest.raises(ValueError, match="top_k"):
        ListMLELoss(top_k=top_k)  # type: ignore[arg-type]
