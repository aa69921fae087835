"""The evaluate stage's significance tests against a baseline: metrics.json, results.md, errors."""

from __future__ import annotations

import json

import pytest

from distillrank.errors import ConfigError
from distillrank.stages import evaluate
from distillrank.workspace import read_manifest, stage_dir

SYSTEMS = "evaluate.systems=[bm25,teacher,student_init]"


def test_evaluate_records_significance_and_marks_the_table(make_cfg):
    cfg = make_cfg(SYSTEMS, "evaluate.baseline=bm25")
    evaluate.run(cfg)
    folder = stage_dir(cfg, "evaluate")
    metrics = json.loads((folder / "metrics.json").read_text())
    assert set(metrics) == {"bm25", "teacher", "student_init"}
    assert "significance" not in metrics["bm25"]
    for name in ("teacher", "student_init"):
        sig = metrics[name]["significance"]
        assert set(sig) == set(cfg.evaluate.measures)
        for entry in sig.values():
            assert set(entry) == {"p", "p_holm", "significant", "delta"}
            assert 0.0 <= entry["p"] <= entry["p_holm"] <= 1.0
        # delta is the difference of the means over the same (all judged) queries
        m = cfg.evaluate.measures[0]
        assert sig[m]["delta"] == pytest.approx(metrics[name]["metrics"][m] - metrics["bm25"]["metrics"][m])
    # the per-system caches do not depend on the baseline
    assert "significance" not in json.loads((folder / "teacher" / "metrics.json").read_text())
    results = (folder / "results.md").read_text()
    assert "significantly better / worse than bm25" in results and "Holm" in results and "0.05" in results

    # another baseline / alpha rebuilds the table but re-uses every system's results
    mtime = (folder / "teacher" / "metrics.json").stat().st_mtime_ns
    key = read_manifest(folder).key
    other = make_cfg(SYSTEMS, "evaluate.baseline=teacher", "evaluate.alpha=0.01")
    evaluate.run(other)
    assert read_manifest(folder).key != key
    assert (folder / "teacher" / "metrics.json").stat().st_mtime_ns == mtime
    metrics = json.loads((folder / "metrics.json").read_text())
    assert "significance" not in metrics["teacher"] and "significance" in metrics["bm25"]
    assert "than teacher" in (folder / "results.md").read_text()


def test_no_baseline_no_tests(make_cfg):
    cfg = make_cfg("evaluate.systems=[bm25]", "evaluate.baseline=null")
    evaluate.run(cfg)
    folder = stage_dir(cfg, "evaluate")
    assert "significance" not in json.loads((folder / "metrics.json").read_text())["bm25"]
    assert "Holm" not in (folder / "results.md").read_text()


def test_unknown_baseline_fails_before_any_work(make_cfg):
    cfg = make_cfg(SYSTEMS, "evaluate.baseline=nonexistent")
    with pytest.raises(ConfigError, match=r"nonexistent.*\['bm25', 'teacher', 'student_init'\]"):
        evaluate.run(cfg)
    assert not (stage_dir(cfg, "evaluate") / "bm25").exists()
