"""Dropout for training on CPU with masks drawn 16 bits at a time.

``torch.nn.Dropout`` on a CPU tensor draws its mask with ``bernoulli_``: one serial draw of torch's
Mersenne-Twister generator and a conversion to double for every element. Training a small encoder,
that is most of what is not a matrix product: about 200 ms of a 2-layer MiniLM step of 32 × 128
tokens, 18–24% of an fp32 step and 39% of a bf16 one (``scripts/bench/profile_encoder.py``,
docs/BENCHMARKS.md), most of it in the attention probabilities' dropout. The masks here come from
the same generator (torch's default CPU generator, so a seed gives the same masks and a checkpoint's
saved generator state resumes them) but one 64-bit draw gives four 16-bit values, each compared
with the keep threshold; the mask, in the input's dtype, multiplies the input in the forward and
the gradient in the backward. 2–3× faster than ``nn.Dropout`` forward and backward on the tensors
of that step (measured apart, 2 threads), a training step 1.2–1.4× faster.

The distribution is dropout's: every element kept independently with probability
``K / 65536``, ``K = round((1 - p) * 65536)`` (``p`` to within 2^-17), and scaled by ``65536 / K``,
so that the expected output is the input exactly. The masks are not the ones ``nn.Dropout`` would
draw from the same seed.

:func:`cpu_dropout` applies it to a model for the length of a ``with`` block: each ``nn.Dropout``
module is replaced by a :class:`CpuDropout` of the same ``p``, and a model whose attention goes
through transformers' attention interface on ``sdpa`` (BERT, MiniLM, ModernBERT, …) gets
:func:`attention_forward`, which runs attention with this dropout when it is training on CPU and
hands every other call (inference, GPU, causal or grouped-query attention, position biases) to
transformers' own ``sdpa`` function. On exit the model is as it was, so what is saved or exported
is the model's own modules and configuration. On a GPU none of this is used: torch's fused CUDA
dropout draws its masks in the kernel.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

ATTENTION = "distillrank_cpu_dropout"  # the attention implementation's name in transformers' registry
_LEVELS = 1 << 16


def keep_threshold(p: float) -> int:
    """``K``: a 16-bit value ``v`` (0 ≤ v < 65536) keeps its element when ``v < K``."""
    return round((1.0 - float(p)) * _LEVELS)


def kept(shape: torch.Size, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """A boolean mask of ``shape``: True where an element is kept, each independently with
    probability ``K / 65536`` (:func:`keep_threshold`), drawn from ``generator`` (torch's default
    CPU generator when None)."""
    n = shape.numel()
    words = torch.empty((n + 3) // 4, dtype=torch.int64).random_(-(1 << 63), None, generator=generator)
    values = words.view(torch.int16)[:n].view(shape)  # uniform over [-32768, 32767]
    return values < keep_threshold(p) - (_LEVELS // 2)


def drop(x: torch.Tensor, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """``x`` times the mask of :func:`kept` scaled by ``65536 / K``; differentiable (the backward
    multiplies the gradient by the same mask). The mask is a tensor of ``x``'s dtype, so the
    forward and the backward are one multiplication each (a boolean ``masked_fill`` takes 1.4×
    as long)."""
    k = keep_threshold(p)
    if k <= 0:
        return x * 0.0
    return x * kept(x.shape, p, generator).to(x.dtype).mul_(_LEVELS / k)


class CpuDropout(nn.Dropout):
    """``nn.Dropout`` whose masks, on a CPU tensor in training, come from :func:`drop`; on any other
    device, or with ``inplace=True``, it is ``nn.Dropout``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if x.device.type != "cpu" or self.inplace:
            return super().forward(x)
        return drop(x, self.p)


def attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' attention-interface signature: softmax(q kᵀ · scaling + mask), dropped
    (:func:`drop`), times v — in fp32 whatever the inputs' precision, as torch's math path of
    ``scaled_dot_product_attention`` computes it on CPU — for a training call on CPU of plain
    bidirectional attention; every other call goes to transformers' ``sdpa_attention_forward``
    unchanged."""
    plain = (
        dropout > 0.0
        and query.device.type == "cpu"
        and not (is_causal if is_causal is not None else getattr(module, "is_causal", False))
        and getattr(module, "num_key_value_groups", 1) == 1
        and kwargs.get("position_bias") is None
        and kwargs.get("softcap") is None
        and key.shape[1] == query.shape[1]
    )
    if not plain:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs
        )
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    with torch.autocast("cpu", enabled=False):  # in fp32, as torch's own math path does on CPU
        # the scale on q (heads × length × head dim) rather than on the scores (× length / head dim)
        scores = torch.matmul(query.float() * scale, key.float().transpose(-1, -2))
        if attention_mask is not None:  # added in place: the sum's backward is the gradient itself
            if attention_mask.dtype == torch.bool:
                additive = torch.zeros(attention_mask.shape, dtype=scores.dtype, device=scores.device)
                attention_mask = additive.masked_fill_(~attention_mask, float("-inf"))
            scores = scores.add_(attention_mask)
        probs = drop(torch.softmax(scores, dim=-1), dropout)
        out = torch.matmul(probs, value.float()).to(query.dtype)  # (batch, heads, queries, head dim)
    return out.transpose(1, 2).contiguous(), None


def _supports_attention_interface(model: nn.Module) -> bool:
    config = getattr(model, "config", None)
    return (
        config is not None
        and getattr(config, "_attn_implementation", None) == "sdpa"
        and bool(getattr(model, "_supports_attention_backend", False))
        and hasattr(model, "set_attn_implementation")
    )


@contextmanager
def cpu_dropout(model: nn.Module) -> Iterator[dict[str, int]]:
    """Train ``model`` with :class:`CpuDropout` and, where it runs attention through transformers'
    interface on ``sdpa``, :func:`attention_forward`, for the length of the block; yields how many
    dropout modules and attention implementations were replaced. Every Hugging Face model inside
    ``model`` (a bi-encoder's backbone, a cross-encoder) is covered; the model is restored on exit.
    """
    # idempotent: the same functions each time; the masks are made as for sdpa (without a mask
    # function of its own, transformers would give a custom attention no padding mask at all)
    AttentionInterface.register(ATTENTION, attention_forward)
    AttentionMaskInterface.register(ATTENTION, sdpa_mask)
    swapped: list[tuple[nn.Module, str, nn.Dropout]] = []
    attention: list[nn.Module] = []
    try:
        for parent in list(model.modules()):
            for name, child in list(parent.named_children()):
                if type(child) is nn.Dropout:
                    replacement = CpuDropout(child.p, child.inplace)
                    replacement.train(child.training)
                    setattr(parent, name, replacement)
                    swapped.append((parent, name, child))
        for sub in model.modules():
            if _supports_attention_interface(sub) and not any(sub in a.modules() for a in attention):
                sub.set_attn_implementation(ATTENTION)
                attention.append(sub)
        yield {"dropout_modules": len(swapped), "attention": len(attention)}
    finally:
        for sub in attention:
            sub.set_attn_implementation("sdpa")
        for parent, name, original in swapped:
            replacement = getattr(parent, name)
            original.train(replacement.training)
            original.p = replacement.p
            setattr(parent, name, original)


def for_training(model: nn.Module, masks: str, device: torch.device) -> AbstractContextManager:
    """How ``model`` trains on ``device`` under ``train.dropout_masks=masks``: :func:`cpu_dropout`
    for ``fast`` on CPU, else the model as it is (``torch``; a GPU's fused dropout)."""
    return cpu_dropout(model) if str(masks) == "fast" and device.type == "cpu" else nullcontext()
