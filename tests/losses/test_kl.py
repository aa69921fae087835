"""KLDivergenceLoss: hand-computed values, shift invariance, minimum at the teacher, temperatures."""

from __future__ import annotations

import math

import pytest
import torch

from distillrank.losses import KLDivergenceLoss


def test_two_items_hand_computed() -> None:
    # Teacher softmax of [log 3, 0] = [3/4, 1/4]; student softmax of [0, 0] = [1/2, 1/2].
    # KL = 3/4 * log((3/4) / (1/2)) + 1/4 * log((1/4) / (1/2)) = 3/4 log 1.5 + 1/4 log 0.5.
    student = torch.tensor([[0.0, 0.0]])
    teacher = torch.tensor([[math.log(3.0), 0.0]])
    expected = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    loss = KLDivergenceLoss()(student, teacher)
    assert loss.dim() == 0
    assert loss.item() == pytest.approx(expected)


def test_batch_mean_and_temperatures_hand_computed() -> None:
    # Row 0: teacher [0.3 log 2, 0, 0] / 0.3 -> softmax [1/2, 1/4, 1/4];
    #        student [0, 0, 0.05 log 2] / 0.05 -> softmax [1/4, 1/4, 1/2].
    #   KL = 1/2 log((1/2)/(1/4)) + 1/4 log(1) + 1/4 log((1/4)/(1/2)) = 1/2 log 2 - 1/4 log 2 = 1/4 log 2.
    # Row 1: teacher [0, 0.3 log 3, 0] / 0.3 -> [1/5, 3/5, 1/5]; student [0, 0, 0] -> [1/3, 1/3, 1/3].
    #   KL = 2 * 1/5 log((1/5)/(1/3)) + 3/5 log((3/5)/(1/3)).
    # Batch mean: (row0 + row1) / 2.
    student = torch.tensor([[0.0, 0.0, 0.05 * math.log(2.0)], [0.0, 0.0, 0.0]])
    teacher = torch.tensor([[0.3 * math.log(2.0), 0.0, 0.0], [0.0, 0.3 * math.log(3.0), 0.0]])
    row0 = 0.25 * math.log(2.0)
    row1 = 2 * 0.2 * math.log(0.2 / (1 / 3)) + 0.6 * math.log(0.6 / (1 / 3))
    loss = KLDivergenceLoss(teacher_temperature=0.3, student_temperature=0.05)(student, teacher)
    assert loss.item() == pytest.approx((row0 + row1) / 2)


def test_invariant_to_shifting_rows() -> None:
    gen = torch.Generator().manual_seed(2)
    student = torch.randn(4, 6, generator=gen)
    teacher = torch.randn(4, 6, generator=gen)
    shifts = torch.tensor([[50.0], [-3.0], [0.0], [7.5]])
    loss = KLDivergenceLoss(teacher_temperature=0.3, student_temperature=0.5)
    base = loss(student, teacher)
    assert base.item() > 0
    torch.testing.assert_close(loss(student + shifts, teacher), base)
    torch.testing.assert_close(loss(student, teacher - shifts), base)


def test_minimal_at_the_teacher_with_equal_temperatures() -> None:
    gen = torch.Generator().manual_seed(3)
    teacher = torch.randn(3, 8, generator=gen)
    loss = KLDivergenceLoss(teacher_temperature=0.7, student_temperature=0.7)
    at_teacher = loss(teacher.clone(), teacher)
    assert at_teacher.item() == pytest.approx(0.0, abs=1e-6)
    for _ in range(5):
        other = teacher + 0.5 * torch.randn(3, 8, generator=gen)
        assert loss(other, teacher).item() > at_teacher.item() + 1e-4


def test_temperature_changes_the_target() -> None:
    student = torch.tensor([[1.0, 0.0, -1.0]])
    teacher = torch.tensor([[1.0, 0.0, -1.0]])
    # Equal temperatures: zero. A sharper teacher is no longer matched.
    assert KLDivergenceLoss()(student, teacher).item() == pytest.approx(0.0, abs=1e-7)
    assert KLDivergenceLoss(teacher_temperature=0.3)(student, teacher).item() > 0.01


def test_gradient_hand_computed() -> None:
    # d KL / d s = (q - p) / tau_s per row, divided by B for the batch mean.
    # p = [3/4, 1/4], q = [1/2, 1/2], tau_s = 1, B = 1 -> [-1/4, 1/4].
    student = torch.tensor([[0.0, 0.0]], requires_grad=True)
    teacher = torch.tensor([[math.log(3.0), 0.0]])
    KLDivergenceLoss()(student, teacher).backward()
    torch.testing.assert_close(student.grad, torch.tensor([[-0.25, 0.25]]))


@pytest.mark.parametrize("kwargs", [{"teacher_temperature": 0.0}, {"student_temperature": -1.0}])
def test_bad_temperature_raises(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="temperature"):
        KLDivergenceLoss(**kwargs)
