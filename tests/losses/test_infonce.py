"""InfoNCELoss: hand-computed values, temperature, false-negative masking, shift invariance."""

from __future__ import annotations

import math

import pytest
import torch

from distillrank.losses import InfoNCELoss


def test_hand_computed() -> None:
    # Logits s / 0.5 = [4, 2, 0]; loss = -4 + log(e^4 + e^2 + e^0).
    student = torch.tensor([[2.0, 1.0, 0.0]])
    teacher = torch.zeros(1, 3)
    loss = InfoNCELoss(temperature=0.5)(student, teacher)
    assert loss.dim() == 0
    assert loss.item() == pytest.approx(-4.0 + math.log(math.exp(4) + math.exp(2) + 1.0))


def test_batch_mean_with_default_temperature() -> None:
    # tau = 0.05. Row 0: logits [0, 0] -> log 2. Row 1: logits [0, 0.1/0.05 = 2] -> log(1 + e^2).
    student = torch.tensor([[0.3, 0.3], [-0.1, 0.0]])
    teacher = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    expected = (math.log(2.0) + math.log(1.0 + math.exp(2.0))) / 2
    assert InfoNCELoss()(student, teacher).item() == pytest.approx(expected, rel=1e-5)


def test_teacher_ignored_without_margin() -> None:
    student = torch.tensor([[2.0, 1.0, 0.0]])
    loss = InfoNCELoss(temperature=0.5)
    torch.testing.assert_close(
        loss(student, torch.tensor([[0.0, 9.0, 9.0]])), loss(student, torch.tensor([[9.0, 0.0, 0.0]]))
    )


def test_false_negative_margin_hand_computed() -> None:
    # Teacher positive 5, margin 1: negatives with t >= 4 are dropped -> column 1 (4.5) and column 3 (4.0,
    # the boundary) go; column 2 (1.0) stays. Logits s / 0.5 = [4, 2, 0, 6] -> loss = -4 + log(e^4 + e^0).
    student = torch.tensor([[2.0, 1.0, 0.0, 3.0]])
    teacher = torch.tensor([[5.0, 4.5, 1.0, 4.0]])
    loss = InfoNCELoss(temperature=0.5, false_negative_margin=1.0)(student, teacher)
    assert loss.item() == pytest.approx(-4.0 + math.log(math.exp(4) + 1.0), abs=1e-6)  # fp32
    # Without the margin, all three negatives count.
    full = InfoNCELoss(temperature=0.5)(student, teacher)
    assert full.item() == pytest.approx(-4.0 + math.log(math.exp(4) + math.exp(2) + 1.0 + math.exp(6)))


def test_all_negatives_dropped_gives_zero_and_finite_gradient() -> None:
    student = torch.tensor([[0.0, 1.0, 2.0]], requires_grad=True)
    teacher = torch.tensor([[1.0, 3.0, 2.0]])
    loss = InfoNCELoss(temperature=0.1, false_negative_margin=0.0)(student, teacher)
    assert loss.item() == pytest.approx(0.0, abs=1e-7)
    loss.backward()
    assert torch.isfinite(student.grad).all()


def test_masked_negatives_get_no_gradient() -> None:
    student = torch.tensor([[2.0, 1.0, 0.0, 3.0]], requires_grad=True)
    teacher = torch.tensor([[5.0, 4.5, 1.0, 4.0]])
    InfoNCELoss(temperature=0.5, false_negative_margin=1.0)(student, teacher).backward()
    assert student.grad[0, 1].item() == 0.0
    assert student.grad[0, 3].item() == 0.0
    assert student.grad[0, 0].item() < 0 < student.grad[0, 2].item()


def test_invariant_to_shifting_rows() -> None:
    gen = torch.Generator().manual_seed(4)
    student = torch.randn(4, 6, generator=gen)
    teacher = torch.randn(4, 6, generator=gen)
    teacher[:, 0] += 1.0
    shifts = torch.tensor([[30.0], [-2.0], [0.0], [5.5]])
    for loss in (InfoNCELoss(temperature=0.2), InfoNCELoss(temperature=0.2, false_negative_margin=0.5)):
        base = loss(student, teacher)
        assert base.item() > 0
        torch.testing.assert_close(loss(student + shifts, teacher), base)
        torch.testing.assert_close(loss(student, teacher + shifts), base)


def test_bad_temperature_raises() -> None:
    with pytest.raises(ValueError, match="temperature"):
        InfoNCELoss(temperature=0.0)
