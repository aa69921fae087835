"""PLDLoss: hand-computed values, the positive placed first, weights, shift invariance."""

from __future__ import annotations

import math

import pytest
import torch

from distillrank.losses import ListMLELoss, PLDLoss


def test_hand_computed_positive_first_even_when_teacher_ranks_it_last() -> None:
    # Teacher [1, 2, 3]: permutation = positive (0), then 2 (t=3), then 1 (t=2).
    # Student [1, 0, 2] in that order: [1, 2, 0].
    # Terms: k=1: log(e^1 + e^2 + e^0) - 1; k=2: log(e^2 + e^0) - 2; k=3: 0.
    # Weights: softmax(t) of the item at each position = [e^1, e^3, e^2] / (e^1 + e^2 + e^3).
    student = torch.tensor([[1.0, 0.0, 2.0]])
    teacher = torch.tensor([[1.0, 2.0, 3.0]])
    z = math.exp(1) + math.exp(2) + math.exp(3)
    term1 = math.log(math.exp(1) + math.exp(2) + 1.0) - 1.0
    term2 = math.log(math.exp(2) + 1.0) - 2.0
    expected = math.exp(1) / z * term1 + math.exp(3) / z * term2
    loss = PLDLoss()(student, teacher)
    assert loss.dim() == 0
    assert loss.item() == pytest.approx(expected)


def test_temperature_and_batch_mean_hand_computed() -> None:
    # T = 2. Row 0: teacher [2 log 3, 0] / 2 -> weights [3/4, 1/4]; permutation 0, 1; student [0, 0]:
    #   terms [log 2, 0] -> 3/4 log 2.
    # Row 1: teacher [0, 2 log 3] / 2 -> weights [1/4, 3/4]; permutation 0, 1 (positive first);
    #   student [1, 0]: terms [log(e + 1) - 1, 0] -> 1/4 (log(1 + e) - 1).
    student = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    teacher = torch.tensor([[2 * math.log(3.0), 0.0], [0.0, 2 * math.log(3.0)]])
    expected = (0.75 * math.log(2.0) + 0.25 * (math.log(1.0 + math.e) - 1.0)) / 2
    assert PLDLoss(temperature=2.0)(student, teacher).item() == pytest.approx(expected)


def test_invariant_to_shifting_rows() -> None:
    gen = torch.Generator().manual_seed(9)
    student = torch.randn(4, 6, generator=gen)
    teacher = torch.randn(4, 6, generator=gen)
    shifts = torch.tensor([[8.0], [-2.5], [0.0], [1.0]])
    loss = PLDLoss(temperature=0.5)
    base = loss(student, teacher)
    torch.testing.assert_close(loss(student + shifts, teacher), base)
    torch.testing.assert_close(loss(student, teacher + shifts), base)


def test_not_invariant_to_teacher_rescaling() -> None:
    # The weights use the teacher's values, not only its order (unlike ListMLE).
    gen = torch.Generator().manual_seed(10)
    student = torch.randn(2, 5, generator=gen)
    teacher = torch.randn(2, 5, generator=gen)
    assert PLDLoss()(student, teacher).item() != pytest.approx(PLDLoss()(student, 3 * teacher).item())


def test_uniform_weights_give_listmle_over_l_when_positive_is_teachers_top() -> None:
    # A very high temperature makes the weights 1/L; with the positive already the teacher's top,
    # the permutation is the teacher's order, so PLD = ListMLE / L.
    gen = torch.Generator().manual_seed(11)
    student = torch.randn(3, 6, generator=gen)
    teacher = torch.randn(3, 6, generator=gen)
    teacher[:, 0] = teacher.max(dim=1).values + 1.0
    pld = PLDLoss(temperature=1e6)(student, teacher)
    torch.testing.assert_close(pld, ListMLELoss()(student, teacher) / 6, rtol=1e-4, atol=1e-5)


def test_bad_temperature_raises() -> None:
    with pytest.raises(ValueError, match="temperature"):
        PLDLoss(temperature=0.0)
