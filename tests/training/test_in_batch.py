"""In-batch negatives: the [B, P] matrix the loop builds and InfoNCE over it, by hand."""

from __future__ import annotations

import math

import pytest
import torch

from distillrank.losses import InfoNCELoss, KLDivergenceLoss, WeightedSum
from distillrank.losses.infonce import InBatch
from distillrank.students.base import BatchScores, Student
from distillrank.training.batching import Example
from distillrank.training.loop import student_scores

S = torch.tensor([[2.0, 1.0, 0.0, 3.0], [0.0, 1.0, 2.0, 1.0]])  # [B=2, P=4]
INDEX = torch.tensor([[0, 1], [2, 3]])  # row 0: positive p0, negative p1; row 1: positive p2, negative p3
GROUPS = torch.gather(S, 1, INDEX)
EXCLUDE = torch.tensor([[False, False, False, True], [False, False, False, False]])  # p3 is q0's positive too


def _lse(*xs: float) -> float:
    return math.log(sum(math.exp(x) for x in xs))


def test_infonce_in_batch_by_hand():
    loss = InfoNCELoss(temperature=1.0)
    assert loss.uses_in_batch
    value = loss(GROUPS, torch.zeros(2, 2), in_batch=InBatch(S, INDEX, EXCLUDE))
    row0 = -2.0 + _lse(2.0, 1.0, 0.0)  # p3 excluded: a positive of q0
    row1 = -2.0 + _lse(0.0, 1.0, 2.0, 1.0)  # the other query's positive p0 is a negative
    assert value.item() == pytest.approx((row0 + row1) / 2, rel=1e-6)


def test_infonce_in_batch_temperature_and_false_negative_mask():
    loss = InfoNCELoss(temperature=0.5, false_negative_margin=0.1)
    teacher = torch.tensor([[1.0, 0.95], [1.0, 0.0]])  # q0's own negative p1 is a likely false negative
    value = loss(GROUPS, teacher, in_batch=InBatch(S, INDEX, EXCLUDE))
    row0 = -4.0 + _lse(4.0, 0.0)
    row1 = -4.0 + _lse(0.0, 2.0, 4.0, 2.0)
    assert value.item() == pytest.approx((row0 + row1) / 2, rel=1e-6)


def test_without_in_batch_scores_infonce_uses_the_own_list():
    loss = InfoNCELoss(temperature=1.0)
    expected = ((-2.0 + _lse(2.0, 1.0)) + (-2.0 + _lse(2.0, 1.0))) / 2
    assert loss(GROUPS, torch.zeros(2, 2)).item() == pytest.approx(expected, rel=1e-6)
    off = InfoNCELoss(temperature=1.0, in_batch_negatives=False)
    assert not off.uses_in_batch
    assert off(GROUPS, torch.zeros(2, 2), in_batch=InBatch(S, INDEX, EXCLUDE)).item() == pytest.approx(
        expected
    )


def test_weighted_sum_passes_in_batch_only_to_the_terms_that_use_it():
    combo = WeightedSum(
        {"kl": {"loss": KLDivergenceLoss(), "weight": 1.0}, "nce": {"loss": InfoNCELoss(1.0), "weight": 0.5}}
    )
    assert combo.uses_in_batch
    teacher = torch.tensor([[1.0, 0.0], [0.5, 0.2]])
    ib = InBatch(S, INDEX, EXCLUDE)
    expected = KLDivergenceLoss()(GROUPS, teacher) + 0.5 * InfoNCELoss(1.0)(GROUPS, teacher, in_batch=ib)
    torch.testing.assert_close(combo(GROUPS, teacher, in_batch=ib), expected)
    assert not WeightedSum({"kl": KLDivergenceLoss()}).uses_in_batch


class _Fixed(Student):
    """A student whose scores are a fixed function of the passages' positions."""

    kind = "fixed"
    supports_in_batch = True

    def __init__(self) -> None:
        super().__init__(torch.nn.Linear(1, 1))
        self.seen: list[str] = []

    def forward(self, queries, passages, index, in_batch=False):
        self.seen = list(passages)
        matrix = torch.arange(len(queries) * len(passages), dtype=torch.float32).view(len(queries), -1)
        return BatchScores(torch.gather(matrix, 1, index), matrix if in_batch else None)


def test_student_scores_locates_lists_and_excludes_own_positives():
    examples = [
        Example("q0", ["a", "b"], [1.0, 0.0]),
        Example("q1", ["c", "b"], [1.0, 0.5]),
        Example("q0", ["d", "e"], [1.0, 0.2]),
    ]
    student = _Fixed()
    groups, ib = student_scores(
        student,
        examples,
        {"q0": "Q0", "q1": "Q1"},
        lambda ids: [i.upper() for i in ids],
        True,
        {"q0": {"a", "d"}, "q1": {"c"}},
    )
    assert student.seen == ["A", "B", "C", "D", "E"]  # each distinct passage once, first-seen order
    assert ib.index.tolist() == [[0, 1], [2, 1], [3, 4]]
    torch.testing.assert_close(groups, torch.gather(ib.scores, 1, ib.index))
    assert ib.exclude.tolist() == [
        [True, False, False, True, False],  # q0: a and d are its positives
        [False, False, True, False, False],  # q1: c
        [True, False, False, True, False],
    ]
    _, none = student_scores(student, examples, {"q0": "Q0", "q1": "Q1"}, lambda ids: ids)
    assert none is None
