"""CrossEncoderModel and the teachers: scores equal direct scoring; fingerprints."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from distillrank.models.bi_encoder import BiEncoder
from distillrank.models.cross_encoder import CrossEncoderModel
from distillrank.ranking import Pairs
from distillrank.runtime import Runtime
from distillrank.teachers import BiEncoderTeacher, CrossEncoderTeacher
from distillrank.teachers.base import describe

from .pairs import ATOL, PAIR_P, PAIR_Q, PASSAGES, QUERIES


@pytest.fixture(scope="module")
def cross_encoder(tiny_cross_encoder: Path) -> CrossEncoderModel:
    return CrossEncoderModel.load(tiny_cross_encoder, max_length=128)


def _one_by_one(model: CrossEncoderModel, queries: list[str], passages: list[str]) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        return np.array(
            [model([q], [p]).item() for q, p in zip(queries, passages, strict=True)], dtype=np.float32
        )


# ----------------------------------------------------------------------------- CrossEncoderModel
@pytest.mark.parametrize("batch_size", [1, 3, 64])
def test_predict_equals_unbatched_scoring_in_input_order(
    cross_encoder: CrossEncoderModel, batch_size: int
) -> None:
    queries = [QUERIES[i] for i in PAIR_Q]
    passages = [PASSAGES[i] for i in PAIR_P]
    lengths = [len(q) + len(p) for q, p in zip(queries, passages, strict=True)]
    assert lengths != sorted(lengths, reverse=True)  # length sorting really permutes
    scores = cross_encoder.predict(queries, passages, batch_size=batch_size)
    assert scores.dtype == np.float32 and scores.shape == (len(queries),)
    expected = _one_by_one(cross_encoder, queries, passages)
    np.testing.assert_allclose(scores, expected, atol=ATOL, rtol=0)
    assert np.ptp(expected) > 0.05  # distinct scores: a permutation would be caught


def test_predict_pair_order_matters(cross_encoder: CrossEncoderModel) -> None:
    # (q, p) and (p, q) are different inputs, so predict must not confuse the two lists.
    a = cross_encoder.predict(QUERIES[:2], PASSAGES[:2])
    b = cross_encoder.predict(PASSAGES[:2], QUERIES[:2])
    assert not np.allclose(a, b, atol=1e-4)


def test_predict_length_mismatch_raises(cross_encoder: CrossEncoderModel) -> None:
    with pytest.raises(ValueError):
        cross_encoder.predict(QUERIES[:2], PASSAGES[:3])


def test_two_logit_model_scores_log_prob_of_relevant_class(cross_encoder: CrossEncoderModel) -> None:
    class TwoLogits(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, input_ids, **kwargs):
            n = input_ids.shape[0]
            logits = torch.tensor([[0.0, 0.0], [1.0, 3.0], [2.0, -1.0]])[:n]
            return type("Out", (), {"logits": logits})()

    model = CrossEncoderModel(TwoLogits(), cross_encoder.tokenizer)
    with torch.no_grad():
        scores = model(QUERIES[:3], PASSAGES[:3])
    expected = torch.log_softmax(torch.tensor([[0.0, 0.0], [1.0, 3.0], [2.0, -1.0]]), dim=-1)[:, 1]
    torch.testing.assert_close(scores, expected)


def test_cross_encoder_save_round_trip(cross_encoder: CrossEncoderModel, tmp_path: Path) -> None:
    out = cross_encoder.save(tmp_path / "ce")
    before = cross_encoder.predict(QUERIES, PASSAGES[:4])
    after = CrossEncoderModel.load(out, max_length=128).predict(QUERIES, PASSAGES[:4])
    np.testing.assert_allclose(after, before, atol=ATOL, rtol=0)


# ----------------------------------------------------------------------------- teachers
def test_cross_encoder_teacher_scores_pairs(
    tiny_cross_encoder: Path, cross_encoder: CrossEncoderModel
) -> None:
    teacher = CrossEncoderTeacher(str(tiny_cross_encoder), max_length=128, batch_size=3)
    scores = teacher.score_pairs(Pairs(QUERIES, PASSAGES, PAIR_Q, PAIR_P), Runtime(), progress=False)
    assert scores.dtype == np.float32 and scores.shape == (len(PAIR_Q),)
    expected = _one_by_one(cross_encoder, [QUERIES[i] for i in PAIR_Q], [PASSAGES[i] for i in PAIR_P])
    np.testing.assert_allclose(scores, expected, atol=ATOL, rtol=0)
    assert not any(p.requires_grad for p in teacher.cross_encoder(Runtime()).parameters())


@pytest.mark.parametrize("similarity", [None, "cos"])
def test_bi_encoder_teacher_scores_are_dot_products(tiny_bi_encoder: Path, similarity: str | None) -> None:
    teacher = BiEncoderTeacher(str(tiny_bi_encoder), batch_size=2, similarity=similarity)
    scores = teacher.score_pairs(Pairs(QUERIES, PASSAGES, PAIR_Q, PAIR_P), Runtime(), progress=False)
    assert scores.dtype == np.float32 and scores.shape == (len(PAIR_Q),)

    enc = BiEncoder.load(tiny_bi_encoder, similarity=similarity)
    with torch.no_grad():
        q_emb = [enc([q], "query")[0] for q in QUERIES]
        p_emb = [enc([p], "passage")[0] for p in PASSAGES]
    expected = np.array([float(q_emb[i] @ p_emb[j]) for i, j in zip(PAIR_Q, PAIR_P, strict=True)])
    np.testing.assert_allclose(scores, expected, atol=1e-4, rtol=1e-5)
    assert np.ptp(expected) > 1e-3
    if similarity == "cos":
        assert np.all(np.abs(scores) <= 1 + 1e-5)
    assert not any(p.requires_grad for p in teacher.encoder(Runtime()).parameters())


def _copy_with_changed_weight(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest)
    weights = load_file(dest / "model.safetensors")
    name = sorted(weights)[0]
    weights[name] = weights[name] + 0.01
    save_file(weights, dest / "model.safetensors", metadata={"format": "pt"})
    return dest


def test_cross_encoder_teacher_fingerprint(tiny_cross_encoder: Path, tmp_path: Path) -> None:
    fp = CrossEncoderTeacher(str(tiny_cross_encoder), max_length=128).fingerprint()
    assert len(fp) == 64
    assert CrossEncoderTeacher(str(tiny_cross_encoder), max_length=128, batch_size=7).fingerprint() == fp
    assert CrossEncoderTeacher(str(tiny_cross_encoder), max_length=64).fingerprint() != fp
    # Content, not location: a copy elsewhere has the same fingerprint; changed weights do not.
    copy = shutil.copytree(tiny_cross_encoder, tmp_path / "copy")
    assert CrossEncoderTeacher(str(copy), max_length=128).fingerprint() == fp
    changed = _copy_with_changed_weight(tiny_cross_encoder, tmp_path / "changed")
    assert CrossEncoderTeacher(str(changed), max_length=128).fingerprint() != fp


def test_bi_encoder_teacher_fingerprint(
    tiny_bi_encoder: Path, tiny_cross_encoder: Path, tmp_path: Path
) -> None:
    model = str(tiny_bi_encoder)
    fp = BiEncoderTeacher(model).fingerprint()
    assert BiEncoderTeacher(model, batch_size=3).fingerprint() == fp
    variants = [
        BiEncoderTeacher(model, query_max_length=32),
        BiEncoderTeacher(model, passage_max_length=128),
        BiEncoderTeacher(model, pooling="cls"),
        BiEncoderTeacher(model, similarity="cos"),
        BiEncoderTeacher(str(_copy_with_changed_weight(tiny_bi_encoder, tmp_path / "changed"))),
    ]
    fps = [t.fingerprint() for t in variants]
    assert fp not in fps and len(set(fps)) == len(fps)
    copy = shutil.copytree(tiny_bi_encoder, tmp_path / "copy")
    assert BiEncoderTeacher(str(copy)).fingerprint() == fp
    # A config-only change (no weight change) is seen as well.
    cfg = json.loads((copy / "config_sentence_transformers.json").read_text())
    cfg["similarity_fn_name"] = "cosine"
    (copy / "config_sentence_transformers.json").write_text(json.dumps(cfg))
    assert BiEncoderTeacher(str(copy)).fingerprint() != fp
    # Teachers of different kinds never share a fingerprint.
    assert (
        CrossEncoderTeacher(str(tiny_cross_encoder)).fingerprint()
        != BiEncoderTeacher(str(tiny_cross_encoder)).fingerprint()
    )


@pytest.mark.parametrize(
    "config, expected",
    [
        ({"_target_": "distillrank.teachers.BiEncoderTeacher", "model": "org/model"}, "org/model"),
        ({"_target_": "distillrank.teachers.BM25Teacher", "k1": 1.2, "b": 0.75}, "BM25 (k1=1.2, b=0.75)"),
        ({"_target_": "distillrank.teachers.PrecomputedTeacher", "path": "scores.tsv"}, "scores from scores.tsv"),
        (
            {"_target_": "distillrank.teachers.EnsembleTeacher", "members": [{"model": "a"}, {"model": "b"}],
             "weights": [2, 1], "normalize": "minmax", "scope": "global"},
            "ensemble of a + b (minmax global, weights [2, 1])",
        ),
        (None, "unknown teacher"),
    ],
)
def test_describe_names_every_kind_of_teacher(config, expected):
    assert describe(config) == expected
