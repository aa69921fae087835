"""``distillrank report`` on a tiny workspace made by the real pipeline, and its pieces on hand examples."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import tiny_overrides
from torch import nn
from typer.testing import CliRunner

from distillrank import pipeline
from distillrank.cli import app
from distillrank.errors import DistillrankError
from distillrank.ranking import RankerKind
from distillrank.reporting import plots, report
from distillrank.reporting.collect import Evaluation, discover
from distillrank.reporting.deltas import query_deltas
from distillrank.reporting.document import table_html
from distillrank.reporting.scorers import (
    StudentUnavailable,
    load_trained_student,
    sample_pairs,
    score_aligned,
)
from distillrank.stages import mine, score
from distillrank.students.base import Description, Student
from distillrank.validation import compose
from distillrank.workspace import Manifest

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tiny_beir, tiny_bi_encoder) -> Path:
    """A workspace with one experiment run through every stage (3 training steps)."""
    ws = tmp_path_factory.mktemp("report_ws") / "runs"
    cfg = compose(
        [
            *tiny_overrides(ws, tiny_beir, tiny_bi_encoder),
            "experiment=demo",
            "train.max_steps=3",
            "train.log_every=1",
            "evaluate.latency_queries=2",
        ]
    )
    pipeline.run(cfg)
    return ws


@pytest.fixture(scope="module")
def written(workspace: Path) -> report.ReportPaths:
    return report.run(workspace, html=True, pairs=50, seed=1)


def _row(markdown: str, name: str) -> list[str]:
    line = next(line for line in markdown.splitlines() if line.startswith(f"| {name} |"))
    return [c.strip() for c in line.strip().strip("|").split("|")]


def test_report_tables_match_metrics_json(workspace, written):
    text = written.markdown.read_text()
    metrics = json.loads((workspace / "demo" / "evaluate" / "metrics.json").read_text())
    header = [
        c.strip() for c in text.split("### Metrics", 1)[1].split("\n| ", 1)[1].split("\n")[0].split("|")
    ]
    measures = ["nDCG@10", "RR@10", "R@100"]
    assert header[1:4] == measures
    section = text.split("## demo", 1)[1]
    for system in ("bm25", "teacher", "student_init", "student"):
        cells = _row(section, system)
        for i, m in enumerate(measures, start=1):
            value = float(re.sub(r"[†‡]", "", cells[i]))
            assert value == pytest.approx(metrics[system]["metrics"][m], abs=6e-4)
    assert "significantly better / worse than bm25" in section
    assert "latency ms (p50 / p95)" in section
    # the summary has one row per experiment with the student's values
    summary = text.split("## Summary", 1)[1].split("## demo", 1)[0]
    assert "| experiment |" in summary
    cells = _row(summary, "demo")
    assert float(re.sub(r"[†‡]", "", cells[1])) == pytest.approx(
        metrics["student"]["metrics"]["nDCG@10"], abs=6e-4
    )


def test_report_figures_are_pngs_and_linked(written):
    names = sorted(p.name for p in written.figures)
    assert names == ["demo-deltas.png", "demo-scores.png", "demo-training.png", "quality-speed.png"]
    text = written.markdown.read_text()
    for path in written.figures:
        assert path.read_bytes()[:8] == PNG and path.stat().st_size > 1000
        assert f"](figures/{path.name})" in text
    assert re.search(r"better on \d+, worse on \d+ and tied on \d+ of 8 queries", text)
    assert "sampled training triples (seed 1)" in text
    assert not list(written.folder.parent.glob(".report*"))  # no temporary folder left


def test_html_is_self_contained(written):
    page = written.html.read_text()
    assert page.startswith("<!DOCTYPE html>") and page.count("data:image/png;base64,") == 4
    assert "<td" in page and "<h2>demo</h2>" in page and "](figures/" not in page


def test_per_query_delta_hand_example():
    student = {
        "a": {"nDCG@10": 0.5},
        "b": {"nDCG@10": 0.2},
        "c": {"nDCG@10": 1.0},
        "d": {"nDCG@10": 0.3},
        "x": {"nDCG@10": 1.0},
    }
    baseline = {
        "a": {"nDCG@10": 0.25},
        "b": {"nDCG@10": 0.6},
        "c": {"nDCG@10": 1.0},
        "d": {"nDCG@10": 0.0},
        "y": {"nDCG@10": 0.0},
    }
    d = query_deltas(student, baseline, "nDCG@10")
    assert d.qids == ["d", "a", "c", "b"]  # x and y are not shared
    np.testing.assert_allclose(d.deltas, [0.3, 0.25, 0.0, -0.4])
    assert (d.wins, d.losses, d.ties) == (2, 1, 1)
    assert d.mean == pytest.approx(0.0375)


def test_sample_pairs_is_seeded_capped_and_skips_dropped(tmp_path):
    table = pa.table(
        {
            "qid": ["q1", "q1", "q1", "q1", "q2", "q2", "q3"],
            "docid": ["p", "n1", "n2", "n3", "p", "n1", "n1"],
            "label": [1, 0, 0, 0, 1, 0, 0],
            "teacher": [5.0, 1.0, 2.0, 9.0, 4.0, 3.0, 0.0],
            "dropped": [False, False, False, True, False, False, False],
        }
    )
    pq.write_table(table, tmp_path / "scores.parquet")
    every = sample_pairs(tmp_path / "scores.parquet", 100, seed=0)
    triples = sorted(zip(every.qids, every.pos, every.neg, every.teacher_pos, every.teacher_neg, strict=True))
    assert triples == [("q1", "p", "n1", 5.0, 1.0), ("q1", "p", "n2", 5.0, 2.0), ("q2", "p", "n1", 4.0, 3.0)]
    some = sample_pairs(tmp_path / "scores.parquet", 2, seed=3)
    assert len(some) == 2 and some.qids == sample_pairs(tmp_path / "scores.parquet", 2, seed=3).qids


class _OddStudent(Student):
    """A student kind of this test only: a folder with ``weights.odd``; scores len(q) - len(p)."""

    kind = RankerKind.LEXICAL
    model_type = nn.Identity
    description = Description("an odd student", "none", "", "weights.odd (odd)")

    @classmethod
    def detect(cls, folder):
        return (folder / "weights.odd").is_file()

    @classmethod
    def load(cls, folder, max_length=None):
        return cls(nn.Identity(), source=folder)

    def score_pairs(self, pairs, runtime, *, batch_size=None, progress=False):
        return np.array([float(len(q) - len(p)) for q, p in zip(pairs.query_texts(), pairs.passage_texts(),
                                                                strict=True)])


def test_the_report_scores_any_student_kind_the_factory_knows(tmp_path, monkeypatch):
    from distillrank.students import factory

    with pytest.raises(StudentUnavailable, match="does not exist"):
        load_trained_student(tmp_path / "none")
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "weights.odd").write_text("not a model")
    with pytest.raises(StudentUnavailable, match="not a saved student"):  # no kind recognises it
        load_trained_student(tmp_path / "odd")

    monkeypatch.setattr(factory, "KINDS", (*factory.KINDS, _OddStudent))  # a new kind: one more entry
    student = load_trained_student(tmp_path / "odd")
    np.testing.assert_array_equal(score_aligned(student, ["abc", "a"], ["a", "abc"]), [2.0, -2.0])


def test_bi_encoder_student_scores_aligned_pairs(workspace):
    student = load_trained_student(workspace / "demo" / "train" / "model")
    scores = score_aligned(
        student,
        ["cells divide", "cells divide", "a star"],
        ["a passage about cells", "stars", "a passage about cells"],
    )
    assert scores.shape == (3,) and np.isfinite(scores).all()
    assert scores[1] == pytest.approx(score_aligned(student, ["cells divide"], ["stars"])[0], abs=1e-5)


def test_workspace_with_only_mine_and_score(tmp_path, tiny_beir, tiny_bi_encoder):
    cfg = compose([*tiny_overrides(tmp_path / "runs", tiny_beir, tiny_bi_encoder), "experiment=early"])
    mine.run(cfg)
    score.run(cfg)
    out = report.run(tmp_path / "runs", output=tmp_path / "out")
    text = out.markdown.read_text()
    assert out.folder == tmp_path / "out" and out.figures == []
    assert "No experiment has an evaluated student yet" in text
    assert "Not evaluated yet" in text and "Not trained yet" in text
    assert "No trained student to compare" in text


def test_missing_or_empty_workspace_and_unknown_experiment(tmp_path, workspace):
    with pytest.raises(DistillrankError, match="is not a folder"):
        report.run(tmp_path / "nowhere")
    (tmp_path / "empty" / "_cache").mkdir(parents=True)
    with pytest.raises(DistillrankError, match="holds no completed stage"):
        report.run(tmp_path / "empty")
    with pytest.raises(DistillrankError, match=r"no experiment \['other'\].*\['demo'\]"):
        report.run(workspace, experiments=["other"], output=tmp_path / "r")


def test_discover_nested_sweep_jobs_share_parent_stages(tmp_path):
    def done(folder: Path, stage: str) -> None:
        Manifest(stage=stage, key=stage, config={}, inputs={}).write(folder / stage)

    ws = tmp_path / "runs"
    for stage in ("mine", "score"):
        done(ws / "margin_mse", stage)
    for job in ("train.lr=0.001", "train.lr=0.002"):
        for stage in ("train", "evaluate"):
            done(ws / "margin_mse" / job, stage)
    done(ws / "_cache" / "x", "train")  # never an experiment
    done(ws / "logs" / "x", "train")
    found = discover(ws)
    assert [e.name for e in found] == ["margin_mse/train.lr=0.001", "margin_mse/train.lr=0.002"]
    assert found[0].folder("score") == ws / "margin_mse" / "score"
    assert found[0].folder("train") == ws / "margin_mse" / "train.lr=0.001" / "train"
    assert [e.name for e in discover(ws, ["margin_mse"])] == [e.name for e in found]


def test_table_html_keeps_alignment_and_legend():
    page = table_html("| system | nDCG@10 |\n|---|---:|\n| bm25 | 0.500† |\n\n† / ‡: better / worse.\n")
    assert "<th>nDCG@10</th>" in page and '<td style="text-align:right">0.500†</td>' in page
    assert "<p class='legend'>† / ‡: better / worse.</p>" in page


def test_cli_report(workspace, tmp_path):
    runner = CliRunner()
    result = runner.invoke(
        app,
        ["report", str(workspace), "--experiment", "demo", "--output", str(tmp_path / "r"), "--pairs", "20"],
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "r" / "report.md").is_file() and not (tmp_path / "r" / "report.html").exists()
    assert str(tmp_path / "r" / "report.md") in result.output
    missing = runner.invoke(app, ["report", str(tmp_path / "nowhere")])
    assert missing.exit_code == 2 and "is not a folder" in missing.output


# --------------------------------------------------------------------------- quality and speed
def test_quality_speed_figure_draws_every_system_with_its_numbers(workspace, tmp_path, monkeypatch):
    drawn: dict = {}
    real = plots.quality_speed

    def record(panels, path, measure="nDCG@10"):
        drawn.update(panels)
        return real(panels, path, measure)

    monkeypatch.setattr(report.plots, "quality_speed", record)
    out = report.run(workspace, output=tmp_path / "r", pairs=10)
    metrics = json.loads((workspace / "demo" / "evaluate" / "metrics.json").read_text())
    assert list(drawn) == ["tiny / test"]
    points = {p["system"]: p for p in drawn["tiny / test"]}
    assert set(points) == {"bm25", "teacher", "student_init", "student", "hybrid_rrf", "hybrid"}
    for system, point in points.items():
        assert point["quality"] == metrics[system]["metrics"]["nDCG@10"]
        assert point["passages_per_s"] == metrics[system]["passages_per_s"]
        assert point["latency_ms"] == metrics[system]["latency"]["median_ms"]
    assert points["bm25"]["passages_per_s"] is None and points["bm25"]["kind"] == "bm25"
    assert points["hybrid"]["kind"] == points["hybrid_rrf"]["kind"] == "hybrid"
    assert points["student"]["label"] == "demo" and points["hybrid"]["label"] == "demo: hybrid"
    figure = out.folder / "figures" / "quality-speed.png"
    assert figure in out.figures and figure.read_bytes()[:8] == PNG
    text = out.markdown.read_text()
    assert text.index("## Summary") < text.index("## Quality and speed") < text.index("## demo")
    assert "](figures/quality-speed.png)" in text and "dashed horizontal line" in text
    # the metrics section says how the hybrid systems fused their runs
    assert "Hybrid systems: `hybrid_rrf` = reciprocal-rank fusion" in text.split("## demo", 1)[1]


def _evaluation(results: dict, measures=("nDCG@10",), mean: bool = False) -> Evaluation:
    return Evaluation(folder=Path("."), results=results, measures=list(measures), baseline="bm25", alpha=0.05,
                      header="c / test: 3 queries, 9 passages", mean=mean)


def _result(key: str, ndcg: float, rate: float | None, latency: float | None) -> dict:
    return {"key": key, "metrics": {"nDCG@10": ndcg}, "passages_per_s": rate,
            "latency": {"median_ms": latency, "p95_ms": latency, "queries": 2} if latency else None}


def test_quality_speed_points_are_shared_once_and_skip_means(tmp_path, monkeypatch):
    drawn: dict = {}
    monkeypatch.setattr(report.plots, "quality_speed", lambda panels, path, measure: drawn.update(panels) or path)
    bm25 = _result("k-bm25", 0.5, None, 1.0)
    teacher = _result("k-teacher", 0.7, 50.0, 80.0)
    evaluations = {
        "a": [(None, _evaluation({"bm25": bm25, "teacher": teacher, "student": _result("k-a", 0.6, 400.0, 9.0)})),
              ("mean over 2 collections", _evaluation({"student": _result("x", 0.1, 1.0, 1.0)}, mean=True))],
        "b": [(None, _evaluation({"bm25": bm25, "teacher": teacher, "student": _result("k-b", 0.4, 800.0, None),
                                   "hybrid": _result("k-bh", 0.65, 800.0, 10.0)}))],
        "c": [(None, _evaluation({"student": _result("k-c", 0.9, 1.0, 1.0)}, measures=("RR@10",)))],
    }
    builder = report._Builder(tmp_path, tmp_path, 10, 0)
    builder.quality_speed(evaluations)
    (points,) = drawn.values()
    assert list(drawn) == ["c / test"]  # the collection, from the header
    labels = {p["label"]: (p["quality"], p["passages_per_s"], p["latency_ms"]) for p in points}
    assert labels == {
        "bm25": (0.5, None, 1.0),  # shared by a and b: once, unlabelled by experiment
        "teacher": (0.7, 50.0, 80.0),
        "a": (0.6, 400.0, 9.0),
        "b": (0.4, 800.0, None),
        "b: hybrid": (0.65, 800.0, 10.0),
    }  # no point from the mean, nor from c (no nDCG@10)


def test_quality_speed_plot_hand_points(tmp_path):
    panels = {
        "scifact / test": [
            {"label": "bm25", "kind": "bm25", "quality": 0.66, "passages_per_s": None, "latency_ms": 2.0},
            {"label": "teacher", "kind": "teacher", "quality": 0.70, "passages_per_s": 300.0, "latency_ms": 20.0},
            {"label": "exp", "kind": "student", "quality": 0.62, "passages_per_s": 2000.0, "latency_ms": None},
            {"label": "exp: hybrid", "kind": "hybrid", "quality": 0.72, "passages_per_s": 2000.0, "latency_ms": 9.0},
        ],
        "vaswani / test": [
            {"label": "bm25", "kind": "bm25", "quality": 0.45, "passages_per_s": None, "latency_ms": None},
        ],
    }
    path = plots.quality_speed(panels, tmp_path / "qs.png")
    assert path.read_bytes()[:8] == PNG and path.stat().st_size > 5000
