"""ColBERTTeacher: scores equal direct MaxSim, de-duplication, fingerprint, the score stage end to end."""

from __future__ import annotations

import inspect
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file, save_file

from distillrank.models.colbert import DENSE_DIR, ColBERTModel
from distillrank.ranking import Pairs, Ranker
from distillrank.runtime import Runtime
from distillrank.teachers import ColBERTTeacher
from distillrank.validation import check_targets, compose

from .pairs import ATOL, PAIR_P, PAIR_Q, PASSAGES, QUERIES


def _direct(model: ColBERTModel, queries: list[str], passages: list[str]) -> np.ndarray:
    """Each pair encoded on its own (no batching, no de-duplication)."""
    out = []
    with torch.no_grad():
        for q, p in zip(queries, passages, strict=True):
            out.append(float(model.score_pairs(*model.encode([q], "query"), *model.encode([p], "passage"))[0]))
    return np.array(out, dtype=np.float32)


def test_signature_matches_the_ranker_protocol() -> None:
    ours = inspect.signature(ColBERTTeacher.score_pairs)
    proto = inspect.signature(Ranker.score_pairs)
    assert list(ours.parameters) == list(proto.parameters)
    for name, p in proto.parameters.items():
        assert ours.parameters[name].kind == p.kind and ours.parameters[name].default == p.default


@pytest.mark.parametrize("batch_size, pair_batch_size", [(2, 3), (64, 1024)])
def test_teacher_scores_equal_direct_maxsim(tiny_colbert: Path, batch_size: int, pair_batch_size: int) -> None:
    teacher = ColBERTTeacher(
        str(tiny_colbert), query_max_length=16, passage_max_length=64, batch_size=batch_size,
        pair_batch_size=pair_batch_size,
    )
    assert teacher._model is None  # lazy: nothing loaded before the first use
    scores = teacher.score_pairs(Pairs(QUERIES, PASSAGES, PAIR_Q, PAIR_P, qids=[f"q{i}" for i in range(len(QUERIES))], docids=[f"d{i}" for i in range(len(PASSAGES))]), Runtime(), progress=False)
    assert scores.dtype == np.float32 and scores.shape == (len(PAIR_Q),)
    model = ColBERTModel.load(tiny_colbert)
    expected = _direct(model, [QUERIES[i] for i in PAIR_Q], [PASSAGES[i] for i in PAIR_P])
    np.testing.assert_allclose(scores, expected, atol=ATOL, rtol=0)
    assert np.ptp(expected) > 0.1
    assert not any(p.requires_grad for p in teacher.colbert(Runtime()).parameters())


def test_repeated_pairs_and_texts_get_the_same_score(tiny_colbert: Path) -> None:
    teacher = ColBERTTeacher(str(tiny_colbert), query_max_length=16, passage_max_length=64, batch_size=2)
    # The same pair twice, and the same texts at two indices (merged by the teacher: encoded once).
    queries = [QUERIES[0], QUERIES[2], QUERIES[0]]
    passages = [PASSAGES[1], PASSAGES[2], PASSAGES[1]]
    pair_q = np.array([0, 0, 2, 1, 1])
    pair_p = np.array([0, 0, 2, 1, 0])
    scores = teacher.score_pairs(Pairs(queries, passages, pair_q, pair_p), Runtime(), progress=False)
    assert scores[0] == scores[1] == scores[2]
    assert scores[3] != scores[4]
    np.testing.assert_allclose(
        scores[[0, 3]], teacher.score_pairs(Pairs(QUERIES, PASSAGES, np.array([0, 2]), np.array([1, 2])), Runtime(), progress=False),
        atol=ATOL, rtol=0,
    )


def test_teacher_overrides_reach_the_model(tiny_colbert: Path) -> None:
    teacher = ColBERTTeacher(str(tiny_colbert), query_max_length=8, passage_max_length=32, skiplist_words=[])
    model = teacher.colbert(Runtime())
    assert model.query_max_length == 8 and model.passage_max_length == 32 and model.skiplist_words == []
    kept = ColBERTTeacher(str(tiny_colbert), query_max_length=16, passage_max_length=64).colbert(Runtime())
    assert kept.skiplist_words and kept.attend_to_expansion_tokens is False


def test_fingerprint(tiny_colbert: Path, tmp_path: Path) -> None:
    model = str(tiny_colbert)
    fp = ColBERTTeacher(model).fingerprint()
    assert len(fp) == 64
    assert ColBERTTeacher(model, batch_size=3, pair_batch_size=7).fingerprint() == fp
    changed = shutil.copytree(tiny_colbert, tmp_path / "changed")
    weights = load_file(changed / DENSE_DIR / "model.safetensors")
    weights["linear.weight"] = weights["linear.weight"] + 0.01
    save_file(weights, changed / DENSE_DIR / "model.safetensors", metadata={"format": "pt"})
    variants = [
        ColBERTTeacher(model, query_max_length=16),
        ColBERTTeacher(model, passage_max_length=64),
        ColBERTTeacher(model, attend_to_expansion_tokens=True),
        ColBERTTeacher(model, do_query_expansion=False),
        ColBERTTeacher(model, skiplist_words=[]),
        ColBERTTeacher(str(changed)),
    ]
    fps = [t.fingerprint() for t in variants]
    assert fp not in fps and len(set(fps)) == len(fps)
    copy = shutil.copytree(tiny_colbert, tmp_path / "copy")
    assert ColBERTTeacher(str(copy)).fingerprint() == fp
    settings = json.loads((copy / "config_sentence_transformers.json").read_text())
    settings["query_length"] = 12
    (copy / "config_sentence_transformers.json").write_text(json.dumps(settings))
    assert ColBERTTeacher(str(copy)).fingerprint() != fp


# ----------------------------------------------------------------------------- config and stage
def test_colbert_config_validates() -> None:
    cfg = compose(["teacher=colbert"])
    check_targets(cfg)
    assert cfg.teacher.model == "colbert-ir/colbertv2.0"
    assert cfg.teacher.query_max_length == 32 and cfg.teacher.passage_max_length == 180


def test_score_stage_with_a_colbert_teacher(make_cfg, tiny_colbert: Path) -> None:
    from distillrank.builders import training
    from distillrank.stages import mine, score
    from distillrank.workspace import stage_dir

    cfg = make_cfg("teacher=colbert", f"teacher.model={tiny_colbert}", "teacher.passage_max_length=64")
    check_targets(cfg)
    mine.run(cfg)
    manifest = score.run(cfg)
    table = pq.read_table(stage_dir(cfg, "score") / score.OUTPUT).to_pandas()
    assert len(table) == manifest.counts["pairs"] > 0
    teacher = table["teacher"].to_numpy()
    assert np.isfinite(teacher).all() and np.ptp(teacher) > 0.1

    # The stage's scores are the model's MaxSim of the (query, passage) texts.
    query_text = dict(training.train_queries(cfg))
    rows = table.iloc[:6]
    passages = training.passages(cfg)(list(rows["docid"]))
    model = ColBERTModel.load(tiny_colbert, query_max_length=32, passage_max_length=64)
    expected = _direct(model, [query_text[q] for q in rows["qid"]], passages)
    raw = rows["teacher_raw"] if "teacher_raw" in rows else rows["teacher"]
    np.testing.assert_allclose(raw.to_numpy(dtype=np.float32), expected, atol=1e-4, rtol=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_teacher_on_cuda_with_bf16_is_close_to_fp32(tiny_colbert: Path) -> None:
    teacher = ColBERTTeacher(str(tiny_colbert), query_max_length=16, passage_max_length=64)
    fp32 = teacher.score_pairs(Pairs(QUERIES, PASSAGES, PAIR_Q, PAIR_P), Runtime(), progress=False)
    cuda = teacher.score_pairs(Pairs(QUERIES, PASSAGES, PAIR_Q, PAIR_P), Runtime(torch.device("cuda"), "bf16"), progress=False)
    assert cuda.dtype == np.float32
    np.testing.assert_allclose(cuda, fp32, atol=0.15, rtol=0.02)
