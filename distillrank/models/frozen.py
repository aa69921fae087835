"""A frozen model made ready for one inference runtime: PyTorch in fp32 / bf16 / fp16 / int8, or
ONNX Runtime.

The teachers (bi-encoder, cross-encoder) and the dense mining encoder load their model once per
backend and precision and then only score or encode with it; what each runtime needs of the loaded
model is the same for all of them, so it is done here, once:

* ``backend="onnx"``: the Hugging Face network inside the model (the submodule ``part``) is swapped
  for an :class:`~distillrank.models.onnx_runtime.OnnxBackbone` returning ``output``; under int8 the
  graph is ONNX Runtime's dynamic int8 quantization (:mod:`distillrank.models.onnx_runtime`);
* ``backend="torch"``, int8: the linear layers quantized (:func:`~distillrank.models.quantize.quantize_int8`);
* ``backend="torch"``, bf16 / fp16: the linear weights stored in that dtype once
  (:func:`~distillrank.models.half_weights.cast_linear_weights`: bit-identical to autocast's casts);
  fp32: nothing more.
"""

from __future__ import annotations

from typing import TypeVar

from torch import nn

from distillrank.models.half_weights import cast_linear_weights
from distillrank.models.onnx_runtime import OnnxBackbone
from distillrank.models.quantize import quantize_int8

M = TypeVar("M", bound=nn.Module)


def for_inference(model: M, backend: str, precision: str, part: str, output: str) -> M:
    """``model`` in eval mode without gradients, made ready for ``backend`` / ``precision`` (in
    place; returns the model itself). ``part``: the attribute holding the Hugging Face network that
    ONNX Runtime replaces (``backbone``, ``model``); ``output``: what that network returns
    (``last_hidden_state``, ``logits``).

    Raises:
        ConfigError: int8 with a model on a device other than the CPU (torch's int8 kernels are
            CPU-only).
    """
    model.eval().requires_grad_(False)
    if backend == "onnx":
        setattr(model, part, OnnxBackbone.build(getattr(model, part), output, precision == "int8"))
    elif precision == "int8":
        quantize_int8(model)
    else:
        cast_linear_weights(model, precision)
    return model
