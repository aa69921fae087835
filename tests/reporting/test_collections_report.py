"""``distillrank report`` on an experiment evaluated on two collections (``evaluate.collections``)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import make_tiny_models
import pytest
from conftest import tiny_overrides

from distillrank import pipeline
from distillrank.reporting import report
from distillrank.reporting.collect import discover, read_evaluation
from distillrank.validation import compose


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tiny_beir, tiny_bi_encoder) -> Path:
    second = make_tiny_models.make_tiny_beir(tmp_path_factory.mktemp("other") / "tiny2", seed=1)
    ws = tmp_path_factory.mktemp("report_collections") / "runs"
    cfg = compose(
        [
            *tiny_overrides(ws, tiny_beir, tiny_bi_encoder),
            "experiment=ood",
            "train.max_steps=2",
            "evaluate.latency_queries=0",
            "evaluate.systems=[bm25,student]",
            f"evaluate.collections=[{second}]",
        ]
    )
    pipeline.run(cfg)
    return ws


def _row(markdown: str, name: str) -> list[str]:
    line = next(line for line in markdown.splitlines() if line.startswith(f"| {name} |"))
    return [c.strip() for c in line.strip().strip("|").split("|")]


def test_read_evaluation_gives_each_collection_then_the_mean(workspace):
    (exp,) = discover(workspace)
    groups = read_evaluation(exp.folder("evaluate"), exp.manifest("evaluate"))
    assert [t for t, _ in groups] == ["tiny / test", "tiny2 / test", "mean over 2 collections"]
    tiny, tiny2, mean = (ev for _, ev in groups)
    assert tiny.header == "tiny / test: 8 queries, 60 passages" and tiny.baseline == "bm25"
    assert set(tiny.per_query) == set(tiny2.per_query) == {"bm25", "student", "hybrid_rrf", "hybrid"}
    on_disk = json.loads((exp.folder("evaluate") / "tiny2" / "student" / "metrics.json").read_text())
    assert tiny2.per_query["student"] == on_disk["per_query"]
    assert set(tiny.significance()) == {"student", "hybrid_rrf", "hybrid"}
    assert tiny.bm25_significance() is None  # the baseline is bm25: the main tests are against it
    assert mean.mean and mean.per_query == {} and mean.significance() is None
    assert mean.measures == ["nDCG@10", "RR@10", "R@100"]


def test_report_has_a_table_and_a_delta_figure_per_collection_and_the_mean(workspace, tmp_path):
    out = report.run(workspace, output=tmp_path / "r", pairs=20)
    text = out.markdown.read_text()
    metrics = json.loads((workspace / "ood" / "evaluate" / "metrics.json").read_text())
    section = text.split("### Metrics", 1)[1].split("### Training", 1)[0]
    blocks = re.split(r"^#### ", section, flags=re.M)[1:]
    assert [b.splitlines()[0] for b in blocks] == ["tiny / test", "tiny2 / test", "mean over 2 collections"]
    for block, name in zip(blocks[:2], ("tiny", "tiny2"), strict=True):
        assert "significantly better / worse than bm25" in block
        student = metrics["collections"][name]["systems"]["student"]["metrics"]["nDCG@10"]
        assert float(_row(block, "student")[1].rstrip("†‡")) == pytest.approx(student, abs=6e-4)
    assert "Macro average over 2 collections" in blocks[2] and "significantly" not in blocks[2]
    mean = metrics["mean"]["systems"]["student"]["metrics"]["nDCG@10"]
    assert float(_row(blocks[2], "student")[1]) == pytest.approx(mean, abs=6e-4)
    assert sorted(p.name for p in out.figures if "deltas" in p.name) == [
        "ood-deltas-tiny2_test.png",
        "ood-deltas-tiny_test.png",
    ]
    summary = text.split("## Summary", 1)[1].split("## ood", 1)[0]
    assert float(_row(summary, "ood (mean over 2 collections)")[1]) == pytest.approx(mean, abs=6e-4)
    assert _row(summary, "ood (tiny2 / test)")
