"""``hardware=auto``: pick a model's backend and precision on this machine by measurement.

A short calibration runs each candidate runtime this machine offers (:func:`inference_candidates`:
torch fp32, torch bf16 autocast, torch int8, ONNX Runtime fp32 / int8 where installed, CUDA fp32 /
bf16 where present; :func:`training_candidates`: fp32 and bf16 autocast) on the actual model and a
calibration batch of real texts, and chooses the fastest candidate whose results stay within
:data:`FIDELITY` of fp32 on PyTorch:

* inference (:func:`calibrate_scores`): one warm-up call, then ``repeats`` timed calls, the median;
  mean per-query Spearman of the scores against fp32's >= 0.995 and the top-1 candidate unchanged
  for >= 98% of the queries (the measures of docs/BENCHMARKS.md's precision tables);
* training (:func:`calibrate_training`): the first steps from the same weights and seed; every
  step's loss within a relative 1e-2 of fp32's; the median step time after the first.

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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

from distillrank.errors import ConfigError, DistillrankError
from distillrank.runtime import Runtime, missing_onnx_packages
from distillrank.workspace import atomic_write_json, drop_unreadable, fingerprint, locked, seal, usable_entry

log = logging.getLogger(__name__)

AUTO = "auto"
CALIBRATION_VERSION = 1  # bump when what is measured, or how, changes: every cached choice is redone
_ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8", "amx_tile")


@dataclass(frozen=True)
class Fidelity:
    """How close to fp32 on PyTorch a candidate must stay to be chosen."""

    spearman: float = 0.995  # mean per-query Spearman of the scores
    top1: float = 0.98  # share of queries whose top-scored candidate is unchanged
    loss_rtol: float = 1e-2  # training: every first step's loss within this relative difference


FIDELITY = Fidelity()


@dataclass(frozen=True)
class Measured:
    """One candidate's measurements: median seconds per call (or training step), its speed-up over
    the fp32 reference, its fidelity, and why it was rejected (None: within fidelity)."""

    precision: str
    backend: str
    seconds: float
    speedup: float = 1.0
    spearman: float | None = None
    top1: float | None = None
    loss_rdiff: float | None = None
    rejected: str | None = None


@dataclass(frozen=True)
class Choice:
    """The runtime chosen for one model on this machine, with what decided it.

    ``candidates``: every candidate measured, the reference (fp32 on PyTorch) first; ``seconds``:
    what the calibration took; ``cached``: whether it came from the calibration cache; ``reason``:
    why nothing was measured (a model without weights), else None.
    """

    precision: str
    backend: str
    candidates: tuple[Measured, ...] = ()
    seconds: float = 0.0
    cached: bool = False
    reason: str | None = None

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
        parts = [f"{m.speedup:.2f}x fp32"]
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
        return cls(candidates=candidates, cached=bool(data.get("cached", False)), **fields)


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


def machine_identity(device: torch.device) -> dict:
    """What makes one machine's measurements another's: the CPU model and its ISA flags (avx512,
    bf16, AMX), the cores and torch's threads, torch and ONNX Runtime's versions, and the CUDA
    device's name when ``device`` is a GPU."""
    cpu = cpu_info()
    identity = {
        "cpu": cpu["model"],
        "isa": cpu["isa"] or [],
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
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


def _median_seconds(
    call: Callable[[], object], repeats: int, clock: Callable[[], float]
) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        start = clock()
        out = call()
        times.append(clock() - start)
    return float(np.median(times)), out


def _pick(
    measured: list[Measured], started: float, clock: Callable[[], float], precision: str, backend: str
) -> Choice:
    """The fastest candidate within fidelity, among those ``precision`` / ``backend`` allow (the
    reference, measured anyway, is rejected when a fixed value excludes it).

    Raises:
        ConfigError: no candidate is within fidelity and allowed.
    """
    reference = measured[0].seconds
    done = []
    for m in measured:
        if m.rejected is None and not (_wanted(precision, m.precision) and _wanted(backend, m.backend)):
            m = dataclasses.replace(
                m, rejected=f"excluded by hardware.precision={precision}, hardware.backend={backend}"
            )
        done.append(dataclasses.replace(m, speedup=round(reference / max(m.seconds, 1e-12), 3)))
    accepted = [m for m in done if m.rejected is None]
    if not accepted:
        why = "; ".join(f"{m.backend} {m.precision}: {m.rejected}" for m in done)
        raise ConfigError(
            f"hardware=auto found no candidate within fp32's fidelity that the config allows ({why})"
        )
    best = min(accepted, key=lambda m: m.seconds)
    return Choice(best.precision, best.backend, tuple(done), round(clock() - started, 3))


def calibrate_scores(
    score: Callable[[Runtime], np.ndarray],
    candidates: Sequence[Runtime],
    groups: np.ndarray,
    *,
    repeats: int = 3,
    fidelity: Fidelity = FIDELITY,
    clock: Callable[[], float] = time.perf_counter,
    precision: str = AUTO,
    backend: str = AUTO,
) -> Choice:
    """The fastest of ``candidates`` whose scores stay within ``fidelity`` of the first's (fp32 on
    PyTorch, the reference).

    ``score(runtime)`` scores the calibration pairs under ``runtime`` (``groups``: each pair's query);
    each candidate scores once to warm up (models load, ONNX exports, int8 quantizes), then
    ``repeats`` times, timed by ``clock``; its time is the median. A candidate that raises is
    rejected with its error. ``precision`` / ``backend`` other than ``auto`` restrict the choice.
    """
    started = clock()
    groups = np.asarray(groups)
    reference: np.ndarray | None = None
    measured: list[Measured] = []
    for runtime in candidates:
        try:
            score(runtime)  # warm-up
            seconds, out = _median_seconds(lambda rt=runtime: score(rt), repeats, clock)
        except Exception as err:  # noqa: BLE001 - a candidate this machine cannot run is rejected, not fatal
            if reference is None:
                raise
            measured.append(
                Measured(runtime.precision, runtime.backend, float("inf"), rejected=f"failed: {err}")
            )
            continue
        scores = np.asarray(out, dtype=np.float64)
        if reference is None:
            reference = scores
        rho, top1 = per_query_agreement(reference, scores, groups)
        rejected = None
        if rho < fidelity.spearman:
            rejected = f"Spearman {rho:.4f} < {fidelity.spearman}"
        elif top1 < fidelity.top1:
            rejected = f"top-1 unchanged {100 * top1:.1f}% < {100 * fidelity.top1:.0f}%"
        measured.append(
            Measured(
                runtime.precision,
                runtime.backend,
                seconds,
                spearman=round(rho, 6),
                top1=round(top1, 4),
                rejected=rejected,
            )
        )
    return _pick(measured, started, clock, precision, backend)


def calibrate_training(
    steps: Callable[[Runtime], tuple[list[float], list[float]]],
    candidates: Sequence[Runtime],
    *,
    fidelity: Fidelity = FIDELITY,
    clock: Callable[[], float] = time.perf_counter,
    precision: str = AUTO,
) -> Choice:
    """The fastest of ``candidates`` whose first training steps' losses stay within
    ``fidelity.loss_rtol`` of the first candidate's (fp32, the reference).

    ``steps(runtime)`` runs the same few steps from the same weights and seed under ``runtime`` and
    returns their losses and seconds; a candidate's time is the median of its steps after the first
    (the first warms up). A candidate that raises is rejected with its error.
    """
    started = clock()
    reference: np.ndarray | None = None
    measured: list[Measured] = []
    for runtime in candidates:
        try:
            losses, times = steps(runtime)
        except Exception as err:  # noqa: BLE001 - a candidate this machine cannot run is rejected, not fatal
            if reference is None:
                raise
            measured.append(
                Measured(runtime.precision, runtime.backend, float("inf"), rejected=f"failed: {err}")
            )
            continue
        got = np.asarray(losses, dtype=np.float64)
        if reference is None:
            reference = got
        rdiff = float(np.max(np.abs(got - reference) / np.maximum(np.abs(reference), 1e-8)))
        rejected = (
            None
            if np.isfinite(rdiff) and rdiff <= fidelity.loss_rtol
            else f"loss off by {rdiff:.2e} > {fidelity.loss_rtol}"
        )
        seconds = float(np.median(times[1:] if len(times) > 1 else times))
        measured.append(
            Measured(
                runtime.precision, runtime.backend, seconds, loss_rdiff=round(rdiff, 6), rejected=rejected
            )
        )
    return _pick(measured, started, clock, precision, "torch")


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
    cache_root: str | Path, key: CacheKey, calibrate: Callable[[], Choice], *, main: bool = True, wait_s: float = 600.0
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
