"""``hardware.max_forward_texts``: batches larger than the cap run as several forwards, same results."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from distillrank.errors import ConfigError
from distillrank.models.bi_encoder import BiEncoder
from distillrank.models.cross_encoder import CrossEncoderModel
from distillrank.runtime import Runtime, check_forward_texts


def _hw(cap):
    return OmegaConf.create({"device": "cpu", "precision": "fp32", "num_threads": None, "max_forward_texts": cap})


def test_the_cap_belongs_to_its_runtime_only():
    assert Runtime().forward_texts(64) == 64
    capped = Runtime.from_config(_hw(16))
    assert capped.forward_texts(64) == 16
    assert capped.forward_texts(8) == 8
    assert Runtime.from_config(_hw(None)).forward_texts(64) == 64
    assert capped.forward_texts(64) == 16
    assert Runtime().forward_texts(64) == 64


def test_capped_encoding_equals_whole_batches(tiny_bi_encoder, tiny_texts, monkeypatch):
    model = BiEncoder.load(tiny_bi_encoder)
    whole = model.encode(tiny_texts[:13], batch_size=64)
    sizes = []
    embed = BiEncoder.embed
    monkeypatch.setattr(BiEncoder, "embed", lambda self, batch: sizes.append(len(batch["input_ids"])) or embed(self, batch))
    capped = model.encode(tiny_texts[:13], batch_size=64, runtime=Runtime.from_config(_hw(4)))
    assert sizes == [4, 4, 4, 1]
    torch.testing.assert_close(capped, whole, atol=1e-5, rtol=1e-4)


def test_capped_cross_encoder_scores_equal_whole_batches(tiny_cross_encoder, tiny_texts):
    model = CrossEncoderModel.load(tiny_cross_encoder)
    queries, passages = tiny_texts[:9], tiny_texts[9:18]
    whole = model.predict(queries, passages, batch_size=32)
    capped = model.predict(queries, passages, batch_size=32, runtime=Runtime.from_config(_hw(2)))
    torch.testing.assert_close(torch.as_tensor(capped), torch.as_tensor(whole), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("bad", [-1, 2.5, "16", True])
def test_a_bad_cap_is_a_config_error(bad):
    with pytest.raises(ConfigError, match="max_forward_texts"):
        check_forward_texts(bad)
    with pytest.raises(ConfigError, match="max_forward_texts"):
        Runtime.from_config(_hw(bad))
