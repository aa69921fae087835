"""The extension paths of CONTRIBUTING.md: a teacher and a student kind defined here, in a test
module, go through the stages as the built-in ones do.

* ``ToyTeacher`` (a teacher: one class, and a config node where ``conf/teacher/<name>.yaml`` would
  be) scores pairs in the score stage and re-ranks BM25 in evaluation, chosen by what it declares.
* ``ToyStudent`` (a student kind: one class with its model, a config node where
  ``conf/student/<name>.yaml`` would be, and one entry in ``students.factory.KINDS``) trains, is
  exported, detected in its folder, loaded back and re-ranks in evaluation.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from omegaconf import OmegaConf, open_dict
from torch import nn

from distillrank import pipeline
from distillrank.builders import components, evaluation, training
from distillrank.ranking import Pairs, Ranker, RankerKind
from distillrank.runtime import Runtime
from distillrank.stages import evaluate, mine, score, train
from distillrank.students import factory
from distillrank.students.base import BatchScores, Description, Student
from distillrank.teachers.base import Teacher
from distillrank.workspace import stage_dir


def _overlap(query: str, passage: str) -> float:
    """How many distinct lower-cased words the two texts share."""
    words = lambda text: set(re.findall(r"\w+", text.lower()))  # noqa: E731
    return float(len(words(query) & words(passage)))


# --------------------------------------------------------------------------- a new teacher
class ToyTeacher(Teacher):
    """Word overlap plus a bonus: a lexical re-ranker with no weights."""

    kind = RankerKind.LEXICAL

    def __init__(self, bonus: float = 0.0) -> None:
        self.bonus = float(bonus)

    def identity(self, runtime: Runtime) -> dict:
        return {"kind": "toy_overlap", "bonus": self.bonus}

    def score_pairs(self, pairs: Pairs, runtime: Runtime, *, batch_size=None, progress=False) -> np.ndarray:
        texts = zip(pairs.query_texts(), pairs.passage_texts(), strict=True)
        return np.array([_overlap(q, p) + self.bonus for q, p in texts], dtype=np.float32)


# --------------------------------------------------------------------------- a new student kind
TOY_FILE = "toy_student.json"


class ToyModel(nn.Module):
    """``scale * overlap(query, passage) + shift``: two trainable numbers."""

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(scale)))
        self.shift = nn.Parameter(torch.tensor(0.0))

    def forward(self, queries, passages) -> torch.Tensor:
        overlap = torch.tensor([_overlap(q, p) for q, p in zip(queries, passages, strict=True)])
        return self.scale * overlap.to(self.scale.device) + self.shift

    def save(self, path, model_card: str | None = None) -> Path:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        (path / TOY_FILE).write_text(json.dumps({"scale": self.scale.item(), "shift": self.shift.item()}))
        (path / "README.md").write_text(model_card or "")
        return path

    @classmethod
    def load(cls, path: Path) -> ToyModel:
        values = json.loads((Path(path) / TOY_FILE).read_text())
        model = cls(values["scale"])
        with torch.no_grad():
            model.shift.fill_(values["shift"])
        return model


class ToyStudent(Student):
    """The student kind of :class:`ToyModel`: it re-ranks (it cannot retrieve)."""

    kind = RankerKind.LEXICAL
    model_type = ToyModel
    description = Description("a toy overlap student", "distillrank", "student = load_student(PATH)", f"{TOY_FILE} (toy)")

    @classmethod
    def detect(cls, folder: Path) -> bool:
        return (folder / TOY_FILE).is_file()

    @classmethod
    def load(cls, folder: Path, max_length: int | None = None) -> ToyStudent:
        return cls(ToyModel.load(folder), source=folder).eval()

    def forward(self, queries, passages, index: torch.Tensor, in_batch: bool = False) -> BatchScores:
        rows = index.cpu().tolist()
        scores = self.model([queries[b] for b, row in enumerate(rows) for _ in row],
                            [passages[j] for row in rows for j in row])
        return BatchScores(scores.view(len(rows), -1))

    def score_pairs(self, pairs: Pairs, runtime: Runtime, *, batch_size=None, progress=False) -> np.ndarray:
        with torch.no_grad():
            return self.model(pairs.query_texts(), pairs.passage_texts()).float().cpu().numpy()


@pytest.fixture
def toy_kinds(monkeypatch):
    """The toy student kind as one more entry of the factory's list."""
    monkeypatch.setattr(factory, "KINDS", (*factory.KINDS, ToyStudent))


def _with(cfg, **nodes):
    """``cfg`` with whole config nodes replaced (what a new ``conf/<group>/<name>.yaml`` would give)."""
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    with open_dict(cfg):
        for key, node in nodes.items():
            cfg[key] = OmegaConf.create(node)
    return cfg


def _run_lists(cfg, system: str) -> dict[str, dict[str, float]]:
    run: dict[str, dict[str, float]] = {}
    for line in (stage_dir(cfg, "evaluate") / system / "run.trec").read_text().splitlines():
        qid, _, docid, _, value, _ = line.split()
        run.setdefault(qid, {})[docid] = float(value)
    return run


def _bm25_top(cfg, depth: int) -> dict[str, set[str]]:
    coll = components.collection(cfg)
    split = cfg.data.test_split
    queries = [(q, t) for q, t in coll.split_queries(split) if q in coll.qrels[split]]
    rows, _ = components.bm25_index(cfg, coll).search([t for _, t in queries], depth, progress=False)
    ids = coll.doc_ids()
    return {q: {ids[r] for r in rows[i] if r >= 0} for i, (q, _) in enumerate(queries)}


def test_the_toys_are_rankers():
    assert isinstance(ToyTeacher(), Ranker)
    assert isinstance(ToyStudent(ToyModel()), Ranker)


def test_a_teacher_from_a_test_module_scores_and_re_ranks_through_the_stages(make_cfg):
    target = f"{__name__}.ToyTeacher"
    cfg = _with(
        make_cfg("allow_external_targets=true", "evaluate.systems=[bm25,teacher]", "evaluate.rerank_depth=5",
                 "evaluate.latency_queries=2", "evaluate.baseline=null"),
        teacher={"_target_": target, "bonus": 0.5},
    )
    assert evaluation.reranks(cfg, "teacher")  # it does not retrieve: it re-ranks the first stage
    mine.run(cfg)
    manifest = score.run(cfg)
    assert manifest.counts["pairs_scored"] == manifest.counts["pairs"] > 0
    table = pq.read_table(stage_dir(cfg, "score") / score.OUTPUT).to_pandas()
    query_text = dict(training.train_queries(cfg))
    passages = training.passages(cfg)(list(table["docid"]))
    expected = [_overlap(query_text[q], p) + 0.5 for q, p in zip(table["qid"], passages, strict=True)]
    np.testing.assert_allclose(table["teacher"], expected)

    evaluate.run(cfg)
    run, first = _run_lists(cfg, "teacher"), _bm25_top(cfg, 5)
    coll = components.collection(cfg)
    queries = dict(coll.split_queries(cfg.data.test_split))
    for qid, scored in run.items():
        assert set(scored) == first[qid]  # BM25's top 5, re-ordered by the toy's scores
        for docid, value in scored.items():
            text = coll.passage_texts([coll.doc_row(docid)])[0]
            assert value == pytest.approx(_overlap(queries[qid], text) + 0.5, abs=1e-6)


def test_a_student_kind_from_a_test_module_trains_exports_and_re_ranks(make_cfg, toy_kinds):
    target = f"{__name__}.ToyModel"
    cfg = _with(
        make_cfg("allow_external_targets=true", "train.max_steps=3", "evaluate.systems=[bm25,student]",
                 "evaluate.rerank_depth=5", "evaluate.latency_queries=0", "evaluate.baseline=bm25"),
        student={"_target_": target, "scale": 2.0},
    )
    assert factory.kind_of_builder(ToyModel) is ToyStudent
    assert evaluation.reranks(cfg, "student") and not evaluation.hybrid_enabled(cfg)
    outputs = pipeline.run(cfg)
    assert outputs["train"].counts["steps"] == 3
    folder = stage_dir(cfg, "train") / train.MODEL
    assert factory.detect(folder) is ToyStudent
    assert "# " + str(cfg.experiment) + ": a toy overlap student" in (folder / "README.md").read_text()
    student = factory.load_student(folder)
    assert isinstance(student, ToyStudent) and student.weights_folder() == folder

    run, first = _run_lists(cfg, "student"), _bm25_top(cfg, 5)
    coll = components.collection(cfg)
    queries = dict(coll.split_queries(cfg.data.test_split))
    for qid, scored in run.items():
        assert set(scored) == first[qid]
        docids = list(scored)
        want = student.score_pairs(
            Pairs.aligned([queries[qid]] * len(docids), coll.passage_texts([coll.doc_row(d) for d in docids])),
            Runtime(),
        )
        np.testing.assert_allclose([scored[d] for d in docids], want, rtol=0, atol=1e-5)
    metrics = json.loads((stage_dir(cfg, "evaluate") / "metrics.json").read_text())
    assert metrics["student"]["parameters"] == 2 and "significance" in metrics["student"]
