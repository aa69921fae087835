"""ApproxNDCGLoss: hand-computed values, order invariance, limits."""

from __future__ import annotations

import math

import pytest
import torch

from distillrank.losses import ApproxNDCGLoss


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def test_two_items_hand_computed() -> None:
    # Teacher [3, 1]: gains [2^1 - 1, 2^0 - 1] = [1, 0]; maxDCG = 1.
    # Student [1, 0], T = 1: approx rank of item 0 = 1 + sigmoid(0 - 1) = 1 + 1/(1 + e).
    # Loss = 1 - 1 / log2(1 + 1 + 1/(1 + e)).
    student = torch.tensor([[1.0, 0.0]])
    teacher = torch.tensor([[3.0, 1.0]])
    expected = 1.0 - 1.0 / math.log2(2.0 + 1.0 / (1.0 + math.e))
    loss = ApproxNDCGLoss()(student, teacher)
    assert loss.dim() == 0
    assert loss.item() == pytest.approx(expected)


def test_three_items_with_temperature_hand_computed() -> None:
    # Teacher [3, 1, 2]: ranks [1, 3, 2], gains [2^2 - 1, 0, 2^1 - 1] = [3, 0, 1]; maxDCG = 3 + 1/log2 3.
    # Student [1, 2, 0], T = 0.5: rank_0 = 1 + sig((2-1)/.5) + sig((0-1)/.5) = 1 + sig(2) + sig(-2) = 2;
    # rank_2 = 1 + sig((1-0)/.5) + sig((2-0)/.5) = 1 + sig(2) + sig(4); item 1 has gain 0.
    student = torch.tensor([[1.0, 2.0, 0.0]])
    teacher = torch.tensor([[3.0, 1.0, 2.0]])
    rank_2 = 1.0 + _sigmoid(2.0) + _sigmoid(4.0)
    dcg = 3.0 / math.log2(1.0 + 2.0) + 1.0 / math.log2(1.0 + rank_2)
    expected = 1.0 - dcg / (3.0 + 1.0 / math.log2(3.0))
    assert ApproxNDCGLoss(temperature=0.5)(student, teacher).item() == pytest.approx(expected)


def test_batch_mean() -> None:
    student = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    teacher = torch.tensor([[3.0, 1.0], [3.0, 1.0]])
    # Row 1: item 0 (gain 1) has approx rank 1 + sigmoid(1) = 1 + e/(1 + e).
    row0 = 1.0 - 1.0 / math.log2(2.0 + 1.0 / (1.0 + math.e))
    row1 = 1.0 - 1.0 / math.log2(2.0 + math.e / (1.0 + math.e))
    assert ApproxNDCGLoss()(student, teacher).item() == pytest.approx((row0 + row1) / 2)


def test_near_zero_for_a_sharp_correct_student() -> None:
    teacher = torch.tensor([[4.0, 3.0, 2.0, 1.0]])
    loss = ApproxNDCGLoss(temperature=0.01)
    assert loss(teacher, teacher).item() == pytest.approx(0.0, abs=1e-4)
    assert loss(-teacher, teacher).item() > 0.3


def test_invariant_to_order_preserving_teacher_change_and_student_shift() -> None:
    gen = torch.Generator().manual_seed(13)
    student = torch.randn(4, 8, generator=gen)
    teacher = torch.randn(4, 8, generator=gen)
    loss = ApproxNDCGLoss(temperature=0.5)
    base = loss(student, teacher)
    assert 0 < base.item() < 1
    torch.testing.assert_close(loss(student, torch.exp(teacher)), base)
    torch.testing.assert_close(loss(student - 9.0, teacher), base)


def test_bad_temperature_raises() -> None:
    with pytest.raises(ValueError, match="temperature"):
        ApproxNDCGLoss(temperature=0.0)
