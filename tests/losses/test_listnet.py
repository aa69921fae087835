"""ListNetLoss: hand-computed values, temperature, shift invariance, relation to KL."""

from __future__ import annotations

import math

import pytest
import torch

from distillrank.losses import KLDivergenceLoss, ListNetLoss


def test_two_items_hand_computed() -> None:
    # Teacher softmax of [log 3, 0] = [3/4, 1/4]. Student log-softmax of [1, 0] =
    # [1 - log(1 + e), -log(1 + e)]. Loss = -(3/4 (1 - log(1 + e)) + 1/4 (-log(1 + e))) = log(1 + e) - 3/4.
    student = torch.tensor([[1.0, 0.0]])
    teacher = torch.tensor([[math.log(3.0), 0.0]])
    loss = ListNetLoss()(student, teacher)
    assert loss.dim() == 0
    assert loss.item() == pytest.approx(math.log(1.0 + math.e) - 0.75)


def test_temperature_and_batch_mean_hand_computed() -> None:
    # tau = 0.5 divides the teacher only. Row 0: teacher [0.5 log 3, 0] / 0.5 -> [3/4, 1/4], student
    # [1, 0] untempered -> log(1 + e) - 3/4 as above. Row 1: uniform teacher [1/2, 1/2], student
    # log-softmax [-log 2, -log 2] -> loss log 2. Batch mean of the two rows.
    student = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    teacher = torch.tensor([[0.5 * math.log(3.0), 0.0], [0.0, 0.0]])
    expected = ((math.log(1.0 + math.e) - 0.75) + math.log(2.0)) / 2
    assert ListNetLoss(temperature=0.5)(student, teacher).item() == pytest.approx(expected)


def test_equals_kl_plus_teacher_entropy() -> None:
    gen = torch.Generator().manual_seed(5)
    student = torch.randn(3, 7, generator=gen)
    teacher = torch.randn(3, 7, generator=gen)
    p = torch.softmax(teacher / 0.4, dim=1)
    entropy = -(p * p.log()).sum(dim=1).mean()
    kl = KLDivergenceLoss(teacher_temperature=0.4, student_temperature=1.0)(student, teacher)
    torch.testing.assert_close(ListNetLoss(temperature=0.4)(student, teacher), kl + entropy)


def test_invariant_to_shifting_rows() -> None:
    gen = torch.Generator().manual_seed(6)
    student = torch.randn(4, 5, generator=gen)
    teacher = torch.randn(4, 5, generator=gen)
    shifts = torch.tensor([[12.0], [-1.0], [0.0], [3.25]])
    loss = ListNetLoss(temperature=0.7)
    base = loss(student, teacher)
    torch.testing.assert_close(loss(student + shifts, teacher), base)
    torch.testing.assert_close(loss(student, teacher + shifts), base)


def test_bad_temperature_raises() -> None:
    with pytest.raises(ValueError, match="temperature"):
        ListNetLoss(temperature=-0.1)
