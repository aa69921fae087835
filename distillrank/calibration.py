"""``hardware=auto``: pick a model's backend and precision on this machine by measurement.

A short calibration runs each candidate runtime this machine offers (:func:`inference_candidates`:
torch fp32, torch bf16 autocast, torch int8, ONNX Runtime fp32 / int8 where installed, CUDA fp32 /
bf16 where present; :func:`training_candidates`: fp32 and bf16 autocast) on the actual model and a
calibration batch of real texts, and chooses the fastest candidate whose results stay within
:data:`FIDELITY` of fp32 on PyTorch:

* inference (:func:`calibrate_scores`): one warm-up call, whose scores are judged: mean per-query
  Spearman against fp32's >= 0.995 and the top-1 candidate unchanged for >= 98% of the queries (the
  measures of docs/BENCHMARKS.md's precision tables); a candidate within them then gets ``repeats``
  timed calls, the median, or fewer once its timed calls add up to :data:`TIMED_ENOUGH` seconds;
* training (:func:`calibrate_training`): the first steps from the same weights and seed; every
  step's loss within a relative 1e-2 of fp32's (a candidate stops at the first step outside); the
  median step time after the first.

It measures only what can still win, so it fits in seconds: on a CPU, a bf16 probe
(:func:`probe_bf16`: a linear of the model's hidden size, fp32 against bf16 autocast, a fraction of
a second) skips the bf16 candidates when bf16 runs clearly slower here (a CPU without bf16 units
emulates it, 7-20x slower), recorded as rejected with the probe's ratio; a candidate whose first
timed call is over :data:`SLOWER` times the best median so far is not timed again; and a candidate
replaces fp32 on PyTorch (the reference: deterministic, what the published numbers were made with)
only when it is at least :data:`PREFERENCE` times faster, above the timing noise of a small machine.

The choice (a :class:`Choice`: the precision, the backend, every candidate's speed and fidelity,
and why a candidate was rejected) is cached in ``<cache>/calibration/<machine>-<model>.json``
(:func:`cached_choice`: locked, written atomically and sealed; a damaged entry is dropped and the
calibration runs again), keyed by :func:`machine_identity` and the model's identity, so it runs
once per machine and model. Layer 1: the builders give it the model, its scoring or training
steps and the texts.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
import json
import logging
import os
import platform
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

from distillrank import allocator
from distillrank.errors import ConfigError, DistillrankError
from distillrank.runtime import Runtime, autocast, missing_onnx_packages
from distillrank.workspace import atomic_write_json, drop_unreadable, fingerprint, locked, seal, usable_entry

log = logging.getLogger(__name__)

AUTO = "auto"
CALIBRATION_VERSION = 5  # 5: inference timing stops at TIMED_ENOUGH s; 4: training candidates step in turn; bump when what is measured, or how, changes: every cached choice is redone
_ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8", "amx_tile")
# A candidate replaces the reference (fp32 on PyTorch) only when at least this much faster: on a
# 2-core machine the same ONNX Runtime fp32 graph measured 0.97x-1.5x of torch across runs, and a
# choice made by noise would change a config's scores from one machine fingerprint to the next.
PREFERENCE = 1.05
# A candidate whose first timed call takes over this multiple of the best median so far is not
# timed again (it cannot win; its one measurement is recorded).
SLOWER = 1.25
# An inference candidate is timed ``repeats`` times, or fewer once its timed calls add up to this
# many seconds: a call that long already averages the machine's noise over several forwards, and on
# a slow CPU three of them made the calibration overrun its 30 s (EPYC-2, AVX2: the mining
# encoder's half batch at 256 tokens took 4.1 s a call, 41 s in all). Calls under a second (the
# AMX Xeons' 0.3-1.7 s) are timed as before.
TIMED_ENOUGH = 3.0
# On a CPU, bf16 candidates are measured only when the bf16 probe runs at least this fraction of
# fp32's speed (below it bf16 is emulated, and the full model would be as slow: skipped).
BF16_PROBE_MIN = 0.8
# When torch int8 scores with a mean Spearman below this, ONNX Runtime int8 is not measured (its
# graph costs an export and a quantization, most of a calibration's time): int8 weights are too
# coarse for this model. ONNX Runtime's per-channel quantization measured about half torch's error
# (all-MiniLM-L6-v2: Spearman 0.96 against 0.93), far from the 0.995 asked, so an error (1 - Spearman)
# four times the allowed one leaves it no chance.
INT8_HOPELESS = 0.98


@dataclass(frozen=True)
class Fidelity:
    """How close to fp32 on PyTorch a candidate must stay to be chosen."""

    spearman: float = 0.995  # mean per-query Spearman of the scores
    top1: float = 0.98  # share of queries whose top-scored candidate is unchanged
    loss_rtol: float = 1e-2  # training: every first step's loss within this relative difference


FIDELITY = Fidelity()


@dataclass(frozen=True)
class Measured:
    """One candidate's measurements: median seconds per call (or training step; None: not timed,
    being rejected before), its speed-up over the fp32 reference (None: not timed), the timed calls
    (steps) the median is of, the seconds the calibration spent on it (``spent``: loading, export,
    warm-up and timed calls; None: not run), its fidelity, and why it was rejected (None: within
    fidelity)."""

    precision: str
    backend: str
    seconds: float | None
    speedup: float | None = 1.0
    timed: int = 0
    spent: float | None = None
    spearman: float | None = None
    top1: float | None = None
    loss_rdiff: float | None = None
    rejected: str | None = None


@dataclass(frozen=True)
class Choice:
    """The runtime chosen for one model on this machine, with what decided it.

    ``candidates``: every candidate measured, the reference (fp32 on PyTorch) first; ``seconds``:
    what the calibration took; ``cached``: whether it came from the calibration cache; ``reason``:
    why nothing was measured (a model without weights), else None; ``probe``: the bf16 probe's
    measurement (:meth:`Probe.as_dict`) when one ran.
    """

    precision: str
    backend: str
    candidates: tuple[Measured, ...] = ()
    seconds: float = 0.0
    cached: bool = False
    reason: str | None = None
    probe: dict | None = None

    @property
    def chosen(self) -> Measured | None:
        """The chosen candidate's measurements (None when nothing was measured)."""
        for m in self.candidates:
            if (m.precision, m.backend) == (self.precision, self.backend):
                return m
        return None

    def describe(self, what: str) -> str:
        """One log line: ``teacher X runs torch bf16, 2.1x fp32, Spearman 0.9991, top-1 99.2%``."""
        line = f"hardware=auto: {what} runs {self.backend} {self.precision}"
        m = self.chosen
        if m is None:
            return f"{line} ({self.reason or 'not measured'})"
        parts = [f"{m.speedup:.2f}x fp32" if m.speedup is not None else "not timed"]
        if m.spearman is not None:
            parts.append(f"Spearman {m.spearman:.4f}")
        if m.top1 is not None:
            parts.append(f"top-1 {100 * m.top1:.1f}%")
        if m.loss_rdiff is not None:
            parts.append(f"loss within {m.loss_rdiff:.2e} of fp32")
        rejected = [f"{c.backend} {c.precision} ({c.rejected})" for c in self.candidates if c.rejected]
        if rejected:
            parts.append("rejected: " + "; ".join(rejected))
        source = "cached" if self.cached else f"calibrated in {self.seconds:.1f} s"
        return f"{line}, {', '.join(parts)} [{source}]"

    def as_dict(self) -> dict:
        """The choice as plain values, for manifests and the cache."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Choice:
        """The inverse of :meth:`as_dict`.

        Raises:
            KeyError / TypeError / ValueError: a record that is not a choice.
        """
        candidates = tuple(Measured(**m) for m in data["candidates"])
        fields = {k: data[k] for k in ("precision", "backend", "seconds", "reason")}
        return cls(
            candidates=candidates, cached=bool(data.get("cached", False)), probe=data.get("probe"), **fields
        )


def unmeasured(reason: str) -> Choice:
    """fp32 on PyTorch, chosen without measuring (a model with nothing to calibrate), with why."""
    return Choice("fp32", "torch", reason=reason)


# --------------------------------------------------------------------------- the machine
@functools.lru_cache(maxsize=1)
def _lscpu() -> str:
    """``lscpu``'s output ("" where it is not installed or fails); run once a process."""
    try:
        return subprocess.run(["lscpu"], capture_output=True, text=True, timeout=5, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def _fields(text: str) -> dict[str, str]:
    """``key: value`` lines, the first processor's (``/proc/cpuinfo`` repeats them per processor)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() not in out:
            out[key.strip()] = value.strip()
    return out


def _number(value: str | None) -> int | None:
    """A decimal or ``0x`` hexadecimal field as an int (None where absent or not a number)."""
    try:
        return int(value, 16) if value and value.lower().startswith("0x") else int(value) if value else None
    except ValueError:
        return None


def cpu_info(cpuinfo: str | None = None, lscpu: str | None = None) -> dict:
    """The CPU this process runs on, as far as Linux says: ``model`` (``/proc/cpuinfo``'s model name,
    or ``lscpu``'s where it says more, e.g. on ARM; the platform's name without either),
    ``vendor`` and the ``family`` / ``model_number`` / ``stepping`` numbers (None where not given),
    ``isa``: the flags of :data:`_ISA_FLAGS` it has (None when no flags line was found: unknown,
    not absent), ``torch_capability`` (``torch.backends.cpu.get_cpu_capability()``: the kernels
    torch dispatches to here, e.g. ``AVX2`` / ``AVX512`` / ``AMX``), ``cores`` (``os.cpu_count()``)
    and ``affinity`` (the cores this process may run on).

    ``cpuinfo`` / ``lscpu`` are the texts to parse (tests); None reads ``/proc/cpuinfo`` and runs
    ``lscpu`` (the latter only when given no ``cpuinfo``)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            cpuinfo = ""
        if lscpu is None:
            lscpu = _lscpu()
    proc, ls = _fields(cpuinfo), _fields(lscpu or "")
    name = proc.get("model name") or ""
    if len(ls.get("Model name", "")) > len(name):
        name = ls["Model name"]
    flags = proc.get("flags", proc.get("Features"))
    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except (AttributeError, RuntimeError):
        capability = None
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        "model": name or platform.processor() or platform.machine(),
        "vendor": proc.get("vendor_id") or ls.get("Vendor ID") or None,
        "family": _number(proc.get("cpu family") or ls.get("CPU family")),
        "model_number": _number(proc.get("model") or ls.get("Model")),
        "stepping": _number(proc.get("stepping") or ls.get("Stepping")),
        "isa": None if flags is None else [f for f in _ISA_FLAGS if f in set(flags.split())],
        "torch_capability": capability,
        "cores": os.cpu_count(),
        "affinity": affinity,
    }


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_identity(device: torch.device, keep_freed_memory: bool = False) -> dict:
    """What makes one machine's measurements another's: the CPU model — its name, and the vendor's
    family / model / stepping numbers, since one name covers several generations ("Intel(R) Xeon(R)
    Processor": models 167 and 207 in docs/BENCHMARKS.md, their bf16 2.1x and 2.9x fp32) — and its
    ISA flags (avx512, bf16, AMX: the same model number without AMX in a guest runs bf16 at 0.6x
    fp32), the cores and torch's threads, the allocator's settings (:mod:`distillrank.allocator`:
    page faults change what each candidate costs: ``keep_freed_memory`` is ``hardware.keep_freed_memory``), torch and ONNX Runtime's versions, and the CUDA
    device's name when ``device`` is a GPU."""
    cpu = cpu_info()
    identity = {
        "cpu": cpu["model"],
        "cpu_numbers": [cpu["vendor"], cpu["family"], cpu["model_number"], cpu["stepping"]],
        "isa": cpu["isa"] or [],
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "allocator": allocator.settings(keep_freed_memory),
        "torch": torch.__version__,
        "onnxruntime": _version("onnxruntime"),
        "device": device.type,
    }
    if device.type == "cuda":
        identity["cuda"] = torch.cuda.get_device_name(device)
    return identity


# --------------------------------------------------------------------------- candidates
def _wanted(fixed: str, value: str) -> bool:
    return fixed == AUTO or fixed == value


def inference_candidates(
    base: Runtime, precision: str = AUTO, backend: str = AUTO, *, int8: bool = True, onnx: bool = True
) -> list[Runtime]:
    """The runtimes a frozen model may run in here, fp32 on PyTorch first (the reference): on a GPU
    fp32 and bf16; on the CPU fp32, bf16, int8 (when the model can be quantized: ``int8``) and, when
    the model can run there (``onnx``) and ONNX Runtime is installed, ONNX Runtime fp32 and int8.
    ``precision`` / ``backend`` other than ``auto`` keep only the candidates with that value (the
    reference is always measured)."""
    if base.device.type != "cpu":
        pairs = [("fp32", "torch"), ("bf16", "torch")]
    else:
        pairs = [("fp32", "torch"), ("bf16", "torch")] + ([("int8", "torch")] if int8 else [])
        if onnx and not missing_onnx_packages():
            pairs += [("fp32", "onnx")] + ([("int8", "onnx")] if int8 else [])
    return [
        dataclasses.replace(base, precision=p, backend=b)
        for i, (p, b) in enumerate(pairs)
        if i == 0 or (_wanted(precision, p) and _wanted(backend, b))
    ]


def training_candidates(base: Runtime, precision: str = AUTO) -> list[Runtime]:
    """The runtimes a student may train in: fp32 (the reference) and bf16 autocast, on PyTorch."""
    return [
        dataclasses.replace(base, precision=p, backend="torch")
        for i, p in enumerate(("fp32", "bf16"))
        if i == 0 or _wanted(precision, p)
    ]


# --------------------------------------------------------------------------- the bf16 probe
@dataclass(frozen=True)
class Probe:
    """The bf16 probe's measurement: median seconds of one linear of the model's hidden size
    (``hidden`` -> 4 x ``hidden``, the feed-forward's shape, on :data:`PROBE_TOKENS` tokens) in fp32
    and under bf16 autocast, forward and, for ``training``, backward; ``speedup``: fp32's time over
    bf16's (below 1: bf16 slower); ``seconds``: what the probe took."""

    hidden: int
    training: bool
    fp32: float
    bf16: float
    speedup: float
    seconds: float

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def pays(self) -> bool:
        """Whether bf16 is fast enough here to be worth measuring (:data:`BF16_PROBE_MIN`)."""
        return self.speedup >= BF16_PROBE_MIN

    def verdict(self) -> str:
        """What the probe measured, as a rejection reason's opening words."""
        return (
            f"bf16 probe: a hidden-{self.hidden} linear{' with backward' if self.training else ''} ran at "
            f"{self.speedup:.2f}x fp32's speed under bf16 autocast (< {BF16_PROBE_MIN})"
        )


# tokens of the probe: a real batch's size (16 texts of 32+ tokens); at 128 the calls are mostly overhead
# and the ratio of an emulated bf16 measured anywhere from 0.4 to 0.9, at 512 0.18 (the model: 0.15)
PROBE_TOKENS = 512


def _linear_probe(hidden: int, training: bool) -> Callable[[str], object]:
    """One probe step on the CPU: the linear under ``precision``'s autocast (its own random stream:
    the caller's is left alone)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(PROBE_TOKENS, hidden, generator=gen)
    weight = torch.randn(4 * hidden, hidden, generator=gen).mul_(hidden**-0.5).requires_grad_(training)
    bias = torch.zeros(4 * hidden, requires_grad=training)
    device = torch.device("cpu")

    def run(precision: str) -> object:
        with torch.set_grad_enabled(training), autocast(device, precision):
            out = torch.nn.functional.linear(x, weight, bias)
        if training:
            out.float().sum().backward()
            weight.grad = bias.grad = None
        return out

    return run


def probe_bf16(
    hidden: int,
    *,
    training: bool = False,
    repeats: int = 3,
    clock: Callable[[], float] = time.perf_counter,
    run: Callable[[str], object] | None = None,
) -> Probe:
    """Time ``run(precision)`` (default: :func:`_linear_probe`'s linear of width ``hidden``) in fp32
    and bf16 on the CPU: one warm-up each, then the median of ``repeats``. A fraction of a second:
    what tells whether this CPU runs bf16 natively (AVX512-BF16, AMX) or emulates it."""
    run = run or _linear_probe(hidden, training)
    started, median = clock(), {}
    for precision in ("fp32", "bf16"):
        run(precision)
        times = []
        for _ in range(repeats):
            start = clock()
            run(precision)
            times.append(clock() - start)
        median[precision] = float(np.median(times))
    speedup = median["fp32"] / max(median["bf16"], 1e-12)
    return Probe(
        hidden, training, round(median["fp32"], 6), round(median["bf16"], 6), round(speedup, 3),
        round(clock() - started, 3),
    )  # fmt: skip


def _screen(
    candidates: Sequence[Runtime], probe: Callable[[], Probe] | None, precision: str
) -> tuple[list[Runtime], list[Measured], Probe | None]:
    """``candidates`` less the CPU bf16 ones when ``probe()`` measures bf16 under
    :data:`BF16_PROBE_MIN` of fp32's speed (those come back rejected, with the probe's ratio). The
    probe runs only when there is a CPU bf16 candidate to judge and the precision is not fixed to
    bf16 (a fixed bf16 is what the config asks for: measured whatever the probe says)."""
    is_cpu_bf16 = [
        i > 0 and c.precision == "bf16" and c.device.type == "cpu" for i, c in enumerate(candidates)
    ]
    if probe is None or precision != AUTO or not any(is_cpu_bf16):
        return list(candidates), [], None
    made = probe()
    if made.pays:
        return list(candidates), [], made
    why = f"{made.verdict()}; not measured"
    skipped = [
        Measured(c.precision, c.backend, None, None, rejected=why)
        for c, s in zip(candidates, is_cpu_bf16, strict=True)
        if s
    ]
    return [c for c, s in zip(candidates, is_cpu_bf16, strict=True) if not s], skipped, made


# --------------------------------------------------------------------------- fidelity
def per_query_agreement(reference: np.ndarray, scores: np.ndarray, groups: np.ndarray) -> tuple[float, float]:
    """Mean per-query Spearman of ``scores`` against ``reference`` and the share of queries whose
    top-scored pair is the same; ``groups[i]`` is pair i's query. A query whose scores are constant
    in both agrees fully; constant in one only, not at all."""
    rhos, same = [], []
    for g in np.unique(groups):
        ref, got = reference[groups == g], scores[groups == g]
        if len(ref) < 2 or (np.ptp(ref) == 0 and np.ptp(got) == 0):
            rho = 1.0
        elif np.ptp(ref) == 0 or np.ptp(got) == 0:
            rho = 0.0
        else:
            rho = float(spearmanr(ref, got).statistic)
        rhos.append(rho if np.isfinite(rho) else 0.0)
        same.append(int(np.argmax(ref)) == int(np.argmax(got)))
    return float(np.mean(rhos)), float(np.mean(same))


def _within(rho: float, top1: float, fidelity: Fidelity) -> str | None:
    """Why scores of this agreement are rejected (None: within ``fidelity``)."""
    if rho < fidelity.spearman:
        return f"Spearman {rho:.4f} < {fidelity.spearman}"
    if top1 < fidelity.top1:
        return f"top-1 unchanged {100 * top1:.1f}% < {100 * fidelity.top1:.0f}%"
    return None


def _allowed(m: Measured | Runtime, precision: str, backend: str) -> bool:
    return _wanted(precision, m.precision) and _wanted(backend, m.backend)


def _slower(seconds: float, best: float | None) -> bool:
    """Whether a first timed call of ``seconds`` already loses to the best median so far."""
    return best is not None and seconds > SLOWER * best


def _in_order(measured: list[Measured], order: list[tuple[str, str]]) -> list[Measured]:
    """``measured`` in the order of the candidates (the reference first, skipped ones in place)."""
    return sorted(measured, key=lambda m: order.index((m.precision, m.backend)))


def _pick(
    measured: list[Measured],
    started: float,
    clock: Callable[[], float],
    precision: str,
    backend: str,
    probe: Probe | None = None,
) -> Choice:
    """The fastest candidate within fidelity, among those ``precision`` / ``backend`` allow (the
    reference, measured anyway, is rejected when a fixed value excludes it); the reference unless
    the fastest is at least :data:`PREFERENCE` times faster.

    Raises:
        ConfigError: no candidate is within fidelity and allowed.
    """
    reference = measured[0].seconds
    done = []
    for m in measured:
        if m.rejected is None and not _allowed(m, precision, backend):
            m = dataclasses.replace(
                m, rejected=f"excluded by hardware.precision={precision}, hardware.backend={backend}"
            )
        speedup = (
            None if m.seconds is None or reference is None else round(reference / max(m.seconds, 1e-12), 3)
        )
        done.append(dataclasses.replace(m, speedup=speedup))
    accepted = [m for m in done if m.rejected is None]
    if not accepted:
        why = "; ".join(f"{m.backend} {m.precision}: {m.rejected}" for m in done)
        raise ConfigError(
            f"hardware=auto found no candidate within fp32's fidelity that the config allows ({why})"
        )
    best = min(accepted, key=lambda m: m.seconds)
    if done[0].rejected is None and best is not done[0] and (best.speedup or 0.0) < PREFERENCE:
        best = done[0]  # not faster beyond the noise: the reference stays
    return Choice(
        best.precision, best.backend, tuple(done), round(clock() - started, 3),
        probe=probe.as_dict() if probe is not None else None,
    )  # fmt: skip


def calibrate_scores(
    score: Callable[[Runtime], np.ndarray] | None,
    candidates: Sequence[Runtime],
    groups: np.ndarray,
    *,
    repeats: int = 3,
    enough: float = TIMED_ENOUGH,
    fidelity: Fidelity = FIDELITY,
    clock: Callable[[], float] = time.perf_counter,
    precision: str = AUTO,
    backend: str = AUTO,
    probe: Callable[[], Probe] | None = None,
    timed: Callable[[Runtime], object] | None = None,
    rest: Callable[[Runtime], np.ndarray] | None = None,
) -> Choice:
    """The fastest of ``candidates`` whose scores stay within ``fidelity`` of the first's (fp32 on
    PyTorch, the reference), when at least :data:`PREFERENCE` times faster than it.

    ``score(runtime)`` scores the calibration pairs under ``runtime`` (``groups``: each pair's query).
    Each candidate scores once to warm up (models load, ONNX exports, int8 quantizes), and those
    scores are judged: a candidate outside ``fidelity`` is not timed. One within it runs
    ``timed(runtime)`` (default ``score``; the builders time half the calibration batch) ``repeats``
    times, or fewer once its timed calls add up to ``enough`` seconds, timed by ``clock``, and its
    time is the median; when its first timed call is over :data:`SLOWER` times the best median so
    far it is not timed again.

    With ``rest`` (the builders pass it), the judged scores are ``timed``'s pairs followed by
    ``rest``'s — the calibration batch in two halves — and ``score`` is not called: each candidate
    warms up on ``rest`` (untimed), then its first ``timed`` call is both judged and timed; a
    candidate outside ``fidelity`` keeps no time. One pass over the batch fewer than warming up on
    all of it and then timing its first half. An int8 candidate is not run
    when an earlier int8 one scored under :data:`INT8_HOPELESS`. A candidate that raises is rejected
    with its error. ``probe`` (CPU only): the bf16 probe, which may skip
    the bf16 candidates (:func:`_screen`). ``precision`` / ``backend`` other than ``auto`` restrict
    the choice.
    """
    started = clock()
    groups = np.asarray(groups)
    order = [(c.precision, c.backend) for c in candidates]
    candidates, skipped, probed = _screen(candidates, probe, precision)
    reference: np.ndarray | None = None
    best: float | None = None  # the best median so far among candidates the config allows
    measured: list[Measured] = []
    if rest is not None and timed is None:
        raise ValueError("calibrate_scores: rest needs timed (the batch's other half)")
    timed = timed or score
    for runtime in candidates:
        if runtime.precision == "int8" and (hopeless := _hopeless_int8(measured)) is not None:
            measured.append(Measured(runtime.precision, runtime.backend, None, None, rejected=hopeless))
            continue
        began = clock()
        try:
            times: list[float] = []
            if rest is None:
                scores = np.asarray(score(runtime), dtype=np.float64)  # the warm-up, judged
            else:
                later = np.asarray(rest(runtime), dtype=np.float64)  # the warm-up
                start = clock()
                first = np.asarray(timed(runtime), dtype=np.float64)
                times.append(clock() - start)
                scores = np.concatenate([first, later])  # judged: the batch, the timed half first
            if reference is None:
                reference = scores
            rho, top1 = per_query_agreement(reference, scores, groups)
            rejected = _within(rho, top1, fidelity)
            if rejected:
                times = []
            while (
                not rejected
                and len(times) < repeats
                and sum(times) < enough
                and not (len(times) == 1 and _slower(times[0], best))
            ):
                start = clock()
                timed(runtime)
                times.append(clock() - start)
        except Exception as err:  # noqa: BLE001 - a candidate this machine cannot run is rejected, not fatal
            if reference is None or not measured:
                raise
            measured.append(
                Measured(runtime.precision, runtime.backend, None, None, rejected=f"failed: {err}")
            )
            continue
        seconds = float(np.median(times)) if times else None
        if seconds is not None and _allowed(runtime, precision, backend):
            best = seconds if best is None else min(best, seconds)
        measured.append(
            Measured(
                runtime.precision,
                runtime.backend,
                seconds,
                timed=len(times),
                spent=round(clock() - began, 3),
                spearman=round(rho, 6),
                top1=round(top1, 4),
                rejected=rejected,
            )
        )
    return _pick(_in_order(measured + skipped, order), started, clock, precision, backend, probed)


@dataclass
class _Trial:
    """A training candidate stepped in turn with the others: its step iterator, the random state
    it left (its dropout's stream, restored before its next step), and what it measured."""

    runtime: Runtime
    run: Iterator[tuple[float, float]]
    rng: dict | None = None
    losses: list[float] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    rdiff: float = 0.0
    rejected: str | None = None
    failed: str | None = None
    spent: float = 0.0
    done: bool = False

    def close(self) -> None:
        """Stop it: a generator's ``finally`` and contexts (its RNG fork) run at once."""
        self.done = True
        if (close := getattr(self.run, "close", None)) is not None:
            close()


def _rng_state() -> dict:
    return {
        "cpu": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None,
    }


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["cpu"])
    if state["cuda"] is not None:
        torch.cuda.set_rng_state_all(state["cuda"])


def _hopeless_int8(measured: list[Measured]) -> str | None:
    """Why no further int8 candidate is worth running (an earlier int8 one scored under
    :data:`INT8_HOPELESS`); None when one is."""
    for m in measured:
        if m.precision == "int8" and m.spearman is not None and m.spearman < INT8_HOPELESS:
            return f"not measured: {m.backend} int8 scored Spearman {m.spearman:.4f} < {INT8_HOPELESS} (int8 too coarse here)"
    return None


def _loss_rdiff(got: float, reference: float) -> float:
    return abs(got - reference) / max(abs(reference), 1e-8)


def calibrate_training(
    steps: Callable[[Runtime], Iterable[tuple[float, float]]],
    candidates: Sequence[Runtime],
    *,
    fidelity: Fidelity = FIDELITY,
    clock: Callable[[], float] = time.perf_counter,
    precision: str = AUTO,
    probe: Callable[[], Probe] | None = None,
) -> Choice:
    """The fastest of ``candidates`` whose first training steps' losses stay within
    ``fidelity.loss_rtol`` of the first candidate's (fp32, the reference), when at least
    :data:`PREFERENCE` times faster than it.

    ``steps(runtime)`` yields ``(loss, seconds)`` of each of the same few steps from the same weights
    and seed under ``runtime``. The candidates take their steps **in turn** — step 1 of each, then
    step 2 of each, … — so that a machine whose speed drifts over seconds (a shared CPU; AMX's
    rate moved 2.5× between minutes on Xeon-AMX-2) slows every candidate alike instead of the one
    measured during the slow spell; each candidate's random state (its dropout's stream) is kept
    apart and restored before its next step, so its losses are those of a run alone, and the
    caller's is restored at the end. A candidate stops at its first loss outside the tolerance
    (rejected), and after its second step when that step took over :data:`SLOWER` times the
    fastest second step of an earlier candidate; its time is the median of its steps after the
    first (the first warms up). A candidate that raises is rejected with its error (the reference's
    error is raised). ``probe``: the bf16 probe (:func:`_screen`).
    """
    started = clock()
    order = [(c.precision, c.backend) for c in candidates]
    candidates, skipped, probed = _screen(candidates, probe, precision)
    outer = _rng_state()
    trials = [_Trial(runtime, iter(steps(runtime))) for runtime in candidates]
    try:
        while not all(t.done for t in trials):
            for i, trial in enumerate(trials):
                if not trial.done:
                    _advance(trial, trials[0] if i else None, trials[:i], fidelity, precision, clock)
    finally:
        for trial in trials:
            if not trial.done:
                trial.close()
        _set_rng_state(outer)
    measured = []
    for trial in trials:
        rt = trial.runtime
        if trial.failed is not None:
            measured.append(Measured(rt.precision, rt.backend, None, None, rejected=f"failed: {trial.failed}"))
            continue
        timed = trial.times[1:] if len(trial.times) > 1 else trial.times
        measured.append(
            Measured(
                rt.precision,
                rt.backend,
                float(np.median(timed)),
                timed=len(timed),
                spent=round(trial.spent, 3),
                loss_rdiff=round(trial.rdiff, 6) if np.isfinite(trial.rdiff) else None,
                rejected=trial.rejected,
            )
        )
    return _pick(_in_order(measured + skipped, order), started, clock, precision, "torch", probed)


def _advance(
    trial: _Trial,
    reference: _Trial | None,
    earlier: list[_Trial],
    fidelity: Fidelity,
    precision: str,
    clock: Callable[[], float],
) -> None:
    """One step of ``trial`` (under its own random state), judged against ``reference``'s loss at
    the same step and, at its second step, against the ``earlier`` candidates' second steps."""
    if trial.rng is not None:
        _set_rng_state(trial.rng)
    began = clock()
    try:
        item = next(trial.run, None)
    except Exception as err:  # noqa: BLE001 - a candidate this machine cannot run is rejected, not fatal
        if reference is None:
            raise
        trial.failed = str(err)
        trial.close()
        return
    finally:
        trial.spent += clock() - began
    trial.rng = _rng_state()
    if item is None:
        trial.close()
        return
    loss, seconds = item
    trial.losses.append(float(loss))
    trial.times.append(float(seconds))
    if reference is not None:
        step_rdiff = _loss_rdiff(trial.losses[-1], reference.losses[len(trial.losses) - 1])
        trial.rdiff = max(trial.rdiff, step_rdiff) if np.isfinite(step_rdiff) else float("inf")
        if not trial.rdiff <= fidelity.loss_rtol:
            trial.rejected = f"loss off by {trial.rdiff:.2e} > {fidelity.loss_rtol} at step {len(trial.losses)}"
            trial.close()
            return
    if len(trial.times) == 2:
        seconds_2 = [
            t.times[1]
            for t in earlier
            if len(t.times) > 1 and t.rejected is None and t.failed is None and _allowed(t.runtime, precision, "torch")
        ]
        if _slower(trial.times[1], min(seconds_2, default=None)):
            trial.close()


# --------------------------------------------------------------------------- the cache
@dataclass(frozen=True)
class CacheKey:
    """Where one model's choice on one machine is cached: the machine's identity and the model's
    (what it is, its role, what it may choose from, the fidelity it is held to)."""

    machine: dict
    model: dict = field(default_factory=dict)

    def path(self, cache_root: str | Path) -> Path:
        machine = fingerprint({"version": CALIBRATION_VERSION, **self.machine})[:16]
        model = fingerprint({"version": CALIBRATION_VERSION, **self.model})[:16]
        return Path(cache_root) / "calibration" / f"{machine}-{model}.json"


def _read(path: Path) -> Choice | None:
    """The choice cached at ``path``; None when absent, damaged or unreadable (then dropped)."""
    if not usable_entry(path, "calibration"):
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        return dataclasses.replace(Choice.from_dict(record["choice"]), cached=True)
    except (OSError, ValueError, KeyError, TypeError) as err:
        drop_unreadable(path, "calibration", err)
        return None


def cached_choice(
    cache_root: str | Path,
    key: CacheKey,
    calibrate: Callable[[], Choice],
    *,
    main: bool = True,
    wait_s: float = 600.0,
) -> Choice:
    """The cached choice of ``key``, else ``calibrate()``'s, written to the cache (atomically,
    sealed) under the entry's lock, so concurrent processes calibrate once. A damaged or unreadable
    entry is dropped and the calibration runs again.

    A ``torchrun`` rank other than 0 (``main=False``; it takes no locks) never calibrates: it waits
    up to ``wait_s`` for rank 0's choice, so every rank runs, and keys its stages by, the same one.

    Raises:
        DistillrankError: rank 0's choice did not appear within ``wait_s``.
    """
    path = key.path(cache_root)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not main:
        deadline = time.monotonic() + wait_s
        while (choice := _read(path)) is None:
            if time.monotonic() > deadline:
                raise DistillrankError(
                    f"hardware=auto: rank 0's calibration {path} did not appear in {wait_s:.0f} s"
                )
            time.sleep(0.5)
        return choice
    with locked(path, "calibration"):
        if (choice := _read(path)) is not None:
            return choice
        choice = calibrate()
        atomic_write_json(path, {"machine": key.machine, "model": key.model, "choice": choice.as_dict()})
        seal(path)
        return choice
