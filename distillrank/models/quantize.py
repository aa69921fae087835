"""int8 dynamic quantization of a frozen model for CPU inference (``hardware.precision=int8``).

Dynamic quantization (Jacob et al. 2018, "Quantization and Training of Neural Networks for
Efficient Integer-Arithmetic-Only Inference"; PyTorch's ``quantize_dynamic``) stores the weights of
every ``nn.Linear`` as int8 with one scale per output channel (per-channel: on SciFact re-ranking it
agrees with fp32 better than one scale per tensor at the same speed, see ``docs/BENCHMARKS.md``),
and quantizes each activation on the fly with a scale computed from that batch; the matrix products run in int8 with int32 accumulation (FBGEMM /
oneDNN kernels on x86) and the outputs come back as float32. Everything else (embeddings,
LayerNorm, softmax, attention's batched matmuls) stays float32. No calibration data is needed.

On a MiniLM-L6 forward pass this is about 2× faster than fp32 on an AVX512 CPU; the scores change
slightly, so int8 is for teachers' scoring and retrieval only (never training) and the scores are
cached under a fingerprint that includes the precision. ``docs/BENCHMARKS.md`` states the measured
effect on SciFact nDCG@10 and the rank agreement with fp32 scores.

``torch.ao.quantization.quantize_dynamic`` is deprecated (torch 2.13 warns) and moves to torchao
(``torchao.quantization.quantize_(model, Int8DynamicActivationInt8WeightConfig())``); it still works
in torch 2.13, and the deprecation warnings it emits are silenced here, around this call only.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from distillrank.errors import ConfigError

# the warnings torch.ao emits while converting (deprecation of the eager-mode API and of quantized tensors)
_SILENCED = (
    r".*torch\.ao\.quantization.*",
    r".*quantize_per_tensor.*",
    r".*deprecated.*",
)


def quantize_int8(model: nn.Module) -> nn.Module:
    """``model`` with every ``nn.Linear`` replaced by a dynamically quantized int8 one (in place).

    The model must be on the CPU and is switched to eval mode; gradients are off. Returns the same
    object (submodules are swapped in place), so a wrapper that holds it keeps working.

    Raises:
        ConfigError: the model has parameters on a device other than the CPU (PyTorch's dynamic
            int8 kernels are CPU-only).
    """
    devices = {p.device.type for p in model.parameters()}
    if devices - {"cpu"}:
        raise ConfigError(
            f"hardware.precision=int8 quantizes for the CPU only, but the model is on {sorted(devices)}; "
            "use hardware.precision=bf16 on a GPU"
        )
    model.eval()
    model.requires_grad_(False)
    with warnings.catch_warnings():
        for pattern in _SILENCED:
            warnings.filterwarnings("ignore", message=pattern)
        torch.ao.quantization.quantize_dynamic(
            model, {nn.Linear: torch.ao.quantization.per_channel_dynamic_qconfig}, inplace=True
        )
    return model


def is_quantized(model: nn.Module) -> bool:
    """Whether ``model`` holds dynamically quantized int8 linear layers."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    return any(isinstance(m, DynamicLinear) for m in model.modules())
