"""RankNetLoss: hand-computed values for each weighting, ties, order invariance."""

from __future__ import annotations

import math

import pytest
import torch

from distillrank.losses import RankNetLoss

# Teacher [3, 1, 2] prefers 0 > 2 > 1: pairs (0, 1), (0, 2), (2, 1); teacher ranks r = [1, 3, 2].
# Student [1, 2, 0]: s_0 - s_1 = -1, s_0 - s_2 = 1, s_2 - s_1 = -2.
STUDENT = torch.tensor([[1.0, 2.0, 0.0]])
TEACHER = torch.tensor([[3.0, 1.0, 2.0]])
PAIR_01 = math.log(1.0 + math.exp(1.0))
PAIR_02 = math.log(1.0 + math.exp(-1.0))
PAIR_21 = math.log(1.0 + math.exp(2.0))


def test_unweighted_hand_computed() -> None:
    loss = RankNetLoss()(STUDENT, TEACHER)
    assert loss.dim() == 0
    assert loss.item() == pytest.approx((PAIR_01 + PAIR_02 + PAIR_21) / 3)


def test_rank_weighting_hand_computed() -> None:
    # w = 1 / (r_i + r_j): (0, 1) -> 1/4, (0, 2) -> 1/3, (2, 1) -> 1/5.
    w01, w02, w21 = 1 / 4, 1 / 3, 1 / 5
    expected = (w01 * PAIR_01 + w02 * PAIR_02 + w21 * PAIR_21) / (w01 + w02 + w21)
    assert RankNetLoss(weighting="rank")(STUDENT, TEACHER).item() == pytest.approx(expected)


def test_score_diff_weighting_hand_computed() -> None:
    # w = |t_i - t_j|: (0, 1) -> 2, (0, 2) -> 1, (2, 1) -> 1.
    expected = (2 * PAIR_01 + PAIR_02 + PAIR_21) / 4
    assert RankNetLoss(weighting="score_diff")(STUDENT, TEACHER).item() == pytest.approx(expected)


def test_mean_over_all_pairs_of_the_batch_and_ties_skipped() -> None:
    # Row 0 as above (3 pairs). Row 1: teacher [1, 1, 0] ties columns 0 and 1 -> pairs (0, 2), (1, 2);
    # student [0, 0, 0] -> each pair log 2. Mean over the 5 pairs.
    student = torch.cat([STUDENT, torch.zeros(1, 3)])
    teacher = torch.cat([TEACHER, torch.tensor([[1.0, 1.0, 0.0]])])
    expected = (PAIR_01 + PAIR_02 + PAIR_21 + 2 * math.log(2.0)) / 5
    assert RankNetLoss()(student, teacher).item() == pytest.approx(expected)


def test_all_teacher_ties_give_zero() -> None:
    student = torch.tensor([[1.0, 2.0, 0.0]], requires_grad=True)
    loss = RankNetLoss()(student, torch.ones(1, 3))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(student.grad, torch.zeros(1, 3))


@pytest.mark.parametrize("weighting", [None, "rank"])
def test_invariant_to_order_preserving_teacher_change(weighting: str | None) -> None:
    gen = torch.Generator().manual_seed(7)
    student = torch.randn(4, 8, generator=gen)
    teacher = torch.randn(4, 8, generator=gen)
    loss = RankNetLoss(weighting=weighting)
    base = loss(student, teacher)
    torch.testing.assert_close(loss(student, torch.exp(3.0 * teacher) - 5.0), base)
    torch.testing.assert_close(loss(student, teacher**3), base)
    torch.testing.assert_close(loss(student + 4.0, teacher), base)


def test_score_diff_depends_on_teacher_scale_of_gaps() -> None:
    student = torch.tensor([[1.0, 2.0, 0.0]])
    loss = RankNetLoss(weighting="score_diff")
    assert loss(student, TEACHER).item() != pytest.approx(loss(student, TEACHER**3).item())


def test_unknown_weighting_raises() -> None:
    with pytest.raises(ValueError, match="weighting"):
        RankNetLoss(weighting="ndcg")  # type: ignore[arg-type]
