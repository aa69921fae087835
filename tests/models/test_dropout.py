"""``student.dropout`` sets every dropout of a student, is recorded in its config, and enters the
train stage key only when set."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from distillrank import keys
from distillrank.errors import ConfigError
from distillrank.models.bi_encoder import BiEncoder
from distillrank.models.colbert import ColBERTModel
from distillrank.models.cross_encoder import CrossEncoderModel
from distillrank.models.layers import set_dropout
from distillrank.stages import train

TEXTS = ["cells and proteins in the blood", "a protein of the cell membrane"]


def _dropouts(model: nn.Module) -> set[float]:
    found = {m.p for m in model.modules() if isinstance(m, nn.Dropout)}
    found |= {v for m in model.modules() for k, v in vars(m).items() if "dropout" in k and isinstance(v, float)}
    return found


def test_set_dropout_reaches_modules_attributes_and_config(tiny_bi_encoder):
    model = BiEncoder.load(tiny_bi_encoder).backbone
    assert _dropouts(model) == {0.1}  # the tiny BERT keeps BERT's defaults
    changed = set_dropout(model, 0.0)
    assert changed >= 2 * model.config.num_hidden_layers  # attention and output dropouts of every layer
    assert _dropouts(model) == {0.0}
    assert model.config.hidden_dropout_prob == 0.0
    assert model.config.attention_probs_dropout_prob == 0.0


@pytest.mark.parametrize("p", [1.0, -0.1, 1.5])
def test_set_dropout_rejects_a_non_probability(tiny_bi_encoder, p):
    model = BiEncoder.load(tiny_bi_encoder).backbone
    with pytest.raises(ConfigError, match=r"student.dropout=.*\[0, 1\)"):
        set_dropout(model, p)


def _train_mode_outputs(model: nn.Module, run) -> tuple[torch.Tensor, torch.Tensor]:
    model.train()
    with torch.no_grad():
        return run(), run()


def test_bi_encoder_without_dropout_is_deterministic_in_train_mode(tiny_bi_encoder, tmp_path):
    default = BiEncoder.from_backbone(str(tiny_bi_encoder))
    a, b = _train_mode_outputs(default, lambda: default(TEXTS, "passage"))
    assert not torch.allclose(a, b)  # dropout is on: two passes differ

    off = BiEncoder.from_backbone(str(tiny_bi_encoder), dropout=0.0)
    a, b = _train_mode_outputs(off, lambda: off(TEXTS, "passage"))
    torch.testing.assert_close(a, b)
    off.eval()
    with torch.no_grad():  # in eval mode, dropout never mattered
        torch.testing.assert_close(off(TEXTS, "passage"), default.eval()(TEXTS, "passage"))

    saved = off.save(tmp_path / "student")
    config = json.loads((saved / "config.json").read_text())
    assert config["hidden_dropout_prob"] == 0.0 and config["attention_probs_dropout_prob"] == 0.0


def test_cross_encoder_and_colbert_take_the_dropout(tiny_cross_encoder, tiny_bi_encoder):
    cross = CrossEncoderModel.from_backbone(str(tiny_cross_encoder), dropout=0.0)
    a, b = _train_mode_outputs(cross, lambda: cross(["q one", "q two"], TEXTS))
    torch.testing.assert_close(a, b)
    assert _dropouts(cross) == {0.0}

    colbert = ColBERTModel.from_backbone(str(tiny_bi_encoder), dim=8, seed=0, dropout=0.25)
    assert _dropouts(colbert.backbone) == {0.25}


def test_dropout_is_in_the_train_key_only(make_cfg):
    unset = make_cfg("student.dropout=null")
    off = make_cfg("student.dropout=0.0")
    assert "dropout" in unset.student
    assert train.stage_key(off) != train.stage_key(unset)
    assert "dropout" not in keys.student_identity(unset)
    # an untrained student is evaluated in eval mode: its results do not depend on the dropout
    assert keys.system_key(off, "student_init") == keys.system_key(unset, "student_init")
