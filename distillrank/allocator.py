"""The C allocator under PyTorch's CPU tensors: keep freed memory for the next forward.

PyTorch allocates CPU tensors with ``posix_memalign`` and frees them when the last reference goes:
an encoder's forward makes and drops tens of tensors of 1–25 MB (a [32, 128, 1536] activation is
25 MB), and the next forward makes them again. glibc's malloc serves such sizes either by ``mmap``
(above its mmap threshold) and hands them back to the kernel on free, or from its heap, whose free
top it returns to the kernel above its trim threshold. Both thresholds start at 128 KiB and rise only
as glibc sees large blocks freed, so in practice part of every forward's memory comes back from the
kernel as fresh pages: each 4 KiB page zeroed and mapped on its first touch, by a page fault. On
2-core machines that was 35,000–60,000 page faults per MiniLM-L6 forward of 32 × 128 tokens — about
160 MB zeroed a forward, and the cost, in the profiles, of the bias copies and GELU that write fresh
outputs (docs/BENCHMARKS.md, "The allocator").

:func:`keep_freed_memory` sets both thresholds once for the process — mmap 32 MiB (the most glibc's
own dynamic threshold rises to on 64-bit systems), trim 128 MiB — so that freed blocks stay in the
process and the next forward reuses pages already mapped: 0 page faults a step after the first
batches. Measured on a Xeon with AMX (``scripts/bench/allocator.py``, arms alternating process against
process; docs/BENCHMARKS.md): MiniLM-L6's forward 1.07–1.16× faster in fp32, a 2-layer student's
training step 1.10–1.15× in fp32 and 1.27–1.33× under bf16 autocast; the bf16 forward within that
machine's noise (0.89–1.01×). The price: memory a process keeps — up to 128 MiB free at the top of
its heap, and freed blocks that a later request of another size cannot reuse; blocks over 32 MiB
still go back to the kernel. On the quick mining benchmark the peak grew by 10–15% (146 → 161 MiB).

This is what Intel's and PyTorch's CPU tuning guides reach by preloading jemalloc or tcmalloc; glibc's
own settings need no extra library. :func:`keep_freed_memory` does nothing where they do not apply
(a C library other than glibc: macOS, Windows, musl) or where the user has already chosen (a
``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` variable, malloc settings in
``GLIBC_TUNABLES``, or jemalloc / tcmalloc / mimalloc in ``LD_PRELOAD``). ``hardware.keep_freed_memory
=false`` leaves glibc's defaults. Layer 0: imports nothing of distillrank.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform

log = logging.getLogger(__name__)

MMAP_THRESHOLD = 32 << 20  # glibc's DEFAULT_MMAP_THRESHOLD_MAX on 64-bit systems
TRIM_THRESHOLD = 128 << 20
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt's parameters (malloc.h)
_OTHER_ALLOCATORS = ("jemalloc", "tcmalloc", "mimalloc")


def users_choice(environ: os._Environ | dict | None = None) -> str | None:
    """What in the environment says the user has chosen the allocator's settings; None when nothing."""
    env = os.environ if environ is None else environ
    for name in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"):
        if name in env:
            return name
    if "glibc.malloc." in env.get("GLIBC_TUNABLES", ""):
        return "GLIBC_TUNABLES"
    preload = env.get("LD_PRELOAD", "")
    for name in _OTHER_ALLOCATORS:
        if name in preload:
            return f"LD_PRELOAD ({name})"
    return None


def settings(enabled: bool) -> str:
    """The allocator settings a process runs with when :func:`keep_freed_memory` is called
    (``enabled``) or not, for calibration keys: ``glibc, freed memory kept (mmap 32 MiB, trim 128
    MiB)``, ``set by <what the user set>``, or ``default``."""
    chosen = users_choice()
    if chosen is not None:
        return f"set by {chosen}"
    if enabled and _glibc():
        return f"glibc, freed memory kept (mmap {MMAP_THRESHOLD >> 20} MiB, trim {TRIM_THRESHOLD >> 20} MiB)"
    return "default"


def _glibc() -> bool:
    try:
        return platform.system() == "Linux" and str(os.confstr("CS_GNU_LIBC_VERSION")).startswith("glibc")
    except (ValueError, OSError, AttributeError):  # no such confstr name: not glibc
        return False


def keep_freed_memory() -> bool:
    """Set glibc malloc's mmap threshold to 32 MiB and its trim threshold to 128 MiB for this process
    (process-wide, like torch's threads; calling it again sets the same values). True when the
    settings are in force; False, doing nothing, on a C library other than glibc or when the
    environment holds the user's own choice (:func:`users_choice`)."""
    if not _glibc():
        return False
    chosen = users_choice()
    if chosen is not None:
        log.debug("allocator left as %s sets it", chosen)
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return (
            libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
            and libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
        )
    except (OSError, AttributeError):  # pragma: no cover - glibc without mallopt is not a thing
        return False
