"""MarginMSELoss: hand-computed values, shift invariance, zero at matching margins, gradients, shapes."""

from __future__ import annotations

import pytest
import torch

from distillrank.losses import MarginMSELoss


def test_one_negative_hand_computed() -> None:
    # Row 0: student margin 3 - 1 = 2, teacher margin 5 - 4 = 1 -> (2 - 1)^2 = 1.
    # Row 1: student margin 0 - 2 = -2, teacher margin 1 - (-1) = 2 -> (-2 - 2)^2 = 16.
    # Mean over the 2 margins: (1 + 16) / 2 = 8.5.
    student = torch.tensor([[3.0, 1.0], [0.0, 2.0]])
    teacher = torch.tensor([[5.0, 4.0], [1.0, -1.0]])
    loss = MarginMSELoss()(student, teacher)
    assert loss.dim() == 0
    assert loss.item() == pytest.approx(8.5)


def test_three_negatives_hand_computed() -> None:
    # Student margins: 4-1=3, 4-2=2, 4-6=-2. Teacher margins: 10-9=1, 10-10=0, 10-7=3.
    # Squared differences: (3-1)^2=4, (2-0)^2=4, (-2-3)^2=25 -> mean (4+4+25)/3 = 11.
    student = torch.tensor([[4.0, 1.0, 2.0, 6.0]])
    teacher = torch.tensor([[10.0, 9.0, 10.0, 7.0]])
    assert MarginMSELoss()(student, teacher).item() == pytest.approx(11.0)


def test_two_rows_three_negatives_average_over_all_margins() -> None:
    # Row 0 as above (sum 33 over 3 margins); row 1 has margins equal to the teacher's (sum 0).
    # Mean over the 6 margins: 33 / 6 = 5.5.
    student = torch.tensor([[4.0, 1.0, 2.0, 6.0], [1.0, 0.0, 0.5, 2.0]])
    teacher = torch.tensor([[10.0, 9.0, 10.0, 7.0], [11.0, 10.0, 10.5, 12.0]])
    assert MarginMSELoss()(student, teacher).item() == pytest.approx(5.5)


def test_invariant_to_shifting_a_teacher_row() -> None:
    gen = torch.Generator().manual_seed(1)
    student = torch.randn(4, 5, generator=gen)
    teacher = torch.randn(4, 5, generator=gen)
    shifts = torch.tensor([[100.0], [-3.5], [0.0], [7.25]])
    loss = MarginMSELoss()
    base = loss(student, teacher)
    assert base.item() > 0
    torch.testing.assert_close(loss(student, teacher + shifts), base)
    # Shifting the student rows does not matter either.
    torch.testing.assert_close(loss(student - shifts, teacher), base)


def test_zero_when_margins_match_on_different_scales() -> None:
    teacher = torch.tensor([[9.0, 7.0, 8.5], [-1.0, -4.0, -2.0]])
    student = teacher - torch.tensor([[20.0], [-3.0]])  # same margins, other offset per row
    assert MarginMSELoss()(student, teacher).item() == pytest.approx(0.0, abs=1e-12)


def test_gradient_flows_to_student_only() -> None:
    student = torch.tensor([[3.0, 1.0], [0.0, 2.0]], requires_grad=True)
    teacher = torch.tensor([[5.0, 4.0], [1.0, -1.0]])
    MarginMSELoss()(student, teacher).backward()
    # d/ds+ of mean((s+ - s- - m_t)^2) over 2 rows = (s+ - s- - m_t); d/ds- is its negative.
    # Row 0: 2 - 1 = 1; row 1: -2 - 2 = -4.
    expected = torch.tensor([[1.0, -1.0], [-4.0, 4.0]])
    torch.testing.assert_close(student.grad, expected)
    assert teacher.grad is None


def test_teacher_dtype_is_cast_to_student_dtype() -> None:
    student = torch.tensor([[1.0, 0.0]], dtype=torch.float32)
    teacher = torch.tensor([[3.0, 0.0]], dtype=torch.float64)
    loss = MarginMSELoss()(student, teacher)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(4.0)


@pytest.mark.parametrize(
    ("student_shape", "teacher_shape"),
    [
        ((2, 3), (2, 4)),  # different list lengths
        ((3, 3), (2, 3)),  # different batch sizes
        ((2, 1), (2, 1)),  # no negative
        ((4,), (4,)),  # not 2-D
        ((2, 3, 1), (2, 3, 1)),  # 3-D
    ],
)
def test_bad_shapes_raise(student_shape: tuple[int, ...], teacher_shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=r"\[B, 1\+n\]"):
        MarginMSELoss()(torch.zeros(student_shape), torch.zeros(teacher_shape))


def test_learned_scale_fits_margins_on_another_scale() -> None:
    """A student whose margins are 10x the teacher's: plain Margin-MSE is far from zero; with
    learn_scale the factor alone is fitted (to 0.1) and the loss goes to zero, ranking untouched."""
    gen = torch.Generator().manual_seed(0)
    teacher = torch.randn(16, 4, generator=gen)
    student = 10.0 * teacher + 3.0
    assert MarginMSELoss()(student, teacher).item() > 10.0
    loss_fn = MarginMSELoss(learn_scale=True)
    assert loss_fn.scale == 1.0
    opt = torch.optim.Adam(loss_fn.parameters(), lr=0.05, betas=(0.9, 0.9))
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=200, gamma=0.5)
    for _ in range(1000):
        opt.zero_grad()
        loss = loss_fn(student, teacher)
        loss.backward()
        opt.step()
        sched.step()
    assert loss_fn.scale == pytest.approx(0.1, rel=1e-2)
    assert loss_fn(student, teacher).item() < 1e-4


def test_learned_scale_reaches_the_student_through_the_margins() -> None:
    student = torch.tensor([[2.0, 1.0]], requires_grad=True)
    teacher = torch.tensor([[1.0, 0.0]])
    loss_fn = MarginMSELoss(learn_scale=True)
    with torch.no_grad():
        loss_fn.log_scale.fill_(torch.log(torch.tensor(0.5)))
    loss = loss_fn(student, teacher)  # (0.5 * 1 - 1)^2
    assert loss.item() == pytest.approx(0.25)
    loss.backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert loss_fn.log_scale.grad is not None
