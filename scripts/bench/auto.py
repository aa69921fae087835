"""The ``hardware=auto`` arms of the benchmarks: calibrate the benchmark's own model as a stage would,
then measure the chosen runtime as every other arm is measured.

A stage under ``hardware=auto`` (the default) calibrates each model through
:mod:`distillrank.builders.hardware`; the benchmarks call the same functions
(:func:`~distillrank.builders.hardware.calibrate_ranker`,
:func:`~distillrank.builders.hardware.calibrate_student`) with the same candidates
(:func:`distillrank.calibration.inference_candidates` / ``training_candidates``) and a calibration
batch made the same way (:func:`~distillrank.builders.hardware.calibration_batch` of the bench
collection's training split), uncached, so each run measures the calibration again. The base
runtime is ``hardware=cpu``'s (the CPU, its forward cap of 16, torch's threads: what ``auto.yaml``
resolves to on a machine without a GPU; sentence-transformers runs on the CPU too).

In quick and full mode the calibration exports its ONNX graphs into a fresh folder, so its seconds
are those of the first use on a machine (export included); smoke mode shares the bench's ONNX cache
(the tests' time). Each auto case records the choice (:func:`record`): the precision and backend,
every candidate's speed-up over torch fp32 and fidelity, why a candidate was rejected, the bf16
probe, and the calibration's seconds; and its fidelity on the benchmark's own pairs against
distillrank fp32 (:func:`score_fidelity`: mean per-query Spearman, top-1 unchanged, nDCG@10 where
the benchmark has judgements). A case's ``met`` needs the speed goal and, where measured, equal
ranking quality (:data:`QUALITY`: top-1 unchanged >= 98%, nDCG@10 within 0.005 of fp32).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import Context, comparison, distillrank_runtime

TOOL = "distillrank_auto"
CALIBRATION_GOAL_S = 30.0  # issue 16: "the calibration itself takes under 30 seconds"


@dataclasses.dataclass(frozen=True)
class Quality:
    """Equal ranking quality against distillrank fp32 (issue 16's Done-when)."""

    top1: float = 0.98
    ndcg_delta: float = 0.005


QUALITY = Quality()


@contextlib.contextmanager
def onnx_cache(folder: Path | None) -> Iterator[None]:
    """ONNX exports go to ``folder`` inside the block (None: the cache as it is)."""
    from distillrank.models.onnx_runtime import CACHE_ENV

    if folder is None:
        yield
        return
    previous = os.environ.get(CACHE_ENV)
    os.environ[CACHE_ENV] = str(folder)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(CACHE_ENV, None)
        else:
            os.environ[CACHE_ENV] = previous


def base_runtime():
    """The runtime the candidates vary: ``hardware=cpu``'s (fp32 on PyTorch, its forward cap)."""
    return distillrank_runtime("cpu", "fp32")


def runtime_of(choice: dict):
    """The runtime of a recorded choice, made as the named arms' runtimes are
    (``hardware=cpu`` / ``cpu_onnx`` with the chosen precision)."""
    return distillrank_runtime("cpu_onnx" if choice["backend"] == "onnx" else "cpu", choice["precision"])


def record(choice, wall_s: float, first_use: bool) -> dict[str, Any]:
    """A :class:`distillrank.calibration.Choice` as the benchmark's JSON: the choice, every
    candidate (speed-up, Spearman / top-1 or loss difference, rejected), the bf16 probe, the
    calibration's own seconds (``seconds``; ``wall_s`` with the calibration batch made) and whether
    they include the ONNX export (``first_use``)."""
    chosen = choice.chosen
    return {
        "precision": choice.precision,
        "backend": choice.backend,
        "seconds": choice.seconds,
        "wall_s": round(wall_s, 3),
        "first_use": first_use,
        "goal_s": CALIBRATION_GOAL_S,
        "met": bool(wall_s < CALIBRATION_GOAL_S),
        "speedup_vs_fp32": None if chosen is None else chosen.speedup,
        "reason": choice.reason,
        "candidates": [dataclasses.asdict(m) for m in choice.candidates],
        "probe": choice.probe,
    }


def chosen(choice: dict) -> dict:
    """The chosen candidate's measurements in a recorded choice ({} when nothing was measured)."""
    key = (choice["precision"], choice["backend"])
    return next((m for m in choice["candidates"] if (m["precision"], m["backend"]) == key), {})


def _calibrate(ctx: Context, what: str, run: Callable[[], Any]) -> dict[str, Any]:
    first_use = ctx.mode != "smoke"
    start = time.perf_counter()
    with contextlib.ExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(dir=ctx.scratch, prefix="calib-onnx-")))
        stack.enter_context(onnx_cache(folder if first_use else None))
        choice = run()
    out = record(choice, time.perf_counter() - start, first_use)
    ctx.log(f"bench: {choice.describe(what)}")
    return out


def calibrate_ranker(ctx: Context, ranker, *, mining: bool = False) -> dict[str, Any]:
    """The choice a stage would make for ``ranker`` (a teacher; ``mining``: the dense mining encoder,
    with its candidates), calibrated on the bench collection's training queries."""
    from distillrank import calibration
    from distillrank.builders import hardware

    if mining:
        int8, onnx = hardware.MINING_INT8, hardware.MINING_ONNX
    else:
        int8, onnx = ranker.supports_int8, ranker.supports_onnx
    base = base_runtime()
    candidates = calibration.inference_candidates(base, int8=int8, onnx=onnx)

    def run():
        batch = hardware.calibration_batch(ctx.collection, "train")
        return hardware.calibrate_ranker(ranker, base, candidates, batch, [ranker.weights_folder()])

    return _calibrate(ctx, "mining encoder" if mining else f"teacher {ranker.kind.value}", run)


def calibrate_student(ctx: Context, make_student: Callable[[], Any], lr: float) -> dict[str, Any]:
    """The training choice a stage would make for the student ``make_student()`` builds (fp32 or
    bf16 autocast), calibrated on the bench collection's training queries."""
    from distillrank import calibration
    from distillrank.builders import hardware

    base = base_runtime()
    candidates = calibration.training_candidates(base)

    def run():
        pairs, groups = hardware.collection_pairs(ctx.collection, "train")
        steps = hardware.student_steps(make_student, lr, pairs, groups)
        if steps is None:
            return calibration.unmeasured("too few passages per query to calibrate training")
        return hardware.calibrate_student(steps, base, candidates, [ctx.student])

    return _calibrate(ctx, "student (training)", run)


def ndcg_at_10(
    qrels: dict, qids: list[str], docids: list[str], pairs: np.ndarray, scores: np.ndarray
) -> float:
    """nDCG@10 of re-ranking ``pairs`` (rows of (query index, passage index)) by ``scores``."""
    from distillrank.evaluation.metrics import compute_metrics

    run: dict[str, dict[str, float]] = {q: {} for q in qids}
    for (qi, pi), v in zip(pairs.tolist(), scores.tolist(), strict=True):
        run[qids[qi]][docids[pi]] = float(v)
    return float(compute_metrics({q: dict(qrels.get(q, {})) for q in qids}, run, ["nDCG@10"])[0]["nDCG@10"])


def score_fidelity(
    reference: np.ndarray, scores: np.ndarray, groups: np.ndarray, ndcg: dict[str, float] | None = None
) -> dict[str, Any]:
    """The auto arm's scores against distillrank fp32's on the same pairs: mean per-query Spearman and
    the share of queries whose top-scored pair is unchanged (the calibration's measures), nDCG@10 of
    both (``ndcg``: ``{"fp32", "auto"}``; None where the benchmark has no judgements), and whether
    that is equal ranking quality (:data:`QUALITY`)."""
    from distillrank.calibration import per_query_agreement

    rho, top1 = per_query_agreement(np.asarray(reference), np.asarray(scores), np.asarray(groups))
    out: dict[str, Any] = {"spearman_vs_fp32": rho, "top1_vs_fp32": top1, "ndcg_at_10": ndcg}
    met = top1 >= QUALITY.top1
    if ndcg is not None:
        out["ndcg_delta"] = ndcg["auto"] - ndcg["fp32"]
        met = met and abs(out["ndcg_delta"]) <= QUALITY.ndcg_delta
    out["quality_met"] = bool(met)
    return out


def auto_case(
    case: str,
    unit: str,
    ours: list[float],
    theirs: list[float],
    goal: float,
    choice: dict,
    fidelity: dict,
    headline: str,
    higher_is_better: bool = True,
    **extra: Any,
) -> dict[str, Any]:
    """A comparison case of the auto arm against sentence-transformers: ``auto`` (the choice,
    :func:`record`), ``fidelity`` against fp32, ``headline`` (the goal it is the headline of);
    ``met`` needs the speed goal and ``fidelity["quality_met"]`` where measured (None: not measured)."""
    out = comparison(
        case, unit, ours, theirs, goal, higher_is_better,
        precision=f"hardware=auto: {choice['backend']} {choice['precision']}", auto=choice,
        fidelity=fidelity, headline=headline, **extra,
    )  # fmt: skip
    out["speed_met"] = out["met"]
    quality = fidelity.get("quality_met")
    out["met"] = bool(out["speed_met"] and quality is not False)
    return out
