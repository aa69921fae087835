"""The four stages end to end on the tiny collection: outputs, skipping, reruns, caching, resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from distillrank import pipeline
from distillrank.builders import components
from distillrank.errors import ArtifactError, DistillrankError
from distillrank.stages import evaluate, mine, score, train
from distillrank.teachers import cache as teacher_cache
from distillrank.workspace import read_manifest, stage_dir


def _finished(cfg, stage: str) -> tuple[str, int]:
    """Identifies one completion of a stage: its key and when its manifest was written (ns)."""
    folder = stage_dir(cfg, stage)
    return read_manifest(folder).key, (folder / "manifest.json").stat().st_mtime_ns


def test_run_writes_every_artifact(make_cfg):
    cfg = make_cfg()
    manifests = pipeline.run(cfg)
    assert list(manifests) == ["mine", "score", "train", "evaluate"]

    candidates = pq.read_table(stage_dir(cfg, "mine") / mine.OUTPUT).to_pandas()
    negatives = candidates[candidates.label == 0]
    assert (negatives["rank"].between(2, 30)).all()
    assert negatives.groupby("qid").size().max() <= 4
    pairs = set(zip(candidates.qid, candidates.docid, strict=True))
    positives = candidates[candidates.label > 0]
    assert len(pairs) == len(candidates)  # a judged positive is never also sampled as a negative
    assert set(positives.qid) == set(candidates.qid)

    scores = pq.read_table(stage_dir(cfg, "score") / score.OUTPUT)
    assert scores.num_rows == len(candidates)
    assert np.isfinite(scores["teacher"].to_numpy()).all()

    model = stage_dir(cfg, "train") / train.MODEL
    assert (model / "modules.json").is_file() and (model / "README.md").is_file()
    log = [json.loads(line) for line in (stage_dir(cfg, "train") / train.LOG).read_text().splitlines()]
    assert log and log[-1]["step"] == manifests["train"].counts["steps"]

    ev = stage_dir(cfg, "evaluate")
    metrics = json.loads((ev / "metrics.json").read_text())
    # the trained bi-encoder is also fused with BM25 (evaluate.hybrid, on by default)
    assert list(metrics) == ["bm25", "teacher", "student_init", "student", "hybrid_rrf", "hybrid"]
    for name, result in metrics.items():
        assert set(result["metrics"]) == {"nDCG@10", "RR@10", "R@100"}
        lines = (ev / name / "run.trec").read_text().splitlines()
        assert lines and all(len(line.split()) == 6 for line in lines)
    assert metrics["bm25"]["metrics"]["nDCG@10"] > 0.5  # the tiny collection is lexical
    assert metrics["student"]["passages_per_s"] > 0
    for name in ("bm25", "teacher", "student"):  # single-query latency, timed end to end
        latency = metrics[name]["latency"]
        assert 0 < latency["median_ms"] <= latency["p95_ms"] and latency["queries"] > 0
    assert metrics["student"]["disk_mb"] > 0 and metrics["teacher"]["disk_mb"] > 0
    assert metrics["student_init"]["disk_mb"] is None  # truncated in memory, never saved
    assert "| student |" in (ev / "results.md").read_text()
    assert "latency ms (p50 / p95)" in (ev / "results.md").read_text()
    for stage in ("mine", "score", "train", "evaluate"):
        manifest = read_manifest(stage_dir(cfg, stage))
        assert manifest.versions["torch"] and manifest.wall_time_s > 0


def test_exported_student_loads_in_sentence_transformers(make_cfg):
    from sentence_transformers import SentenceTransformer

    from distillrank.models.bi_encoder import BiEncoder

    cfg = make_cfg("evaluate.systems=[bm25]")
    pipeline.run(cfg)
    path = stage_dir(cfg, "train") / train.MODEL
    ours = BiEncoder.load(path).encode(["a passage about cells", "another one"], "passage")
    theirs = SentenceTransformer(str(path), device="cpu").encode(["a passage about cells", "another one"])
    np.testing.assert_allclose(ours.numpy(), theirs, atol=1e-5)


def test_second_run_skips_and_a_change_reruns_from_the_first_affected_stage(make_cfg):
    cfg = make_cfg()
    pipeline.run(cfg)
    before = {s: _finished(cfg, s) for s in ("mine", "score", "train", "evaluate")}
    teacher_metrics = stage_dir(cfg, "evaluate") / "teacher" / "metrics.json"
    teacher_mtime = teacher_metrics.stat().st_mtime_ns

    pipeline.run(make_cfg())
    assert {s: _finished(cfg, s) for s in before} == before

    changed = make_cfg("train.lr=5e-4")
    pipeline.run(changed)
    after = {s: _finished(changed, s) for s in before}
    assert after["mine"] == before["mine"] and after["score"] == before["score"]
    assert after["train"] != before["train"] and after["evaluate"] != before["evaluate"]
    assert teacher_metrics.stat().st_mtime_ns == teacher_mtime  # the teacher was not re-evaluated

    pipeline.run(make_cfg("train.lr=5e-4", "force=true"))
    assert _finished(changed, "mine") != after["mine"]


def test_scores_are_reused_across_experiments_and_depths(make_cfg):
    first = make_cfg("experiment=a")
    mine.run(first)
    m1 = score.run(first)
    assert m1.counts["pairs_reused"] == 0 and m1.counts["pairs_scored"] == m1.counts["pairs"]

    deeper = make_cfg("experiment=b", "mining.num_negatives=8")
    mine.run(deeper)
    m2 = score.run(deeper)
    assert m2.counts["pairs"] > m1.counts["pairs"]
    assert m2.counts["pairs_reused"] > 0
    assert m2.counts["pairs_scored"] == m2.counts["pairs"] - m2.counts["pairs_reused"]
    a = pq.read_table(stage_dir(first, "score") / score.OUTPUT).to_pandas().set_index(["qid", "docid"])
    b = pq.read_table(stage_dir(deeper, "score") / score.OUTPUT).to_pandas().set_index(["qid", "docid"])
    common = a.index.intersection(b.index)
    np.testing.assert_array_equal(a.loc[common, "teacher"], b.loc[common, "teacher"])


def test_a_stage_needs_its_upstream_artifacts(make_cfg):
    cfg = make_cfg()
    with pytest.raises(ArtifactError, match="distillrank mine"):
        score.run(cfg)
    mine.run(cfg)
    score.run(cfg)
    with pytest.raises(ArtifactError, match="different config"):
        train.run(make_cfg("mining.num_negatives=2"))


def test_killed_scoring_keeps_nothing_partial_and_resumes(make_cfg, monkeypatch):
    cfg = make_cfg("score.shard_size=16")
    mine.run(cfg)
    monkeypatch.setattr(teacher_cache, "COVER", 2.0)  # pair by pair, through score_pairs (not the corpus embeddings)
    teacher_cls = type(components.teacher(cfg))
    original = teacher_cls.score_pairs
    calls = {"n": 0}

    def dies_on_third_shard(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("killed")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(teacher_cls, "score_pairs", dies_on_third_shard)
    with pytest.raises(KeyboardInterrupt):
        score.run(cfg)
    folder = stage_dir(cfg, "score")
    assert read_manifest(folder) is None and not (folder / score.OUTPUT).exists()
    with pytest.raises(ArtifactError):
        train.run(cfg)

    monkeypatch.setattr(teacher_cls, "score_pairs", original)
    resumed = score.run(cfg)
    assert resumed.counts["pairs_reused"] == 32  # two complete shards survived
    fresh = make_cfg(
        "experiment=fresh", "score.shard_size=16", "workspace=" + str(Path(cfg.workspace) / "other")
    )
    mine.run(fresh)
    score.run(fresh)
    got = pq.read_table(folder / score.OUTPUT).to_pandas()
    want = pq.read_table(stage_dir(fresh, "score") / score.OUTPUT).to_pandas()
    np.testing.assert_allclose(got["teacher"], want["teacher"], rtol=0, atol=1e-6)


def test_a_teacher_returning_nan_fails_naming_the_pair(make_cfg, monkeypatch):
    cfg = make_cfg()
    mine.run(cfg)
    monkeypatch.setattr(teacher_cache, "COVER", 2.0)  # pair by pair, through score_pairs
    teacher_cls = type(components.teacher(cfg))

    def nan_scores(self, pairs, *args, **kwargs):
        out = np.ones(len(pairs), dtype=np.float32)
        out[1] = np.nan
        return out

    monkeypatch.setattr(teacher_cls, "score_pairs", nan_scores)
    with pytest.raises(DistillrankError, match=r"returned nan for \(qid=\S+, docid=\S+\)"):
        score.run(cfg)
    assert read_manifest(stage_dir(cfg, "score")) is None


def test_bi_encoder_teacher_scores_through_the_shared_corpus_embeddings(make_cfg, monkeypatch, tmp_path):
    """Candidates covering most of the corpus: the teacher encodes the whole corpus once, into the
    cache feature distillation and evaluation read, and its scores equal pair-by-pair scoring."""
    cfg = make_cfg()
    mine.run(cfg)
    score.run(cfg)
    embeddings = list((Path(cfg.workspace) / "_cache" / "embeddings").glob("*/corpus.npy"))
    assert len(embeddings) == 1
    via_corpus = pq.read_table(stage_dir(cfg, "score") / score.OUTPUT).to_pandas()

    monkeypatch.setattr(teacher_cache, "COVER", 2.0)
    pairs = make_cfg("experiment=pairs", "workspace=" + str(tmp_path / "pairs"))
    mine.run(pairs)
    score.run(pairs)
    assert not (tmp_path / "pairs" / "_cache" / "embeddings").exists()
    by_pair = pq.read_table(stage_dir(pairs, "score") / score.OUTPUT).to_pandas()
    assert list(by_pair.docid) == list(via_corpus.docid)
    np.testing.assert_allclose(via_corpus["teacher"], by_pair["teacher"], rtol=0, atol=1e-5)

    # the teacher's evaluation reuses the matrix (one folder still) and still reports a rate
    monkeypatch.setattr(teacher_cache, "COVER", 0.5)
    train.run(cfg)
    evaluate.run(make_cfg("evaluate.systems=[teacher]", "evaluate.baseline=null"))
    assert len(list((Path(cfg.workspace) / "_cache" / "embeddings").glob("*/corpus.npy"))) == 1
    report = json.loads((stage_dir(cfg, "evaluate") / "metrics.json").read_text())
    assert report["teacher"]["passages_per_s"] > 0


def test_killed_training_leaves_no_model(make_cfg, monkeypatch):
    cfg = make_cfg()
    mine.run(cfg)
    score.run(cfg)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(train, "train_student", killed)
    with pytest.raises(KeyboardInterrupt):
        train.run(cfg)
    assert read_manifest(stage_dir(cfg, "train")) is None
    assert not (stage_dir(cfg, "train") / train.MODEL).exists()
    with pytest.raises(ArtifactError):
        evaluate.run(cfg)


def test_training_improves_the_student_on_the_training_signal(make_cfg):
    """The loss on the training triples goes down (the student learns the teacher's margins)."""
    cfg = make_cfg("train.epochs=3", "train.log_every=1", "evaluate.systems=[bm25]")
    pipeline.run(cfg)
    log = [json.loads(line) for line in (stage_dir(cfg, "train") / train.LOG).read_text().splitlines()]
    losses = [r["loss"] for r in log]
    third = max(len(losses) // 3, 1)
    assert np.mean(losses[-third:]) < np.mean(losses[:third])


def test_cross_encoder_teacher_scores_and_reranks(make_cfg, tiny_cross_encoder):
    cfg = make_cfg(
        "teacher=cross_encoder",
        f"teacher.model={tiny_cross_encoder}",
        "teacher.max_length=96",
        "evaluate.systems=[bm25,teacher]",
        "evaluate.rerank_depth=10",
    )
    mine.run(cfg)
    assert score.run(cfg).counts["pairs_scored"] > 0
    evaluate.run(cfg)
    metrics = json.loads((stage_dir(cfg, "evaluate") / "metrics.json").read_text())
    run = (stage_dir(cfg, "evaluate") / "teacher" / "run.trec").read_text().splitlines()
    per_query = {}
    for line in run:
        per_query.setdefault(line.split()[0], []).append(line)
    assert max(len(v) for v in per_query.values()) <= 10
    assert metrics["teacher"]["parameters"] > 0


def test_scifact_slice_end_to_end(tiny_args, shared_data_dir):
    """The real collection (a slice), the real BEIR reader and BM25, with the tiny models."""
    from distillrank.validation import compose

    cfg = compose(
        [a for a in tiny_args if not a.startswith("data")]
        + [
            "data=scifact",
            f"data.root={shared_data_dir}",
            "data.max_train_queries=24",
            "data.max_test_queries=20",
            "data.max_docs=300",
        ]
    )
    manifests = pipeline.run(cfg)
    assert manifests["mine"].counts["queries"] == 24
    assert manifests["evaluate"].counts["queries"] == 20
    metrics = json.loads((stage_dir(cfg, "evaluate") / "metrics.json").read_text())
    assert metrics["bm25"]["metrics"]["nDCG@10"] > 0.3
