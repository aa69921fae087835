"""The evaluate stage's hybrid systems: the trained student fused with BM25 (RRF and convex, α on dev queries)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import make_tiny_models
import pytest
from conftest import tiny_overrides
from omegaconf import OmegaConf

from distillrank import keys, pipeline
from distillrank.builders import components, evaluation
from distillrank.errors import ConfigError
from distillrank.evaluation.hybrid import ALPHA_GRID, DEFAULT_ALPHA, convex_runs, ranking, rrf_runs
from distillrank.evaluation.metrics import compute_metrics
from distillrank.evaluation.runs import read_trec_run
from distillrank.stages import evaluate
from distillrank.validation import compose
from distillrank.workspace import read_manifest, stage_dir

SYSTEMS = ["bm25", "teacher", "student", "hybrid_rrf", "hybrid"]


@pytest.fixture(scope="module")
def second_beir(tmp_path_factory) -> Path:
    """A second tiny collection, evaluated as a BEIR folder: no train split in its config."""
    return make_tiny_models.make_tiny_beir(tmp_path_factory.mktemp("hybrid_second") / "tiny2", seed=1)


def _args(ws: Path, tiny_beir: Path, tiny_bi_encoder: Path, second: Path) -> list[str]:
    return [
        *tiny_overrides(ws, tiny_beir, tiny_bi_encoder),
        "experiment=hybrid",
        "train.max_steps=2",
        "evaluate.latency_queries=2",
        "evaluate.systems=[bm25,teacher,student]",
        f"evaluate.collections=[{second}]",
    ]


@pytest.fixture(scope="module")
def done(tmp_path_factory, tiny_beir, tiny_bi_encoder, second_beir):
    ws = tmp_path_factory.mktemp("hybrid") / "runs"
    cfg = compose(_args(ws, tiny_beir, tiny_bi_encoder, second_beir))
    pipeline.run(cfg)
    return cfg


def _judged(beir: Path, split: str) -> dict[str, dict[str, int]]:
    qrels: dict[str, dict[str, int]] = {}
    for line in (beir / "qrels" / f"{split}.tsv").read_text().splitlines()[1:]:
        q, d, r = line.split("\t")
        if int(r) > 0:
            qrels.setdefault(q, {})[d] = int(r)
    return qrels


def test_hybrid_systems_fuse_the_student_and_bm25_run_files(done, tiny_beir, second_beir):
    folder = stage_dir(done, "evaluate")
    metrics = json.loads((folder / "metrics.json").read_text())
    for name, beir, sub in (("tiny", tiny_beir, folder), ("tiny2", second_beir, folder / "tiny2")):
        systems = metrics["collections"][name]["systems"]
        assert list(systems) == SYSTEMS
        student = read_trec_run(sub / "student" / "run.trec")
        bm25 = read_trec_run(sub / "bm25" / "run.trec")
        qrels = _judged(beir, "test")

        rrf = read_trec_run(sub / "hybrid_rrf" / "run.trec")
        expected = rrf_runs(student, bm25, k=60, depth=done.evaluate.top_k)
        assert set(rrf) == set(qrels)
        for q in rrf:
            assert rrf[q] == pytest.approx(expected[q], abs=1e-6)
            assert set(rrf[q]) == set(student[q]) | set(bm25.get(q, {}))  # the union (tiny: < top_k)
        assert systems["hybrid_rrf"]["hybrid"] == {"method": "rrf", "k": 60, "fused": ["student", "bm25"],
                                                     "depth": 100}

        info = systems["hybrid"]["hybrid"]
        convex = read_trec_run(sub / "hybrid" / "run.trec")
        expected = convex_runs(student, bm25, info["alpha"], depth=done.evaluate.top_k)
        for q in convex:
            assert convex[q] == pytest.approx(expected[q], abs=1e-6)
            assert ranking(convex[q])[:3] == ranking(expected[q])[:3]
        aggregate, _ = compute_metrics(qrels, expected, ["nDCG@10", "RR@10", "R@100"])
        assert systems["hybrid"]["metrics"] == pytest.approx(aggregate, abs=1e-6)

        for fused in ("hybrid_rrf", "hybrid"):  # speed and size are the student's; latency its own
            for field in ("passages_per_s", "parameters", "disk_mb"):
                assert systems[fused][field] == systems["student"][field]
            latency = systems[fused]["latency"]
            assert 0 < latency["median_ms"] <= latency["p95_ms"] and latency["queries"] == 2
            # tested against the baseline, bm25, like every other system: no second test needed
            assert set(systems[fused]["significance"]) == {"nDCG@10", "RR@10", "R@100"}
            assert "significance_bm25" not in systems[fused]
            saved = json.loads((sub / fused / "metrics.json").read_text())
            assert saved["per_query"] and saved["hybrid"] == systems[fused]["hybrid"]


def test_alpha_is_the_default_without_queries_the_student_never_trained_on(done):
    """tiny's only judged split besides test is the student's training split, and no query was
    held out of training: its queries are no dev queries, so α is the documented default; so it is
    for the BEIR folder without a train split."""
    folder = stage_dir(done, "evaluate")
    metrics = json.loads((folder / "metrics.json").read_text())
    for name in ("tiny", "tiny2"):
        default = metrics["collections"][name]["systems"]["hybrid"]["hybrid"]
        assert default["alpha"] == DEFAULT_ALPHA == 0.5 and default["alpha_from"] == "default"
        assert "curve" not in default
    text = (folder / "results.md").read_text()
    assert "| hybrid_rrf |" in text and "| hybrid |" in text
    assert (
        "α = 0.5, the default (the judged train queries of tiny are the student's training queries; "
        "train.dev_fraction holds some out to choose α on)" in text
    )
    assert "α = 0.5, the default (tiny2 has no judged dev or train split besides 'test')" in text
    assert "k = 60" in text
    manifest = read_manifest(folder)
    assert manifest.counts["hybrid_alpha"] == {"tiny": 0.5, "tiny2": 0.5}
    assert "hybrid/run.trec" in manifest.outputs and "tiny2/hybrid_rrf/run.trec" in manifest.outputs


def test_a_fixed_alpha_and_another_baseline_reuse_the_parts(done, tmp_path):
    cfg = done.copy()
    cfg.workspace = str(tmp_path / "runs")  # a copy: the other tests keep the module's results
    shutil.copytree(done.workspace, cfg.workspace)
    folder = stage_dir(cfg, "evaluate")
    kept = ["bm25", "teacher", "student", "hybrid_rrf"]
    before = {n: (folder / n / "run.trec").stat().st_mtime_ns for n in [*kept, "hybrid"]}
    cfg.evaluate.hybrid_alpha = 1.0
    cfg.evaluate.baseline = "teacher"
    assert keys.system_key(cfg, "hybrid") != keys.system_key(done, "hybrid")
    assert keys.system_key(cfg, "hybrid_rrf") == keys.system_key(done, "hybrid_rrf")
    evaluate.run(cfg)
    after = {n: (folder / n / "run.trec").stat().st_mtime_ns for n in [*kept, "hybrid"]}
    assert all(after[n] == before[n] for n in kept) and after["hybrid"] != before["hybrid"]

    metrics = json.loads((folder / "metrics.json").read_text())["collections"]["tiny"]["systems"]
    assert metrics["hybrid"]["hybrid"] == {"method": "convex", "alpha": 1.0, "alpha_from": "fixed",
                                           "fused": ["student", "bm25"], "depth": 100}
    # α = 1 ranks by the student alone: the same measures
    assert metrics["hybrid"]["metrics"]["nDCG@10"] == pytest.approx(metrics["student"]["metrics"]["nDCG@10"])
    # against the teacher (the baseline) and, for the hybrid systems, against bm25 too
    for fused in ("hybrid_rrf", "hybrid"):
        assert set(metrics[fused]["significance"]) == {"nDCG@10", "RR@10", "R@100"}
        against = metrics[fused]["significance_bm25"]
        for m, entry in against.items():
            delta = metrics[fused]["metrics"][m] - metrics["bm25"]["metrics"][m]
            assert entry["delta"] == pytest.approx(delta) and 0 <= entry["p"] <= entry["p_holm"] <= 1
    assert "significance_bm25" not in metrics["student"] and "significance_bm25" not in metrics["bm25"]
    text = (folder / "results.md").read_text()
    assert "▲ / ▼: a hybrid system significantly better / worse than bm25" in text
    assert "α = 1, fixed (evaluate.hybrid_alpha)" in text


def test_the_dev_sample_and_measure_are_in_the_key(done):
    held = done.copy()
    held.train.dev_fraction = 0.25  # α chosen on held-out training queries
    base = keys.system_key(held, "hybrid")
    assert base != keys.system_key(done, "hybrid")  # the default α without them
    for key, value in (("hybrid_dev_queries", 5), ("hybrid_measure", "RR@10")):
        cfg = held.copy()
        cfg.evaluate[key] = value
        assert keys.system_key(cfg, "hybrid") != base
        assert keys.system_key(cfg, "student") == keys.system_key(held, "student")
        done_too = done.copy()
        done_too.evaluate[key] = value  # the default α does not depend on how it would be chosen
        assert keys.system_key(done_too, "hybrid") == keys.system_key(done, "hybrid")
    cfg = held.copy()
    cfg.seed = done.seed + 1
    assert keys.system_key(cfg, "hybrid") != base
    cfg = done.copy()
    cfg.evaluate.hybrid_rrf_k = 10
    assert keys.system_key(cfg, "hybrid_rrf") != keys.system_key(done, "hybrid_rrf")


def test_hybrid_is_off_without_a_retrieving_bi_encoder_student(make_cfg):
    names = evaluation.system_names
    assert names(make_cfg()) == ["bm25", "teacher", "student_init", "student", "hybrid_rrf", "hybrid"]
    assert "hybrid" not in names(make_cfg("evaluate.hybrid=false"))
    assert "hybrid" not in names(make_cfg("evaluate.mode=rerank"))  # the student re-ranks BM25
    cross = make_cfg()
    cross.student._target_ = "distillrank.students.cross_encoder"  # a re-ranker student
    assert "hybrid" not in names(cross)
    assert "hybrid" not in names(make_cfg("evaluate.systems=[teacher,student]"))  # nothing to fuse with
    assert "hybrid" not in names(make_cfg("evaluate.systems=[bm25,student_init]"))
    clash = make_cfg()
    clash.evaluate.checkpoints = {"hybrid": "/nowhere"}
    with pytest.raises(ConfigError, match="clash with the hybrid systems"):
        names(clash)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("evaluate.hybrid_alpha=1.5", "hybrid_alpha must be in"),
        ("evaluate.hybrid_dev_queries=0", "hybrid_dev_queries must be a positive"),
        ("evaluate.hybrid_rrf_k=-1", "hybrid_rrf_k must be >= 0"),
        ("evaluate.hybrid_measure=nope", "hybrid_measure: 'nope' is not an ir_measures measure"),
    ],
)
def test_bad_hybrid_settings_fail_before_any_work(make_cfg, override, message):
    cfg = make_cfg(override)
    with pytest.raises(ConfigError, match=message):
        evaluate.run(cfg)
    assert not (stage_dir(cfg, "evaluate") / "bm25").exists()


def test_dev_split_prefers_dev_then_train_never_test(make_cfg):
    coll = components.collection(make_cfg())  # tiny: train and test qrels
    data = OmegaConf.create({"dev_split": None, "train_split": "train"})
    assert evaluation.dev_split(data, coll, "test") == "train"
    assert evaluation.dev_split(data, coll, "train") is None  # never the split evaluated
    assert evaluation.dev_split(OmegaConf.create({"dev_split": "test", "train_split": "train"}), coll, "x") == "test"
    assert evaluation.dev_split(OmegaConf.create({"dev_split": "nope", "train_split": None}), coll, "test") is None


def test_alpha_is_chosen_on_the_training_queries_held_out_of_training(tmp_path, tiny_beir, tiny_bi_encoder):
    """``train.dev_queries=N``: the train stage lists the N queries it set aside, and α is chosen on
    those alone (a grid search, ties broken toward the default), not on queries the student was
    trained on."""
    cfg = compose([
        *tiny_overrides(tmp_path / "runs", tiny_beir, tiny_bi_encoder),
        "train.max_steps=2",
        "train.dev_queries=5",
        "evaluate.latency_queries=0",
        "evaluate.systems=[bm25,student]",
    ])
    pipeline.run(cfg)
    held = (stage_dir(cfg, "train") / "dev_queries.txt").read_text().split()
    assert len(held) == 5 == len(set(held)) and set(held) <= set(_judged(tiny_beir, "train"))
    manifest = read_manifest(stage_dir(cfg, "train"))
    assert "dev_queries.txt" in manifest.outputs
    assert manifest.counts["dev_queries"] == 5 and manifest.counts["queries"] == 16 - 5  # not trained on
    folder = stage_dir(cfg, "evaluate")
    chosen = json.loads((folder / "metrics.json").read_text())["hybrid"]["hybrid"]
    assert chosen["alpha_from"] == "dev" and chosen["dev_split"] == "train" and chosen["measure"] == "nDCG@10"
    assert chosen["dev_queries"] == 5 and chosen["dev_held_out"] is True
    curve = {float(a): v for a, v in chosen["curve"].items()}
    assert sorted(curve) == list(ALPHA_GRID)
    best = max(curve.values())
    assert chosen["dev_value"] == curve[chosen["alpha"]] == best
    assert chosen["alpha"] == min((a for a, v in curve.items() if v >= best - 1e-12), key=lambda a: (abs(a - 0.5), a))
    assert f"α = {chosen['alpha']:g}, chosen on 5 held-out train queries by nDCG@10" in (folder / "results.md").read_text()
    # holding queries out changes how α is chosen, so the hybrid's key
    assert keys.system_key(cfg, "hybrid") != keys.system_key(compose([
        *tiny_overrides(tmp_path / "runs", tiny_beir, tiny_bi_encoder), "train.max_steps=2",
        "evaluate.latency_queries=0", "evaluate.systems=[bm25,student]",
    ]), "hybrid")


@pytest.mark.parametrize(
    "overrides, held_out",
    [((), False), (("train.dev_queries=3",), True), (("train.dev_fraction=0.2",), True)],
)
def test_the_hybrid_key_says_when_alpha_is_chosen_on_held_out_queries(make_cfg, overrides, held_out):
    """``train.dev_fraction`` holds queries out as ``train.dev_queries`` does: the hybrid's key says so."""
    cfg = make_cfg("evaluate.systems=[bm25,student]", *overrides)
    what = keys._hybrid_what(cfg, "hybrid", evaluation.main_target(cfg))
    if held_out:
        assert what["alpha"] == "dev" and what["held_out"] is True
    else:  # the student's own training queries are no dev queries: the default α
        assert what["alpha"] == "default"
