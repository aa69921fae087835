"""A frozen model's linear weights stored in bf16 / fp16 once (distillrank.models.half_weights):
bit-identical to autocast's per-forward casts, for the teachers under a bf16 runtime, with the fp32
weights loaded again for another precision; tied and trainable weights are left alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from distillrank.evaluation.systems import params
from distillrank.models import half_weights
from distillrank.models.bi_encoder import BiEncoder
from distillrank.models.half_weights import cast_linear_weights
from distillrank.ranking import Pairs
from distillrank.runtime import Runtime
from distillrank.teachers import BiEncoderTeacher, CrossEncoderTeacher

TEXTS = ["a cat is a small furry animal", "stars such as the sun burn hydrogen", "dogs bark", "the moon"]
BF16 = Runtime(precision="bf16", max_forward_texts=2)


def _linear_dtypes(model: nn.Module) -> set[torch.dtype]:
    return {m.weight.dtype for m in model.modules() if type(m) is nn.Linear}


def test_bf16_weights_encode_bit_identically_to_autocasts_casts(tiny_bi_encoder: Path) -> None:
    plain = BiEncoder.load(tiny_bi_encoder).eval().requires_grad_(False)
    cast = BiEncoder.load(tiny_bi_encoder).eval().requires_grad_(False)
    assert cast_linear_weights(cast, "bf16") == sum(type(m) is nn.Linear for m in cast.modules()) > 0
    assert _linear_dtypes(cast) == {torch.bfloat16}
    # everything else stays fp32, as autocast runs it
    assert {p.dtype for n, p in cast.named_parameters() if "LayerNorm" in n or "embeddings" in n} == {torch.float32}
    for kind in ("query", "passage"):
        assert torch.equal(plain.encode(TEXTS, kind, 4, BF16), cast.encode(TEXTS, kind, 4, BF16))


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_other_precisions_cast_nothing(tiny_bi_encoder: Path, precision: str) -> None:
    model = BiEncoder.load(tiny_bi_encoder).eval().requires_grad_(False)
    assert cast_linear_weights(model, precision) == 0 and _linear_dtypes(model) == {torch.float32}


def test_tied_and_trainable_weights_are_left_in_fp32() -> None:
    embedding, head, free = nn.Embedding(10, 4), nn.Linear(4, 10, bias=False), nn.Linear(4, 4)
    head.weight = embedding.weight  # tied, as a language model's output layer
    frozen = nn.Linear(4, 4).requires_grad_(False)
    model = nn.ModuleDict({"embedding": embedding, "head": head, "free": free, "frozen": frozen})
    embedding.requires_grad_(False)
    assert cast_linear_weights(model, "bf16") == 1
    assert frozen.weight.dtype == frozen.bias.dtype == torch.bfloat16
    assert head.weight.dtype == embedding.weight.dtype == torch.float32  # the embedding would change too
    assert free.weight.dtype == torch.float32  # trainable: a student, not a frozen teacher


@pytest.mark.parametrize("kind", ["bi_encoder", "cross_encoder"])
def test_teachers_cast_once_per_precision_and_score_as_under_autocast(
    kind: str, tiny_bi_encoder: Path, tiny_cross_encoder: Path
) -> None:
    if kind == "bi_encoder":
        teacher, model = BiEncoderTeacher(str(tiny_bi_encoder), batch_size=4), lambda t, rt: t.encoder(rt)
        reference = BiEncoder.load(tiny_bi_encoder).eval()
        expected = reference.pair_scores(Pairs(TEXTS[:2], TEXTS, np.array([0, 0, 1, 1]), np.array([0, 1, 2, 3])), 4, BF16)
    else:
        teacher, model = CrossEncoderTeacher(str(tiny_cross_encoder), batch_size=4), lambda t, rt: t.cross_encoder(rt)
        from distillrank.models.cross_encoder import CrossEncoderModel

        reference = CrossEncoderModel.load(str(tiny_cross_encoder), teacher.max_length).eval()
        expected = reference.predict([TEXTS[0], TEXTS[0], TEXTS[1], TEXTS[1]], TEXTS, 4, BF16)
    pairs = Pairs(TEXTS[:2], TEXTS, np.array([0, 0, 1, 1]), np.array([0, 1, 2, 3]))
    scores = teacher.score_pairs(pairs, BF16)
    assert _linear_dtypes(model(teacher, BF16)) == {torch.bfloat16}
    assert model(teacher, BF16) is model(teacher, BF16)  # loaded once for this precision
    # the evaluation's parameter count reads the bf16 model itself (asking for fp32 would load it twice)
    bf16_params = params(teacher.module(BF16))
    assert teacher.module(BF16) is model(teacher, BF16)
    np.testing.assert_array_equal(scores, expected)  # bit-identical to autocast's own casts
    # another precision loads the float weights again: fp32 scoring needs fp32 weights
    assert _linear_dtypes(model(teacher, Runtime())) == {torch.float32}
    assert params(teacher.module(Runtime())) == bf16_params
    assert np.isfinite(teacher.score_pairs(pairs, Runtime())).all()


@pytest.mark.parametrize("kind", ["colbert", "monot5"])
def test_colbert_and_monot5_teachers_cast_once_per_precision_and_score_as_under_autocast(
    kind: str, tiny_colbert: Path, tiny_t5: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from distillrank.teachers.late_interaction import ColBERTTeacher
    from distillrank.teachers.seq2seq import MonoT5Teacher

    make, model = {
        "colbert": (lambda: ColBERTTeacher(str(tiny_colbert), passage_max_length=64), "colbert"),
        "monot5": (lambda: MonoT5Teacher(str(tiny_t5), batch_size=2), "seq2seq"),
    }[kind]
    pairs = Pairs(TEXTS[:2], TEXTS, np.array([0, 0, 1, 1]), np.array([0, 1, 2, 3]))
    with monkeypatch.context() as patch:  # the reference: fp32 weights that autocast casts every forward
        patch.setattr(half_weights, "cast_linear_weights", lambda *args: 0)  # what the teachers' frozen() calls
        uncast = make()
        expected = uncast.score_pairs(pairs, BF16)
        assert _linear_dtypes(getattr(uncast, model)(BF16)) == {torch.float32}
    teacher = make()
    scores = teacher.score_pairs(pairs, BF16)
    loaded = getattr(teacher, model)(BF16)
    assert torch.bfloat16 in _linear_dtypes(loaded) and loaded is getattr(teacher, model)(BF16)
    np.testing.assert_array_equal(scores, expected)  # bit-identical to autocast's own casts
    # another precision loads the float weights again
    assert _linear_dtypes(getattr(teacher, model)(Runtime())) == {torch.float32}
    assert np.isfinite(teacher.score_pairs(pairs, Runtime())).all()


STUDENTS = {  # overrides of the tiny config for each kind of student
    "bi_encoder": (),
    "colbert": ("student=colbert", "student.dim=16", "student.keep_layers=1", "student.passage_max_length=64"),
    "cross_encoder": ("student=cross_encoder", "student.max_length=64", "student.num_layers=1"),
}


@pytest.mark.parametrize("kind", list(STUDENTS))
@pytest.mark.parametrize("hardware", ["cpu_bf16", "cpu"])
def test_evaluated_students_are_frozen_with_the_weights_of_their_runtime(
    hardware: str, kind: str, tiny_args: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from distillrank.builders import systems as builders_systems
    from distillrank.validation import compose

    args = tiny_args if kind == "bi_encoder" else [
        a for a in tiny_args if not a.startswith(("student.passage_max_length=", "student.num_layers="))
    ]
    cfg = compose([*args, f"hardware={hardware}", *STUDENTS[kind]])
    runtime = builders_systems.ConfigSystems(cfg, tmp_path / "a").runtime_for("student_init")

    def build(folder: str):
        torch.manual_seed(0)  # the same initial weights (a new head or projection) for both builds
        return builders_systems.ConfigSystems(cfg, tmp_path / folder).ranker("student_init")

    student = build("a")
    assert not any(p.requires_grad for p in student.parameters()) and not student.training
    assert _linear_dtypes(student) == ({torch.bfloat16} if hardware == "cpu_bf16" else {torch.float32})
    with monkeypatch.context() as patch:  # the same student, its fp32 weights cast by autocast every forward
        patch.setattr(half_weights, "cast_linear_weights", lambda *args: 0)  # what frozen() calls
        uncast = build("b")
    assert _linear_dtypes(uncast) == {torch.float32}
    pairs = Pairs(TEXTS[:2], TEXTS, np.array([0, 0, 1, 1]), np.array([0, 1, 2, 3]))
    np.testing.assert_array_equal(student.score_pairs(pairs, runtime), uncast.score_pairs(pairs, runtime))
    if kind == "bi_encoder":  # and the dense index's encoding
        for text_kind in ("query", "passage"):
            expected = uncast.encoder(runtime).encode(TEXTS, text_kind, 4, runtime)
            assert torch.equal(student.encoder(runtime).encode(TEXTS, text_kind, 4, runtime), expected)
