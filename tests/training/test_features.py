"""Feature distillation: the FeatureSet's batches, the teacher-embedding cache, and label-free
training through the pipeline (a feature-only loss skips mine and score)."""

from __future__ import annotations

import json

import numpy as np
import torch

from distillrank import pipeline
from distillrank.builders import components
from distillrank.models.bi_encoder import BiEncoder
from distillrank.runtime import Runtime
from distillrank.stages import train
from distillrank.students import load_student
from distillrank.training.features import FeatureSet, cached_text_embeddings
from distillrank.workspace import read_manifest, stage_dir


def _set(n_q: int = 3, n_p: int = 5, d: int = 4) -> FeatureSet:
    q_targets = np.arange(n_q * d, dtype=np.float32).reshape(n_q, d)
    p_targets = 100 + np.arange(n_p * d, dtype=np.float32).reshape(n_p, d)
    return FeatureSet(
        [f"q{i}" for i in range(n_q)], q_targets, lambda rows: [f"p{r}" for r in rows], p_targets
    )


def test_batches_cover_every_text_once_per_epoch() -> None:
    fs = _set()
    batches = fs.batches(3, np.random.default_rng(0))
    assert fs.n_batches(3) == len(batches) == 3
    assert sorted(np.concatenate(batches).tolist()) == list(range(8))


def test_a_batch_splits_queries_and_passages_with_aligned_targets() -> None:
    fs = _set()
    batch = fs.batch([6, 1, 3, 0])  # passages 3 and 0 (ids 6, 3), queries 1 and 0
    assert batch.queries == ["q0", "q1"]
    assert batch.passages == ["p0", "p3"]
    expected = np.concatenate([fs.query_targets[[0, 1]], fs.passage_targets[[0, 3]]])
    np.testing.assert_array_equal(batch.targets.numpy(), expected)
    assert len(batch) == 4


def test_a_passage_sample_keeps_only_its_rows() -> None:
    fs = FeatureSet([], np.empty((0, 4), np.float32), lambda rows: [f"p{r}" for r in rows],
                    np.ones((10, 4), np.float32), passage_rows=np.array([2, 7]))
    assert len(fs) == 2 and fs.n_queries == 0
    assert fs.batch([0, 1]).passages == ["p2", "p7"]


def test_query_embeddings_are_cached(tmp_path, tiny_bi_encoder, monkeypatch) -> None:
    encoder = BiEncoder.load(tiny_bi_encoder)
    texts = ["cells divide", "mice and men"]
    first = cached_text_embeddings(encoder, texts, "query", tmp_path, "fp", 8, Runtime(),
                                   progress=False)
    torch.testing.assert_close(torch.from_numpy(first), encoder.encode(texts, "query"))
    assert len(list((tmp_path / "embeddings" / "texts").glob("*.npy"))) == 1

    def fail(*args, **kwargs):
        raise AssertionError("encoded again")

    monkeypatch.setattr(BiEncoder, "encode", fail)
    again = cached_text_embeddings(encoder, texts, "query", tmp_path, "fp", 8, Runtime(),
                                   progress=False)
    np.testing.assert_array_equal(first, again)


def test_label_free_training_skips_mine_and_score_and_moves_toward_the_teacher(make_cfg):
    cfg = make_cfg(
        "loss=feature", "train.epochs=4", "train.log_every=1", "train.lr=2e-3",
        "student.dropout=0", "student.pooling=cls",  # starts away from the mean-pooling teacher
        "data.train_split=null", "evaluate.systems=[student_init,student]", "evaluate.baseline=student_init",
        "evaluate.latency_queries=0",
    )
    assert not components.needs_scores(cfg)
    manifests = pipeline.run(cfg)
    assert list(manifests) == ["train", "evaluate"]
    assert read_manifest(stage_dir(cfg, "mine")) is None and read_manifest(stage_dir(cfg, "score")) is None
    counts = manifests["train"].counts
    assert counts["feature_texts"]["queries"] == 0  # no training split: passages alone
    assert counts["feature_texts"]["passages"] == len(components.collection(cfg).corpus) == 60
    log = [json.loads(line) for line in (stage_dir(cfg, "train") / train.LOG).read_text().splitlines()]
    losses = [r["loss"] for r in log]
    third = max(len(losses) // 3, 1)
    assert np.mean(losses[-third:]) < 0.9 * np.mean(losses[:third])  # the student moves toward the teacher
    assert load_student(stage_dir(cfg, "train") / train.MODEL).kind == "bi_encoder"


def test_feature_and_ranking_terms_train_together(make_cfg):
    cfg = make_cfg("loss=margin_mse_feature", "train.max_steps=3", "evaluate.systems=[bm25]")
    assert components.needs_scores(cfg) and components.uses_features(cfg)
    manifests = pipeline.run(cfg)
    assert list(manifests) == ["mine", "score", "train", "evaluate"]
    counts = manifests["train"].counts
    assert counts["steps"] == 3
    assert counts["feature_texts"]["queries"] > 0 and counts["feature_texts"]["passages"] > 0
    # the teacher's corpus embeddings were cached once for every later experiment
    assert list((stage_dir(cfg, "train").parents[1] / "_cache" / "embeddings").glob("*/corpus.npy"))
