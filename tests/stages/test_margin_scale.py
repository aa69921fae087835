"""The train stage warns when Margin-MSE targets exceed what a cosine student can produce."""

from __future__ import annotations

import logging

import pytest

from distillrank.stages.train import warn_unreachable_margins
from distillrank.training.batching import QueryPool


def _pools(margin: float) -> list[QueryPool]:
    return [QueryPool(f"q{i}", [("p", margin + 0.1)], [("n1", 0.1), ("n2", 0.1 + margin / 2)]) for i in range(10)]


def test_z_scored_margins_warn_for_a_cosine_student(make_cfg, caplog):
    cfg = make_cfg("loss=margin_mse", "student.similarity=cos")
    with caplog.at_level(logging.WARNING, logger="distillrank.stages.train"):
        share = warn_unreachable_margins(cfg, _pools(3.0))
    assert share == pytest.approx(0.5)  # margins 3.0 and 1.5 per query
    assert "cannot fit them" in caplog.text and "score.normalize=minmax" in caplog.text


def test_cosine_scale_margins_do_not_warn(make_cfg, caplog):
    cfg = make_cfg("loss=margin_mse", "student.similarity=cos")
    with caplog.at_level(logging.WARNING, logger="distillrank.stages.train"):
        assert warn_unreachable_margins(cfg, _pools(0.4)) == 0.0
    assert caplog.text == ""


@pytest.mark.parametrize("overrides", [("loss=margin_mse", "student.similarity=dot"), ("loss=kl", "student.similarity=cos")])
def test_the_check_applies_to_margin_mse_with_cosine_only(make_cfg, overrides):
    assert warn_unreachable_margins(make_cfg(*overrides), _pools(3.0)) is None
