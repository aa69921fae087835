"""A frozen model's linear layers stored in the autocast dtype, once, for bf16 / fp16 inference.

Under autocast every ``nn.Linear`` call casts its fp32 weight and bias to bf16 (or fp16) again, and
the copies live until the autocast block ends: for inference, where each forward enters its own
block, that is half the model's linear weights made and dropped again every forward (45 MB for
MiniLM-L6, 170 MB for a BERT-base teacher), on top of the fp32 weights. A frozen teacher or mining
encoder run under a bf16 runtime has no use for its fp32 linear weights: :func:`cast_linear_weights`
stores them in the autocast dtype once, when the model is loaded for that runtime. Autocast then has
nothing to cast (weights already in its dtype), so the outputs are bit-identical to autocast's
casting (the same rounding of the same weights), with half the linear weights' memory and no
per-forward copies. Everything else (embeddings, LayerNorm, the classifier's softmax) stays fp32 as
autocast runs it.

Only for models that are not trained and run only under the autocast of that dtype: outside autocast
an fp32 input would meet a bf16 weight. The teachers and the mining encoder load their model per
runtime precision, so an fp32 runtime loads fp32 weights again. A linear layer whose weight is also
another module's (tied embeddings) is left in fp32.
"""

from __future__ import annotations

from typing import TypeVar

from torch import nn

from distillrank.runtime import autocast_dtype

M = TypeVar("M", bound=nn.Module)


def frozen(model: M, precision: str) -> M:
    """``model`` for inference only under ``precision``: in eval mode, without gradients, and under
    bf16 / fp16 its linear weights stored in that dtype once (:func:`cast_linear_weights`, which
    casts only weights that do not train); the model itself."""
    model.eval().requires_grad_(False)
    cast_linear_weights(model, precision)
    return model


def cast_linear_weights(model: nn.Module, precision: str) -> int:
    """Store every ``nn.Linear``'s weight and bias of ``model`` in ``precision``'s dtype (``bf16`` /
    ``fp16``; any other precision: nothing), in place, unless a parameter is shared with a module
    that is not a linear layer; how many linear layers were cast."""
    dtype = autocast_dtype(precision)
    if dtype is None:
        return 0
    linears = [m for m in model.modules() if type(m) is nn.Linear]
    linear_ids = {id(m) for m in linears}
    shared = {id(p) for m in model.modules() if id(m) not in linear_ids for p in m.parameters(recurse=False)}
    cast = 0
    for module in linears:
        params = [p for p in (module.weight, module.bias) if p is not None]
        if any(id(p) in shared for p in params) or module.weight.requires_grad:
            continue
        module.to(dtype)
        cast += 1
    return cast
