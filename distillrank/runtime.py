"""The runtime: device, precision, backend and caps of one stage, as a frozen value passed down.

A stage builds one :class:`Runtime` from its ``hardware`` config (:func:`configure`) and passes it,
as a plain argument, to what runs models: teachers and students (``score_pairs``), encoders
(``encode`` / ``predict`` / ``embed``), corpus encoding and the training loop. Nothing here is a
module global, and this module imports nothing of distillrank but its errors (layer 0).

Precisions (``hardware.precision``): ``fp32`` (none), ``bf16`` / ``fp16`` (autocast), and ``int8``:
dynamic int8 quantization of a frozen teacher's linear layers for CPU inference
(:mod:`distillrank.models.quantize`); under int8 no autocast applies, the train stage trains the
student in fp32, and a CUDA device refuses it (:func:`check_inference_precision`).
Backends (``hardware.backend``): ``torch``, or ``onnx`` (frozen teachers and the dense mining
encoder run by ONNX Runtime, CPU only: :mod:`distillrank.models.onnx_runtime`).
Inference batching (:mod:`distillrank.models.batching`): ``hardware.max_batch_tokens`` (null: fixed
batch sizes; else rows × longest row's tokens per batch), ``hardware.max_forward_tokens`` (a batch
over that many tokens runs as several forwards, each cut to its rows' padding) and
``hardware.prefetch`` (null: the next batch tokenized while the model runs this one on CUDA, not on
the CPU; true / false force it).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import random
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np
import torch

from distillrank.allocator import keep_freed_memory
from distillrank.errors import ConfigError

_DTYPES = MappingProxyType({"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16, "int8": None})
PRECISIONS = tuple(sorted(_DTYPES))
BACKENDS = ("torch", "onnx")
ONNX_PACKAGES = ("onnxruntime", "onnx", "onnxscript")  # what hardware.backend=onnx needs installed
CPU = torch.device("cpu")


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


def missing_onnx_packages() -> list[str]:
    """The packages ``hardware.backend=onnx`` needs that are not installed."""
    return [name for name in ONNX_PACKAGES if importlib.util.find_spec(name) is None]


def require_onnx() -> None:
    """Raises a ConfigError naming the install command when ONNX Runtime cannot run here."""
    missing = missing_onnx_packages()
    if missing:
        raise ConfigError(
            f"hardware.backend=onnx needs {', '.join(missing)}: pip install 'distillrank[onnx]' "
            "(or use hardware.backend=torch)"
        )


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
        require_onnx()
    return backend


def check_forward_texts(value) -> int | None:
    """``hardware.max_forward_texts`` checked: null / 0 (no cap) or a positive integer."""
    if value in (None, 0):
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ConfigError(f"hardware.max_forward_texts={value!r}; expected null or a positive integer")
    return value


def _positive_or_null(key: str, value) -> int | None:
    """``hardware.<key>`` checked: null or a positive integer."""
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"hardware.{key}={value!r}; expected null or a positive integer")
    return value


def check_batch_tokens(value) -> int | None:
    """``hardware.max_batch_tokens`` checked: null (fixed batch sizes) or a positive integer."""
    return _positive_or_null("max_batch_tokens", value)


def check_forward_tokens(value) -> int | None:
    """``hardware.max_forward_tokens`` checked: null (no cap) or a positive integer."""
    return _positive_or_null("max_forward_tokens", value)


def check_prefetch(value) -> bool | None:
    """``hardware.prefetch`` checked: null (on for CUDA, off for the CPU), true or false."""
    if value is not None and not isinstance(value, bool):
        raise ConfigError(f"hardware.prefetch={value!r}; expected null (auto: on for CUDA), true or false")
    return value


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; an unavailable CUDA device is a config error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"hardware.device={name} but CUDA is not available here; use hardware=cpu")
    return device


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The dtype ``precision`` computes in under autocast (bf16 / fp16); None for fp32 and int8."""
    return _DTYPES[check_precision(precision)]


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """A mixed-precision context for ``precision`` (fp32 and int8 mean none)."""
    dtype = autocast_dtype(precision)
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


@dataclass(frozen=True)
class Runtime:
    """Where and how models run: what a ``hardware`` config decides, checked, as one frozen value.

    Attributes:
        device: the torch device models run on.
        precision: ``fp32`` | ``bf16`` | ``fp16`` (autocast) | ``int8`` (quantized frozen teachers).
        backend: ``torch`` or ``onnx`` (frozen teachers and the mining encoder in ONNX Runtime).
        max_forward_texts: the most texts (or pairs) one inference forward holds; None: no cap.
        num_threads: torch's intra-op threads (set by :meth:`apply`); None: torch's default.
        max_batch_tokens: inference batches by token budget: rows × the longest row's tokens at most
            this (at least one row; rows still capped by ``max_forward_texts``); None: fixed batch sizes.
        prefetch: tokenize the next inference batch in a thread while the model runs this one (and,
            on CUDA, pin it for an asynchronous copy); None: on for CUDA devices, off on the CPU,
            where the thread would only compete with the model for the same cores.
        max_forward_tokens: the most tokens (rows × padded length) one inference forward holds: a
            batch over it runs as several forwards of consecutive rows, each cut to its longest
            row (at least one row a forward; :func:`distillrank.models.batching.forward_pieces`);
            None: no cap.
        keep_freed_memory: glibc malloc keeps freed memory for the next forward instead of handing it
            back to the kernel (set by :meth:`apply`; :mod:`distillrank.allocator`); False: glibc's
            defaults; None (unset in the config): True.

    ``Runtime()`` is the CPU in fp32 on PyTorch without a cap: what library code gets without a stage.

    Raises:
        ConfigError: an unknown precision or backend, onnx on a GPU or without its packages, a bad cap.
    """

    device: torch.device = CPU
    precision: str = "fp32"
    backend: str = "torch"
    max_forward_texts: int | None = None
    num_threads: int | None = None
    max_batch_tokens: int | None = None
    prefetch: bool | None = None
    keep_freed_memory: bool | None = True
    max_forward_tokens: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "device", torch.device(self.device))
        check_precision(self.precision)
        check_backend(self.backend, self.device)
        object.__setattr__(self, "max_forward_texts", check_forward_texts(self.max_forward_texts))
        check_batch_tokens(self.max_batch_tokens)
        check_forward_tokens(self.max_forward_tokens)
        check_prefetch(self.prefetch)
        if self.keep_freed_memory is None:  # unset (null, or a config written before it existed): on
            object.__setattr__(self, "keep_freed_memory", True)
        if not isinstance(self.keep_freed_memory, bool):
            raise ConfigError(f"hardware.keep_freed_memory={self.keep_freed_memory!r}; expected true or false")

    @classmethod
    def from_config(cls, hardware) -> Runtime:
        """The runtime of a ``hardware`` config node (its device resolved: ``auto``, CUDA checked)."""
        return cls(
            device=resolve_device(hardware.device),
            precision=str(hardware.precision),
            backend=configured_backend(hardware),
            max_forward_texts=getattr(hardware, "max_forward_texts", None),
            num_threads=getattr(hardware, "num_threads", None),
            max_batch_tokens=getattr(hardware, "max_batch_tokens", None),
            prefetch=getattr(hardware, "prefetch", None),
            keep_freed_memory=getattr(hardware, "keep_freed_memory", None),
            max_forward_tokens=getattr(hardware, "max_forward_tokens", None),
        )

    @property
    def int8(self) -> bool:
        """Whether frozen models are quantized to int8."""
        return self.precision == "int8"

    def on(self, device: torch.device) -> Runtime:
        """This runtime on another device (a data-parallel rank's)."""
        return dataclasses.replace(self, device=device)

    def autocast(self) -> contextlib.AbstractContextManager:
        """The mixed-precision context of one forward (none for fp32 and int8)."""
        return autocast(self.device, self.precision)

    def forward_texts(self, batch_size: int) -> int:
        """How many texts (or pairs) one forward pass holds: ``batch_size``, capped by
        ``max_forward_texts``. A batch larger than the cap runs as several forwards with the same
        result: on a CPU, forwards of about 16 texts are faster and far smaller in memory than one
        forward of the whole batch (docs/BENCHMARKS.md, "Where the speed comes from")."""
        cap = self.max_forward_texts
        return max(1, min(batch_size, cap)) if cap else max(1, batch_size)

    def prefetches(self, device: torch.device | None = None) -> bool:
        """Whether inference batches are tokenized one ahead in a thread for a model on ``device``
        (default: this runtime's): ``prefetch`` when set, else only on CUDA."""
        if self.prefetch is not None:
            return self.prefetch
        return (self.device if device is None else torch.device(device)).type == "cuda"

    def apply(self) -> Runtime:
        """Apply the process-wide settings: torch's intra-op threads when configured, and the
        allocator's (:func:`distillrank.allocator.keep_freed_memory`) when ``keep_freed_memory``;
        this runtime."""
        apply_threads(self.num_threads)
        if self.keep_freed_memory:
            keep_freed_memory()
        return self


def configure(hardware) -> Runtime:
    """What a stage does once with its ``hardware`` config: the checked :class:`Runtime`, with
    its process-wide settings applied (torch's threads, the allocator)."""
    return Runtime.from_config(hardware).apply()
