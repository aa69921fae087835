"""Every loss option trains the bi-encoder student through the train stage (`loss=NAME`)."""

from __future__ import annotations

import json

import pytest
from conftest import tiny_overrides

from distillrank.config import conf_dir
from distillrank.stages import mine, score, train
from distillrank.validation import compose
from distillrank.workspace import stage_dir

LOSSES = sorted(p.stem for p in (conf_dir() / "loss").glob("*.yaml"))


@pytest.fixture(scope="module")
def scored_workspace(tmp_path_factory, tiny_beir, tiny_bi_encoder):
    """One mined and scored workspace; each loss trains in its own experiment and reuses the scores."""
    args = tiny_overrides(tmp_path_factory.mktemp("losses") / "runs", tiny_beir, tiny_bi_encoder)
    cfg = compose(args)
    mine.run(cfg)
    score.run(cfg)
    return args


@pytest.mark.parametrize("loss", LOSSES)
def test_every_loss_trains_the_student(scored_workspace, loss):
    base = compose(scored_workspace)
    cfg = compose(
        [
            *scored_workspace,
            f"loss={loss}",
            "train.negatives_per_example=3",
            "train.max_steps=3",
            "train.log_every=1",
        ]
    )
    # the train stage finds the scores of the base experiment (same key: the loss is not part of it)
    assert score.stage_key(cfg) == score.stage_key(base)
    manifest = train.run(cfg)
    assert manifest.counts["steps"] == 3
    log = [json.loads(line) for line in (stage_dir(cfg, "train") / train.LOG).read_text().splitlines()]
    assert all(record["grad_norm"] > 0 for record in log)
    assert (stage_dir(cfg, "train") / train.MODEL / "modules.json").is_file()
