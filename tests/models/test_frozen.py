"""A frozen model made ready for one inference runtime (distillrank.models.frozen.for_inference): what
each backend and precision does to the loaded model, the same for the teachers and the mining encoder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from distillrank.models import onnx_runtime
from distillrank.models.bi_encoder import BiEncoder
from distillrank.models.cross_encoder import CrossEncoderModel
from distillrank.models.frozen import for_inference
from distillrank.models.onnx_runtime import CACHE_ENV, OnnxBackbone
from distillrank.models.quantize import is_quantized
from distillrank.runtime import Runtime

TEXTS = ["a cat is a small furry animal", "stars such as the sun burn hydrogen", "dogs bark"]


def _linear_dtypes(model: nn.Module) -> set[torch.dtype]:
    return {m.weight.dtype for m in model.modules() if type(m) is nn.Linear}


@pytest.mark.parametrize(
    ("precision", "dtypes", "quantized"),
    [("fp32", {torch.float32}, False), ("bf16", {torch.bfloat16}, False), ("fp16", {torch.float16}, False), ("int8", set(), True)],
)
def test_torch_precisions(tiny_bi_encoder: Path, precision: str, dtypes: set, quantized: bool) -> None:
    model = BiEncoder.load(tiny_bi_encoder).train()
    backbone = model.backbone
    made = for_inference(model, "torch", precision, "backbone", "last_hidden_state")
    assert made is model and model.backbone is backbone  # in place: wrappers holding it keep working
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert _linear_dtypes(model) == dtypes  # int8: no float nn.Linear is left
    assert is_quantized(model) is quantized
    assert model.encode(TEXTS, "passage", 2, Runtime(precision=precision)).shape == (len(TEXTS), model.dim)


@pytest.mark.skipif(bool(onnx_runtime.missing_packages()), reason="the onnx extra is not installed")
@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_onnx_swaps_the_named_part(
    tiny_cross_encoder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, precision: str
) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    plain = CrossEncoderModel.load(str(tiny_cross_encoder), 32).eval()
    model = for_inference(CrossEncoderModel.load(str(tiny_cross_encoder), 32), "onnx", precision, "model", "logits")
    assert isinstance(model.model, OnnxBackbone) and model.model.output == "logits"
    assert not is_quantized(model)  # int8 is ONNX Runtime's graph, not torch's layers
    graphs = sorted(tmp_path.glob("*.onnx"))
    assert len(graphs) == (2 if precision == "int8" else 1)  # int8 quantizes the fp32 export
    queries, passages = TEXTS, TEXTS[::-1]
    want = plain.predict(queries, passages, 2, Runtime())
    got = model.predict(queries, passages, 2, Runtime(precision=precision, backend="onnx"))
    if precision == "fp32":
        np.testing.assert_allclose(got, want, atol=1e-5)
    else:  # the quantized graph: close to fp32's scores, not equal to them
        assert got.shape == want.shape and not np.array_equal(got, want)
        np.testing.assert_allclose(got, want, atol=0.5)
