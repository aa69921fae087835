"""Devices, precision and seeding from the ``hardware`` config."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator

import numpy as np
import torch

from distillrank.errors import ConfigError

_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; an unavailable CUDA device is a config error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"hardware.device={name} but CUDA is not available here; use hardware=cpu")
    return device


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """A mixed-precision context for ``precision`` (fp32 means none)."""
    if precision not in _DTYPES:
        raise ConfigError(f"hardware.precision={precision!r}; expected one of {sorted(_DTYPES)}")
    dtype = _DTYPES[precision]
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


@contextlib.contextmanager
def hardware(cfg) -> Iterator[tuple[torch.device, str]]:
    """Apply a ``hardware`` config node; yields (device, precision)."""
    apply_threads(cfg.num_threads)
    yield resolve_device(cfg.device), cfg.precision
