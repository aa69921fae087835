"""Unpadded batches reach the backbone without their all-ones attention mask, with identical outputs."""

from __future__ import annotations

import torch
from torch import nn

from distillrank.models.bi_encoder import BiEncoder
from distillrank.models.cross_encoder import CrossEncoderModel
from distillrank.models.masking import backbone_inputs


def test_only_an_all_ones_mask_is_dropped():
    ids = torch.tensor([[5, 6, 7], [8, 9, 10]])
    full = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    padded = {"input_ids": ids, "attention_mask": torch.tensor([[1, 1, 1], [1, 1, 0]])}
    assert set(backbone_inputs(full)) == {"input_ids"}
    assert backbone_inputs(padded)["attention_mask"] is padded["attention_mask"]
    assert set(backbone_inputs({"input_ids": ids})) == {"input_ids"}


def _recording(module: nn.Module, seen: list[bool]) -> None:
    forward = module.forward

    def record(*args, **kwargs):
        seen.append("attention_mask" in kwargs)
        return forward(*args, **kwargs)

    module.forward = record


def test_bi_encoder_embeddings_are_unchanged_without_the_mask(tiny_bi_encoder, monkeypatch):
    model = BiEncoder.load(tiny_bi_encoder).eval()
    texts = ["cells and proteins", "proteins and cells"]  # the same tokens, so the same count
    with torch.inference_mode():
        with monkeypatch.context() as patch:  # the reference: the mask always given
            patch.setattr("distillrank.models.bi_encoder.backbone_inputs", dict)
            reference = model(texts, "passage")
        seen: list[bool] = []
        _recording(model.backbone, seen)
        same_length = model(texts, "passage")
        model(["cells", "genes and tissues of the heart"], "passage")  # padded: the mask is kept
    assert seen == [False, True]
    torch.testing.assert_close(same_length, reference, atol=1e-6, rtol=1e-5)


def test_cross_encoder_keeps_the_mask_of_padded_pairs(tiny_cross_encoder):
    model = CrossEncoderModel.load(tiny_cross_encoder).eval()
    seen: list[bool] = []
    _recording(model.model, seen)
    with torch.inference_mode():
        model(["q one"], ["passage text"])
        model(["q one", "a much longer query here"], ["passage text", "p"])
    assert seen[0] is False and seen[1] is True
