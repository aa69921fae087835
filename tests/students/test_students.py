"""The student adapters: batch scoring ([B, L] groups, [B, P] in-batch), re-ranking, export and reload."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from distillrank.errors import ConfigError
from distillrank.models.bi_encoder import BiEncoder
from distillrank.models.cross_encoder import CrossEncoderModel
from distillrank.ranking import Pairs
from distillrank.runtime import Runtime
from distillrank.students import as_student, load_student, student_kind
from distillrank.students.bi_encoder import BiEncoderStudent
from distillrank.students.cross_encoder import CrossEncoderStudent

QUERIES = ["protein folding in cells", "gene expression of mice"]
PASSAGES = ["cells fold proteins", "mice express genes", "a passage about nothing", "proteins in mice"]
INDEX = torch.tensor([[0, 2, 3], [1, 3, 2]])  # [B=2, L=3]: column 0 the positive


def _eval_scores(student, queries, passages, index) -> torch.Tensor:
    student.eval()
    with torch.no_grad():
        return student(queries, passages, index, in_batch=student.supports_in_batch)


def test_bi_encoder_groups_are_the_in_batch_matrix_at_the_index(tiny_bi_encoder):
    student = as_student(BiEncoder.load(tiny_bi_encoder))
    assert isinstance(student, BiEncoderStudent) and student.supports_in_batch
    out = _eval_scores(student, QUERIES, PASSAGES, INDEX)
    assert out.groups.shape == (2, 3) and out.matrix.shape == (2, 4)
    torch.testing.assert_close(out.groups, torch.gather(out.matrix, 1, INDEX))
    pairs = student.score_pairs(Pairs(QUERIES, PASSAGES, [0, 0, 1], [0, 3, 1]), Runtime())
    expected = out.matrix[[0, 0, 1], [0, 3, 1]].numpy()
    np.testing.assert_allclose(pairs, expected, rtol=1e-4, atol=1e-5)


def test_bi_encoder_scores_are_differentiable(tiny_bi_encoder):
    student = as_student(BiEncoder.load(tiny_bi_encoder)).train()
    out = student(QUERIES, PASSAGES, INDEX, in_batch=True)
    (out.groups.sum() + out.matrix.sum()).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())


def test_cross_encoder_from_a_bi_encoder_backbone_scores_each_pair(tiny_bi_encoder):
    model = CrossEncoderModel.from_backbone(str(tiny_bi_encoder), num_layers=1, max_length=64)
    assert len(model.model.base_model.encoder.layer) == 1
    assert model.model.config.num_labels == 1
    student = as_student(model)
    assert isinstance(student, CrossEncoderStudent) and not student.supports_in_batch
    out = _eval_scores(student, QUERIES, PASSAGES, INDEX)
    assert out.matrix is None and out.groups.shape == (2, 3)
    for b in range(2):
        for j in range(3):
            single = model([QUERIES[b]], [PASSAGES[int(INDEX[b, j])]])
            torch.testing.assert_close(out.groups[b, j], single[0].float(), rtol=1e-4, atol=1e-5)
    with pytest.raises(ConfigError, match="in-batch"):
        student(QUERIES, PASSAGES, INDEX, in_batch=True)
    student.train()
    student(QUERIES, PASSAGES, INDEX).groups.sum().backward()
    assert model.model.classifier.weight.grad is not None


def test_cross_encoder_every_other_layer_of_a_cross_encoder(tiny_cross_encoder):
    model = CrossEncoderModel.from_backbone(
        str(tiny_cross_encoder), num_layers=1, layer_selection="every_other"
    )
    assert model.model.config.num_hidden_layers == 1
    full = CrossEncoderModel.load(tiny_cross_encoder)
    kept = model.model.base_model.encoder.layer[0].attention.self.query.weight
    torch.testing.assert_close(kept, full.model.base_model.encoder.layer[0].attention.self.query.weight)


def test_cross_encoder_export_loads_in_sentence_transformers(tiny_bi_encoder, tmp_path):
    from sentence_transformers import CrossEncoder

    student = as_student(CrossEncoderModel.from_backbone(str(tiny_bi_encoder), num_layers=1, max_length=64))
    path = student.save(tmp_path / "ce", model_card="# card\n")
    assert (path / "README.md").read_text() == "# card\n"
    assert student_kind(path) == "cross_encoder"
    ours = student.score_pairs(Pairs(QUERIES, PASSAGES, [0, 0, 1, 1], [0, 2, 1, 3]), Runtime())
    st = CrossEncoder(str(path), device="cpu")
    theirs = np.asarray(
        st.predict(
            [
                (QUERIES[0], PASSAGES[0]),
                (QUERIES[0], PASSAGES[2]),
                (QUERIES[1], PASSAGES[1]),
                (QUERIES[1], PASSAGES[3]),
            ]
        )
    )
    # the export sets no activation, so sentence-transformers applies its default for a one-logit
    # head, a sigmoid: the same scores, squashed, so the same order
    np.testing.assert_allclose(theirs, 1 / (1 + np.exp(-ours)), rtol=0, atol=1e-4)
    reloaded = load_student(path)
    assert isinstance(reloaded, CrossEncoderStudent) and not reloaded.training
    np.testing.assert_allclose(
        reloaded.score_pairs(Pairs(QUERIES, PASSAGES, [0, 0, 1, 1], [0, 2, 1, 3]), Runtime()), ours, rtol=1e-4, atol=1e-5
    )


def test_bi_encoder_export_reloads_as_a_bi_encoder_student(tiny_bi_encoder, tmp_path):
    student = as_student(BiEncoder.load(tiny_bi_encoder))
    path = student.save(tmp_path / "bi")
    assert student_kind(path) == "bi_encoder"
    reloaded = load_student(path)
    assert isinstance(reloaded, BiEncoderStudent)
    np.testing.assert_allclose(
        reloaded.score_pairs(Pairs(QUERIES, PASSAGES, [0, 1], [0, 1]), Runtime()),
        student.score_pairs(Pairs(QUERIES, PASSAGES, [0, 1], [0, 1]), Runtime()),
        rtol=1e-5,
    )


def test_unknown_models_and_folders_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="BiEncoder"):
        as_student(nn.Linear(2, 2))
    with pytest.raises(ConfigError, match="not a saved student"):
        student_kind(tmp_path)


def test_colbert_groups_in_batch_and_rerank_agree(tiny_bi_encoder, tmp_path):
    from distillrank.models.colbert import ColBERTModel
    from distillrank.students.colbert import ColBERTStudent

    student = as_student(ColBERTModel.from_backbone(str(tiny_bi_encoder), dim=16, keep_layers=1, seed=0))
    assert isinstance(student, ColBERTStudent) and student.supports_in_batch
    out = _eval_scores(student, QUERIES, PASSAGES, INDEX)
    torch.testing.assert_close(out.groups, torch.gather(out.matrix, 1, INDEX))
    student.eval()
    with torch.no_grad():
        torch.testing.assert_close(student(QUERIES, PASSAGES, INDEX).groups, out.groups, rtol=1e-4, atol=1e-5)
    path = student.save(tmp_path / "colbert")
    assert student_kind(path) == "colbert"
    reloaded = load_student(path)
    np.testing.assert_allclose(
        reloaded.score_pairs(Pairs(QUERIES, PASSAGES, [0, 1], [3, 2]), Runtime()),
        out.matrix[[0, 1], [3, 2]].numpy(),
        rtol=1e-4,
        atol=1e-5,
    )
