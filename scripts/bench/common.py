"""Shared pieces of the benchmarks: sizes per mode, the run context, timing and memory probes.

Result layout (every benchmark returns one dict)::

    {"benchmark": str, "settings": {...}, "cases": [case, ...], "notes": [str, ...]}

A comparison case is ``{"case", "unit", "higher_is_better", "distillrank": stats,
"sentence_transformers": stats, "ratio", "goal", "met"}`` where ``stats`` is
``{"median", "runs": [...]}`` and ``ratio`` is distillrank / sentence-transformers of the medians
for rates (pairs/s, examples/s) and sentence-transformers / distillrank for times, so a ratio
above 1 always means distillrank is faster. A measurement case (scale, ceiling) is
``{"case", "unit", "values": {...}}``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from distillrank.errors import ConfigError

BENCH_DIR = Path(__file__).resolve().parent
SCRIPTS_DIR = BENCH_DIR.parent
REPO_ROOT = SCRIPTS_DIR.parent
MINILM = "sentence-transformers/all-MiniLM-L6-v2"
MODES = ("smoke", "quick", "full")


@dataclasses.dataclass(frozen=True)
class Sizes:
    """How much work each benchmark does in one mode.

    Attributes:
        repeats: timed runs per tool (after one untimed warm-up run each); the median is reported.
        score_queries / score_depth: SciFact test queries and BM25 candidates per query scored.
        ce_max_length: cross-encoder pair truncation (tokens); bi-encoder uses query/passage lengths.
        query_max_length / passage_max_length: bi-encoder truncation (tokens), teacher and student.
        batch_size: scoring / encoding batch size.
        train_batch / train_steps: training examples per optimizer step and steps per timed run.
        mine_queries / mine_corpus / mine_depth / mine_negatives: dense mining sizes.
        scale_corpora: synthetic corpus sizes (passages) of the scale benchmark.
        scale_queries / scale_dim: synthetic queries and embedding dimension.
        score_rows / row_group: rows of the synthetic score table and rows per Parquet row group.
        matmul_n: side of the square fp32 matmul of the ceiling benchmark.
        mined_queries: training queries of the mined-candidates scoring case (1 positive + 8 BM25
            negatives each, 9 pairs per query).
        precision_texts: passages per forward pass of the precision benchmark (fp32 / bf16 / int8).
        quality_queries / quality_depth: SciFact test queries and BM25 depth re-ranked to measure
            nDCG@10 and rank agreement of int8 and bf16 against fp32.
        memory_in_child: measure peak memory in a fresh child process per tool (clean baseline).
    """

    repeats: int
    score_queries: int
    score_depth: int
    ce_max_length: int
    query_max_length: int
    passage_max_length: int
    batch_size: int
    train_batch: int
    train_steps: int
    mine_queries: int
    mine_corpus: int
    mine_depth: int
    mine_negatives: int
    scale_corpora: tuple[int, ...]
    scale_queries: int
    scale_dim: int
    score_rows: int
    row_group: int
    matmul_n: int
    memory_in_child: bool
    mined_queries: int = 4
    precision_texts: int = 8
    quality_queries: int = 4
    quality_depth: int = 5


SIZES = {
    "smoke": Sizes(
        repeats=1, score_queries=4, score_depth=5, ce_max_length=64, query_max_length=16,
        passage_max_length=32, batch_size=8, train_batch=2, train_steps=2, mine_queries=4,
        mine_corpus=40, mine_depth=10, mine_negatives=3, scale_corpora=(2000, 4000), scale_queries=8,
        scale_dim=32, score_rows=20_000, row_group=5_000, matmul_n=128, memory_in_child=False,
    ),
    "quick": Sizes(
        repeats=2, score_queries=32, score_depth=16, ce_max_length=128, query_max_length=64,
        passage_max_length=128, batch_size=32, train_batch=16, train_steps=4, mine_queries=30,
        mine_corpus=100, mine_depth=50, mine_negatives=7, scale_corpora=(10_000, 100_000),
        scale_queries=300, scale_dim=384, score_rows=40_000_000, row_group=1_000_000, matmul_n=2048,
        memory_in_child=True, mined_queries=57, precision_texts=64, quality_queries=100, quality_depth=10,
    ),
    "full": Sizes(
        repeats=5, score_queries=100, score_depth=30, ce_max_length=256, query_max_length=64,
        passage_max_length=256, batch_size=32, train_batch=16, train_steps=10, mine_queries=300,
        mine_corpus=5183, mine_depth=100, mine_negatives=7, scale_corpora=(10_000, 100_000, 1_000_000),
        scale_queries=1000, scale_dim=384, score_rows=40_000_000, row_group=1_000_000, matmul_n=4096,
        memory_in_child=True, mined_queries=300, precision_texts=128, quality_queries=300, quality_depth=30,
    ),
}


@dataclasses.dataclass
class Context:
    """Everything a benchmark needs: the mode, its sizes, the models, the data and a scratch folder.

    Attributes:
        bi_encoder: folder of the bi-encoder (teacher for scoring, model for mining).
        cross_encoder: folder of the 1-logit cross-encoder.
        student: folder of the student both trainers start from.
        collection: the loaded :class:`distillrank.data.Collection` (SciFact, or tiny in smoke).
        scratch: a folder for temporary files (matrices, tables, trainer outputs).
        cache: a folder kept between runs (BM25 index, derived models).
    """

    mode: str
    sizes: Sizes
    bi_encoder: Path
    cross_encoder: Path
    student: Path
    collection: Any
    scratch: Path
    cache: Path
    log: Callable[[str], None] = print


def stats(values: list[float]) -> dict[str, Any]:
    """``{"median", "runs"}`` of a list of measurements."""
    return {"median": float(statistics.median(values)), "runs": [float(v) for v in values]}


def comparison(
    case: str,
    unit: str,
    ours: list[float],
    theirs: list[float],
    goal: float | None,
    higher_is_better: bool = True,
    **extra: Any,
) -> dict[str, Any]:
    """A comparison case; ``ratio > 1`` means distillrank is faster (see the module docstring)."""
    a, b = stats(ours), stats(theirs)
    if higher_is_better:
        ratio = a["median"] / b["median"] if b["median"] > 0 else float("inf")
    else:
        ratio = b["median"] / a["median"] if a["median"] > 0 else float("inf")
    return {
        "case": case,
        "unit": unit,
        "higher_is_better": higher_is_better,
        "distillrank": a,
        "sentence_transformers": b,
        "ratio": float(ratio),
        "goal": goal,
        "met": None if goal is None else bool(ratio >= goal),
        **extra,
    }


def alternate(
    runs: dict[str, Callable[[], float]], repeats: int, warmup: bool | dict[str, Callable[[], object]] = True
) -> dict[str, list[float]]:
    """Call each tool's ``run()`` (which returns its measurement) ``repeats`` times, alternating.

    The order flips every round (A B, B A, …) so a load change on the shared machine hits both
    tools alike. One untimed warm-up call per tool first (lazy imports, allocator, thread pools):
    ``run()`` itself when ``warmup`` is True, or ``warmup[name]()`` (a smaller call of the same
    code) when a dict is given.
    """
    names = list(runs)
    if warmup:
        for name in names:
            (warmup[name] if isinstance(warmup, dict) else runs[name])()
    out: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names if r % 2 == 0 else reversed(names):
            out[name].append(float(runs[name]()))
    return out


def timed(fn: Callable[[], Any]) -> float:
    """Wall seconds of ``fn()``."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# --------------------------------------------------------------------------- memory
def _status_kb(field: str) -> int:
    """A ``/proc/self/status`` field in kB (0 where /proc is absent)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return 0
    return 0


class PeakMemory:
    """Peak memory of a block: anonymous RSS (sampled every 2 ms) and tracemalloc's peak.

    Anonymous RSS (``RssAnon``) is heap memory: torch tensors, numpy arrays, Python objects; pages
    of memory-mapped files are left out (they are page cache the kernel can drop). Values are MiB
    above the level at entry. tracemalloc sees Python and numpy allocations but not torch's.
    """

    def __init__(self, interval_s: float = 0.002, trace_python: bool = True) -> None:
        self.interval_s = interval_s
        self.trace_python = trace_python
        self.peak_anon_mib = 0.0
        self.peak_traced_mib = 0.0
        self._stop = threading.Event()

    def _sample(self, base_kb: int) -> None:
        peak = base_kb
        while not self._stop.is_set():
            peak = max(peak, _status_kb("RssAnon"))
            time.sleep(self.interval_s)
        peak = max(peak, _status_kb("RssAnon"))
        self.peak_anon_mib = (peak - base_kb) / 1024.0

    def __enter__(self) -> PeakMemory:
        base = _status_kb("RssAnon")
        if self.trace_python:
            tracemalloc.start()
        self._thread = threading.Thread(target=self._sample, args=(base,), daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        if self.trace_python:
            self.peak_traced_mib = tracemalloc.get_traced_memory()[1] / 2**20
            tracemalloc.stop()

    def result(self) -> dict[str, float]:
        return {"peak_anon_rss_mib": round(self.peak_anon_mib, 1), "peak_tracemalloc_mib": round(self.peak_traced_mib, 1)}


@functools.lru_cache(maxsize=8)
def distillrank_runtime(option: str = "cpu", precision: str | None = None):
    """distillrank's :class:`~distillrank.runtime.Runtime` of ``hardware=<option>``
    (conf/hardware/<option>.yaml), as a stage builds it (torch's threads set): ``cpu`` is what a user
    gets by default (its forward cap included); the ONNX arms run under ``cpu_onnx``. ``precision``
    replaces the option's. Its process-wide settings — torch's threads and the allocator's
    (``hardware.keep_freed_memory``: glibc keeps freed memory) — hold for the whole process, so
    sentence-transformers' arms timed in the same process run with them too: the ratios against it
    do not count what they gain (``scripts/bench/allocator.py`` measures that, process against
    process)."""
    from omegaconf import OmegaConf

    from distillrank.config import conf_dir
    from distillrank.runtime import configure

    runtime = configure(OmegaConf.load(conf_dir() / "hardware" / f"{option}.yaml"))
    return runtime if precision is None else dataclasses.replace(runtime, precision=precision)


def child_call(module: str, function: str, kwargs: dict[str, Any], timeout_s: float = 600) -> dict[str, Any]:
    """Run ``bench.<module>.<function>(**kwargs)`` in a fresh Python process; its JSON result.

    A fresh process gives memory measurements a clean baseline (an allocator that kept freed
    memory from an earlier run in this process would hide the next run's peak).

    Raises:
        RuntimeError: when the child fails (its stderr tail is included).
    """
    code = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); import importlib; "
        "m = importlib.import_module('bench.' + sys.argv[2]); from bench.common import distillrank_runtime; "
        "distillrank_runtime(); "
        "print('BENCH-RESULT ' + json.dumps(getattr(m, sys.argv[3])(**json.loads(sys.argv[4]))))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(SCRIPTS_DIR), module, function, json.dumps(kwargs)],
        capture_output=True, text=True, timeout=timeout_s, env={**os.environ, "TQDM_DISABLE": "1"},
    )
    for line in proc.stdout.splitlines():
        if line.startswith("BENCH-RESULT "):
            return json.loads(line.removeprefix("BENCH-RESULT "))
    raise RuntimeError(f"bench.{module}.{function} failed in a child process (rc {proc.returncode}): {proc.stderr[-2000:]}")


def write_result(out: Path, name: str, result: dict[str, Any], markdown: str) -> None:
    """``<out>/<name>.json`` and ``<out>/<name>.md``, each written atomically, and the Markdown printed:
    how the stand-alone bench scripts (profile_encoder.py, allocator.py) leave their results."""
    from distillrank.workspace import atomic_path, atomic_write_json

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / f"{name}.json", result)
    with atomic_path(out / f"{name}.md") as tmp:
        Path(tmp).write_text(markdown, encoding="utf-8")
    print(markdown)


# --------------------------------------------------------------------------- machine
def machine() -> dict[str, Any]:
    """The machine and software the numbers were taken on, and the load average at this moment.

    ``cpu`` is the CPU's model name and ``isa`` its ISA flags that decide the fast paths (AVX2,
    AVX-512, AVX-512 bf16 / VNNI, AMX; None: unknown); ``cpu_info`` all of
    :func:`distillrank.calibration.cpu_info` (vendor, family / model / stepping, torch's CPU
    capability, cores in this process's affinity): "AMD EPYC" alone names several generations."""
    import sentence_transformers
    import transformers

    from distillrank.calibration import cpu_info

    cpu = cpu_info()
    return {
        "cpu": cpu["model"],
        "isa": cpu["isa"],
        "cpu_info": cpu,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "transformers": transformers.__version__,
        "sentence_transformers": sentence_transformers.__version__,
        "python": platform.python_version(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "device": "cpu",
        "precision": "fp32 (cases named int8 / bf16 say otherwise)",
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def machine_line(m: dict[str, Any], load_end: list[float] | None = None) -> str:
    """The one-line header of a Markdown summary: "Machine: <cpu model> (<ISA flags>), N cores, torch
    X, load ...", from a :func:`machine` dict. Summaries written before the ISA flags were recorded
    say so instead of guessing them."""
    info = m.get("cpu_info") or {}
    numbers = (("family", "family"), ("model", "model_number"), ("stepping", "stepping"))
    ident = [f"{k} {info[v]}" for k, v in numbers if info.get(v) is not None]
    isa = m.get("isa")
    if isa is not None:
        flags = ", ".join(isa) or "none of avx2/avx512/amx"
    else:  # unknown: no flags line (or a summary from before the flags were recorded), never guessed
        flags = "ISA flags unknown" if "cpu_info" in m else "ISA flags not recorded"
    if info.get("torch_capability"):
        flags += f"; torch {info['torch_capability']} kernels"
    vendor = " ".join(x for x in [info.get("vendor") or "", ", ".join(ident)] if x)
    cores = f"{m['cores']} cores"
    if info.get("affinity") is not None and info["affinity"] != m["cores"]:
        cores += f" ({info['affinity']} usable)"
    load = f"load average {m['load_average']}" + (f" → {load_end}" if load_end is not None else "")
    return (
        f"Machine: {m['cpu']}{f' [{vendor}]' if vendor else ''} ({flags}), {cores}, "
        f"torch {m['torch']} ({m['torch_threads']} threads), GPU: {m.get('gpu') or 'none'}, {load}."
    )


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence progress bars and the chattier libraries inside a block."""
    import logging

    old = os.environ.get("TQDM_DISABLE")
    os.environ["TQDM_DISABLE"] = "1"
    levels = {}
    for name in ("sentence_transformers", "transformers", "datasets", "bm25s"):
        levels[name] = logging.getLogger(name).level
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TQDM_DISABLE", None)
        else:
            os.environ["TQDM_DISABLE"] = old
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def check_mode(mode: str) -> Sizes:
    if mode not in SIZES:
        raise ConfigError(f"benchmark mode {mode!r}; expected one of {MODES}")
    return SIZES[mode]
