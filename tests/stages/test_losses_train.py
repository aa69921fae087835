"""Every student × loss option trains through the train stage (`student=KIND loss=NAME`), and each
student kind exports a folder that :func:`distillrank.students.load_student` reads back."""

from __future__ import annotations

import importlib.util
import json

import pytest
from conftest import tiny_overrides

from distillrank.builders import components
from distillrank.config import conf_dir
from distillrank.errors import ConfigError
from distillrank.ranking import Pairs
from distillrank.runtime import Runtime
from distillrank.stages import mine, score, train
from distillrank.students import load_student
from distillrank.validation import compose
from distillrank.workspace import stage_dir

LOSSES = sorted(p.stem for p in (conf_dir() / "loss").glob("*.yaml"))
HAS_COLBERT = all(importlib.util.find_spec(f"distillrank.{m}.colbert") for m in ("models", "students"))
STUDENTS = {
    "bi_encoder": [],
    "cross_encoder": ["student.max_length=64", "student.num_layers=1"],
    "colbert": ["student.passage_max_length=64", "student.dim=16", "student.keep_layers=1"],
}
KINDS = [
    k
    for k in STUDENTS
    if k != "colbert" or (HAS_COLBERT and (conf_dir() / "student" / "colbert.yaml").is_file())
]


@pytest.fixture(scope="module")
def scored_workspace(tmp_path_factory, tiny_beir, tiny_bi_encoder):
    """One mined and scored workspace; every run trains over the same stage folder, reusing the scores."""
    args = tiny_overrides(tmp_path_factory.mktemp("losses") / "runs", tiny_beir, tiny_bi_encoder)
    cfg = compose(args)
    mine.run(cfg)
    score.run(cfg)
    return args


def _student_args(base: list[str], kind: str) -> list[str]:
    if kind == "bi_encoder":
        return base
    kept = [a for a in base if not a.startswith(("student.passage_max_length=", "student.num_layers="))]
    return [*kept, f"student={kind}", *STUDENTS[kind]]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("loss", LOSSES)
def test_every_student_and_loss_trains(scored_workspace, kind, loss):
    base = compose(scored_workspace)
    cfg = compose(
        [
            *_student_args(scored_workspace, kind),
            f"loss={loss}",
            "train.negatives_per_example=3",
            "train.max_steps=2",
            "train.log_every=1",
        ]
    )
    # the train stage finds the scores of the base experiment (same key: student and loss are not in it)
    assert score.stage_key(cfg) == score.stage_key(base)
    if kind == "cross_encoder" and components.uses_features(cfg):  # one score per pair: no embedding to distil
        with pytest.raises(ConfigError, match="cross_encoder student does not have"):
            train.run(cfg)
        return
    manifest = train.run(cfg)
    assert manifest.counts["steps"] == 2
    folder = stage_dir(cfg, "train")
    log = [json.loads(line) for line in (folder / train.LOG).read_text().splitlines()]
    assert all(record["grad_norm"] > 0 for record in log)
    assert (folder / train.MODEL / "README.md").is_file()
    if loss == "infonce":
        assert manifest.counts.get("in_batch_negatives", False) == (kind != "cross_encoder")
    if loss == LOSSES[0]:
        student = load_student(folder / train.MODEL)
        assert student.kind == kind
        scores = student.score_pairs(Pairs(["a query about cells"], ["cells", "mice"], [0, 0], [0, 1]), Runtime())
        assert scores.shape == (2,)
