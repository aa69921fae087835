"""Devices, precision and seeding from the ``hardware`` config.

Precisions (``hardware.precision``): ``fp32`` (none), ``bf16`` / ``fp16`` (autocast), and ``int8``:
dynamic int8 quantization of a frozen teacher's linear layers for CPU inference
(:mod:`distillrank.models.quantize`); under int8 no autocast applies, the train stage trains the
student in fp32, and a CUDA device refuses it (:func:`check_inference_precision`).
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator

import numpy as np
import torch

from distillrank.errors import ConfigError

_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16, "int8": None}
PRECISIONS = tuple(sorted(_DTYPES))


def check_precision(precision: str) -> str:
    """``precision`` when it is one of :data:`PRECISIONS`.

    Raises:
        ConfigError: an unknown precision.
    """
    if precision not in _DTYPES:
        raise ConfigError(f"hardware.precision={precision!r}; expected one of {list(PRECISIONS)}")
    return precision


def check_inference_precision(precision: str, device: torch.device) -> str:
    """``precision`` when a frozen model can run in it on ``device``.

    Raises:
        ConfigError: int8 on a device other than the CPU (PyTorch's dynamic int8 kernels are
            CPU-only), or an unknown precision.
    """
    if check_precision(precision) == "int8" and device.type != "cpu":
        raise ConfigError(
            f"hardware.precision=int8 runs on the CPU only, but hardware.device is {device}; "
            "use hardware.precision=bf16 on a GPU, or hardware=cpu"
        )
    return precision


def teacher_fingerprint(teacher, precision: str, backend: str = "torch") -> str:
    """The fingerprint that keys ``teacher``'s scores under ``precision`` and ``backend``.

    Teachers that quantize (``supports_int8 = True``: bi-encoder, cross-encoder) take the precision
    into their fingerprint when it is int8 (int8 scores differ from fp32 ones); every other
    precision leaves the fingerprint unchanged, so caches written before int8 existed stay valid.
    ``backend="onnx"`` (teachers with ``supports_onnx = True``) wraps the fingerprint with the
    backend, so ONNX Runtime scores are cached apart from PyTorch ones; ``torch`` leaves it unchanged.

    Raises:
        ConfigError: int8 with a teacher that cannot be quantized, or onnx with a teacher that
            cannot run in ONNX Runtime.
    """
    name = getattr(teacher, "kind", type(teacher).__name__)
    if check_precision(precision) != "int8":
        base = teacher.fingerprint()
    elif not getattr(teacher, "supports_int8", False):
        raise ConfigError(
            f"hardware.precision=int8 is supported by the bi_encoder and cross_encoder teachers, "
            f"not by {name}; use hardware.precision=fp32"
        )
    else:
        base = teacher.fingerprint(precision=precision)
    if check_backend(backend) == "torch":
        return base
    if not getattr(teacher, "supports_onnx", False):
        raise ConfigError(
            f"hardware.backend=onnx is supported by the bi_encoder and cross_encoder teachers (and "
            f"ensembles of them), not by {name}; use hardware.backend=torch"
        )
    from distillrank.workspace import fingerprint

    return fingerprint({"teacher": base, "backend": backend})


BACKENDS = ("torch", "onnx")


def configured_backend(hardware_cfg) -> str:
    """``hardware.backend`` of a hardware config node (``torch`` for configs written before it existed)."""
    return str(getattr(hardware_cfg, "backend", None) or "torch")


def check_backend(backend: str, device: torch.device | None = None) -> str:
    """``hardware.backend`` checked: ``torch``, or ``onnx`` on the CPU with its packages installed.

    Raises:
        ConfigError: an unknown backend, onnx on a GPU, or onnx without onnxruntime / onnx / onnxscript.
    """
    if backend not in BACKENDS:
        raise ConfigError(f"hardware.backend={backend!r}; expected one of {list(BACKENDS)}")
    if backend == "onnx":
        if device is not None and device.type != "cpu":
            raise ConfigError(
                f"hardware.backend=onnx runs on the CPU only, but hardware.device is {device}; use "
                "hardware.backend=torch (with bf16) on a GPU"
            )
        from distillrank.models.onnx_runtime import require

        require()
    return backend


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; an unavailable CUDA device is a config error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"hardware.device={name} but CUDA is not available here; use hardware=cpu")
    return device


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """A mixed-precision context for ``precision`` (fp32 and int8 mean none)."""
    dtype = _DTYPES[check_precision(precision)]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def apply_threads(num_threads: int | None) -> None:
    """Set torch's intra-op threads when configured."""
    if num_threads:
        torch.set_num_threads(int(num_threads))


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


_FORWARD_TEXTS: int | None = None  # hardware.max_forward_texts of the active hardware() block
_BACKEND: str = "torch"  # hardware.backend of the active hardware() block


def inference_backend() -> str:
    """``hardware.backend`` of the active :func:`hardware` block (``torch`` outside one): what
    frozen teachers load into."""
    return _BACKEND


@contextlib.contextmanager
def use_backend(backend: str) -> Iterator[None]:
    """Frozen teachers load into ``backend`` inside the block (what ``hardware.backend`` does in
    :func:`hardware`), for library use outside the stages."""
    global _BACKEND
    previous = _BACKEND
    _BACKEND = check_backend(backend, torch.device("cpu"))
    try:
        yield
    finally:
        _BACKEND = previous


def forward_texts(batch_size: int) -> int:
    """How many texts (or pairs) one forward pass holds: ``batch_size``, capped by the active
    ``hardware.max_forward_texts``. A batch larger than the cap runs as several forwards with the
    same result: on a CPU, forwards of about 16 texts are faster and far smaller in memory than one
    forward of the whole batch (docs/BENCHMARKS.md, "Where the speed comes from")."""
    return max(1, min(batch_size, _FORWARD_TEXTS)) if _FORWARD_TEXTS else max(1, batch_size)


def check_forward_texts(value) -> int | None:
    """``hardware.max_forward_texts`` checked: null / 0 (no cap) or a positive integer."""
    if value in (None, 0):
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ConfigError(f"hardware.max_forward_texts={value!r}; expected null or a positive integer")
    return value


@contextlib.contextmanager
def hardware(cfg) -> Iterator[tuple[torch.device, str]]:
    """Apply a ``hardware`` config node (threads, forward cap); yields (device, precision)."""
    global _FORWARD_TEXTS, _BACKEND
    apply_threads(cfg.num_threads)
    device = resolve_device(cfg.device)
    previous = _FORWARD_TEXTS, _BACKEND
    _FORWARD_TEXTS = check_forward_texts(getattr(cfg, "max_forward_texts", None))
    _BACKEND = check_backend(configured_backend(cfg), device)
    try:
        yield device, cfg.precision
    finally:
        _FORWARD_TEXTS, _BACKEND = previous
