"""hardware=auto's calibration (distillrank/calibration.py): the choice, its fidelity rules and its cache."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from distillrank import calibration
from distillrank.calibration import CacheKey, Choice, Measured, cached_choice
from distillrank.errors import ConfigError
from distillrank.runtime import Runtime

GROUPS = np.repeat(np.arange(10), 8)  # 10 queries of 8 candidates
REFERENCE = np.random.default_rng(0).normal(size=len(GROUPS))


def _runtimes(*pairs):
    return [Runtime(precision=p, backend="torch") for p in pairs]


class FakeClock:
    """A clock that advances by each candidate's declared duration when it scores."""

    def __init__(self, seconds: dict[str, float]) -> None:
        self.now, self.seconds = 0.0, seconds

    def __call__(self) -> float:
        return self.now

    def scorer(self, scores: dict[str, np.ndarray]):
        def score(rt: Runtime) -> np.ndarray:
            self.now += self.seconds[rt.precision]
            return scores[rt.precision]

        return score


def test_the_fastest_candidate_within_fidelity_is_chosen_and_a_perturbed_one_rejected():
    perturbed = REFERENCE + np.random.default_rng(1).normal(scale=1.0, size=len(REFERENCE))
    clock = FakeClock({"fp32": 1.0, "bf16": 0.5, "int8": 0.2})
    scores = {"fp32": REFERENCE, "bf16": REFERENCE + 1e-6, "int8": perturbed}
    made = calibration.calibrate_scores(
        clock.scorer(scores), _runtimes("fp32", "bf16", "int8"), GROUPS, clock=clock
    )
    assert (made.precision, made.backend) == ("bf16", "torch")
    by = {m.precision: m for m in made.candidates}
    assert by["bf16"].speedup == 2.0 and by["bf16"].spearman == pytest.approx(1.0) and by["bf16"].top1 == 1.0
    assert by["int8"].rejected and "Spearman" in by["int8"].rejected  # fastest, but it reorders
    assert "bf16" in made.describe("teacher x") and "2.00x fp32" in made.describe("teacher x")


def test_a_changed_top_candidate_is_rejected_even_when_spearman_is_high():
    swapped = REFERENCE.copy()
    for g in range(10):  # swap each query's two best: Spearman stays high, top-1 changes everywhere
        rows = np.flatnonzero(GROUPS == g)
        best, second = rows[np.argsort(-REFERENCE[rows])[:2]]
        swapped[best], swapped[second] = REFERENCE[second], REFERENCE[best]
    clock = FakeClock({"fp32": 1.0, "bf16": 0.5})
    fidelity = calibration.Fidelity(spearman=0.9)
    made = calibration.calibrate_scores(
        clock.scorer({"fp32": REFERENCE, "bf16": swapped}),
        _runtimes("fp32", "bf16"),
        GROUPS,
        clock=clock,
        fidelity=fidelity,
    )
    assert made.precision == "fp32" and "top-1" in made.candidates[1].rejected


def test_a_failing_candidate_is_rejected_and_a_fixed_precision_excludes_the_reference():
    clock = FakeClock({"fp32": 1.0, "bf16": 2.0, "int8": 0.1})

    def score(rt):
        if rt.precision == "int8":
            raise RuntimeError("no int8 kernels here")
        return clock.scorer({"fp32": REFERENCE, "bf16": REFERENCE})(rt)

    made = calibration.calibrate_scores(
        score, _runtimes("fp32", "bf16", "int8"), GROUPS, clock=clock, precision="bf16"
    )
    assert made.precision == "bf16"  # slower than fp32, but the config fixes the precision
    assert "failed: no int8 kernels" in made.candidates[2].rejected
    with pytest.raises(ConfigError, match="no candidate"):
        calibration.calibrate_scores(score, _runtimes("fp32", "int8"), GROUPS, clock=clock, precision="int8")


def test_training_takes_bf16_only_where_its_losses_match_fp32():
    def steps(losses):
        return lambda rt: zip(
            losses[rt.precision],
            [9.0, 1.0 if rt.precision == "fp32" else 0.5, 1.0 if rt.precision == "fp32" else 0.5],
            strict=True,
        )

    close = {"fp32": [2.0, 1.9, 1.8], "bf16": [2.001, 1.901, 1.799]}
    made = calibration.calibrate_training(steps(close), _runtimes("fp32", "bf16"))
    assert made.precision == "bf16" and made.chosen.speedup == 2.0  # the first (warm-up) step is not timed
    far = {"fp32": [2.0, 1.9, 1.8], "bf16": [2.0, 1.9, 2.0]}
    made = calibration.calibrate_training(steps(far), _runtimes("fp32", "bf16"))
    assert made.precision == "fp32" and "loss off" in made.candidates[1].rejected


def test_candidates_follow_the_device_the_model_and_fixed_values():
    cpu = calibration.inference_candidates(Runtime(), int8=True, onnx=False)
    assert [(r.precision, r.backend) for r in cpu] == [
        ("fp32", "torch"),
        ("bf16", "torch"),
        ("int8", "torch"),
    ]
    only_torch_bf16 = calibration.inference_candidates(Runtime(), "bf16", "torch", int8=False, onnx=True)
    assert [(r.precision, r.backend) for r in only_torch_bf16] == [("fp32", "torch"), ("bf16", "torch")]
    assert [r.precision for r in calibration.training_candidates(Runtime())] == ["fp32", "bf16"]


def test_the_cache_is_used_keyed_by_machine_and_model_and_a_corrupt_entry_recomputed(tmp_path):
    calls = []

    def calibrate(precision="bf16"):
        def run():
            calls.append(precision)
            return Choice(
                precision,
                "torch",
                (Measured("fp32", "torch", 1.0), Measured(precision, "torch", 0.5, 2.0)),
                0.1,
            )

        return run

    key = CacheKey({"cpu": "A", "isa": ["avx512_bf16"]}, {"model": "m1"})
    first = cached_choice(tmp_path, key, calibrate())
    again = cached_choice(tmp_path, key, calibrate())
    assert calls == ["bf16"] and not first.cached and again.cached
    assert again.precision == "bf16" and again.candidates == first.candidates
    assert key.path(tmp_path).parent == tmp_path / "calibration"
    cached_choice(tmp_path, CacheKey({"cpu": "B", "isa": []}, {"model": "m1"}), calibrate("fp32"))
    cached_choice(
        tmp_path, CacheKey({"cpu": "A", "isa": ["avx512_bf16"]}, {"model": "m2"}), calibrate("fp32")
    )
    assert calls == ["bf16", "fp32", "fp32"]  # another machine, another model: calibrated again
    path = key.path(tmp_path)
    path.write_text(json.dumps({"choice": {"precision": "int8"}}))  # damaged: no longer matches its seal
    assert cached_choice(tmp_path, key, calibrate("bf16")).cached is False and calls[-1] == "bf16"
    assert cached_choice(tmp_path, key, calibrate("bf16")).cached is True


def test_the_machine_identity_names_the_cpu_and_versions():
    import torch

    identity = calibration.machine_identity(torch.device("cpu"))
    assert {"cpu", "isa", "cores", "threads", "allocator", "torch", "onnxruntime"} <= set(identity)
    assert identity["torch"] == torch.__version__


def test_the_machine_identity_tells_the_allocators_settings_apart(monkeypatch):
    """Page faults change what each candidate costs: a choice made with glibc's defaults is not
    reused for a process that keeps freed memory (hardware.keep_freed_memory), nor the reverse."""
    import torch

    from distillrank import allocator

    monkeypatch.setattr(allocator, "_glibc", lambda: True)
    for name in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES", "LD_PRELOAD"):
        monkeypatch.delenv(name, raising=False)
    kept = calibration.machine_identity(torch.device("cpu"), keep_freed_memory=True)
    default = calibration.machine_identity(torch.device("cpu"), keep_freed_memory=False)
    assert kept["allocator"].startswith("glibc, freed memory kept") and default["allocator"] == "default"
    assert {k: v for k, v in kept.items() if k != "allocator"} == {k: v for k, v in default.items() if k != "allocator"}


class CountingClock(FakeClock):
    """A FakeClock that also counts each candidate's calls (warm-up included)."""

    def __init__(self, seconds: dict[str, float]) -> None:
        super().__init__(seconds)
        self.calls: dict[str, int] = {}

    def scorer(self, scores: dict[str, np.ndarray]):
        inner = super().scorer(scores)

        def score(rt: Runtime) -> np.ndarray:
            self.calls[rt.precision] = self.calls.get(rt.precision, 0) + 1
            return inner(rt)

        return score


def _probe(speedup: float, calls: list | None = None):
    def probe():
        if calls is not None:
            calls.append(speedup)
        return calibration.Probe(384, False, 1.0, 1.0 / speedup, speedup, 0.01)

    return probe


def test_the_probe_times_fp32_against_bf16_with_the_given_clock():
    clock = FakeClock({})
    ran = []

    def run(precision):
        ran.append(precision)
        clock.now += {"fp32": 0.01, "bf16": 0.08}[precision]

    made = calibration.probe_bf16(384, repeats=3, clock=clock, run=run)
    assert ran == ["fp32"] * 4 + ["bf16"] * 4  # one warm-up each, then the repeats
    assert (made.fp32, made.bf16, made.speedup) == (0.01, 0.08, 0.125)
    assert made.seconds == pytest.approx(0.36) and made.hidden == 384 and not made.training
    real = calibration.probe_bf16(16, training=True, repeats=1)  # the linear itself runs, with backward
    assert real.fp32 > 0 and real.bf16 > 0 and real.training


def test_a_probe_that_finds_bf16_slower_skips_the_bf16_candidates_unmeasured():
    clock = CountingClock({"fp32": 1.0, "bf16": 0.5, "int8": 0.8})
    scores = {"fp32": REFERENCE, "bf16": REFERENCE, "int8": REFERENCE}
    made = calibration.calibrate_scores(
        clock.scorer(scores), _runtimes("fp32", "bf16", "int8"), GROUPS, clock=clock, probe=_probe(0.1)
    )
    assert "bf16" not in clock.calls and made.precision == "int8"
    assert [m.precision for m in made.candidates] == ["fp32", "bf16", "int8"]  # in the candidates' order
    bf16 = made.candidates[1]
    assert bf16.seconds is None and bf16.speedup is None and "0.10x fp32's speed" in bf16.rejected
    assert made.probe["speedup"] == 0.1
    assert Choice.from_dict(json.loads(json.dumps(made.as_dict()))) == made  # strict JSON, round trip
    # bf16 fast on this CPU: measured (and chosen); bf16 fixed by the config: measured, no probe
    calls = []
    for speedup, fixed in ((2.0, "auto"), (0.1, "bf16")):
        clock = CountingClock({"fp32": 1.0, "bf16": 0.5})
        made = calibration.calibrate_scores(
            clock.scorer(scores), _runtimes("fp32", "bf16"), GROUPS, clock=clock, precision=fixed,
            probe=_probe(speedup, calls),
        )  # fmt: skip
        assert made.precision == "bf16" and clock.calls["bf16"] == 4
    assert calls == [2.0]
    # on a GPU bf16 stays a candidate whatever a probe would say
    gpu = calibration.inference_candidates(Runtime(device="cuda"), int8=False, onnx=False)
    assert calibration._screen(gpu, _probe(0.1, calls), "auto")[0] == gpu and calls == [2.0]


def test_a_candidate_outside_fidelity_is_judged_on_its_warm_up_and_not_timed():
    perturbed = REFERENCE + np.random.default_rng(1).normal(scale=1.0, size=len(REFERENCE))
    clock = CountingClock({"fp32": 1.0, "int8": 0.2})
    made = calibration.calibrate_scores(
        clock.scorer({"fp32": REFERENCE, "int8": perturbed}), _runtimes("fp32", "int8"), GROUPS, clock=clock
    )
    assert clock.calls == {"fp32": 4, "int8": 1}
    int8 = made.candidates[1]
    assert "Spearman" in int8.rejected and int8.seconds is None and int8.timed == 0 and int8.spearman < 0.9
    assert int8.spent == pytest.approx(0.2) and made.candidates[0].spent == pytest.approx(4.0)  # with warm-up


def test_a_candidate_clearly_slower_after_one_timed_call_is_not_timed_again():
    clock = CountingClock({"fp32": 1.0, "bf16": 1.3, "int8": 1.2})
    scores = {"fp32": REFERENCE, "bf16": REFERENCE, "int8": REFERENCE}
    made = calibration.calibrate_scores(
        clock.scorer(scores), _runtimes("fp32", "bf16", "int8"), GROUPS, clock=clock
    )
    assert clock.calls == {"fp32": 4, "bf16": 2, "int8": 4}  # 1.3x > 1.25x stops; 1.2x is timed out
    by = {m.precision: m for m in made.candidates}
    assert (by["bf16"].timed, by["int8"].timed) == (1, 3) and by["bf16"].seconds == pytest.approx(1.3)
    assert by["bf16"].spent == pytest.approx(2.6)
    assert made.precision == "fp32"


def test_long_calls_are_timed_until_they_add_up_to_enough_seconds():
    """On a slow CPU three long timed calls made a calibration overrun its 30 s (EPYC-2: 4.1 s a
    call, 41 s): a candidate stops once its timed calls add up to TIMED_ENOUGH seconds, and one
    with calls well under it is timed ``repeats`` times as before."""
    assert calibration.TIMED_ENOUGH == 3.0
    scores = {"fp32": REFERENCE, "bf16": REFERENCE, "int8": REFERENCE}
    clock = CountingClock({"fp32": 4.0, "bf16": 1.6, "int8": 0.9})
    made = calibration.calibrate_scores(
        clock.scorer(scores), _runtimes("fp32", "bf16", "int8"), GROUPS, clock=clock
    )
    by = {m.precision: m for m in made.candidates}
    assert clock.calls == {"fp32": 2, "bf16": 3, "int8": 4}  # the warm-up, then 1, 2 and 3 timed calls
    assert (by["fp32"].timed, by["bf16"].timed, by["int8"].timed) == (1, 2, 3)
    assert (by["fp32"].seconds, by["bf16"].seconds) == (pytest.approx(4.0), pytest.approx(1.6))
    assert made.precision == "int8"
    clock = CountingClock({"fp32": 4.0})
    made = calibration.calibrate_scores(clock.scorer(scores), _runtimes("fp32"), GROUPS, clock=clock, enough=float("inf"))
    assert made.candidates[0].timed == 3  # no budget: the repeats


def test_a_candidate_replaces_fp32_only_when_at_least_5_percent_faster():
    scores = {"fp32": REFERENCE, "bf16": REFERENCE}
    for bf16_seconds, chosen in ((0.97, "fp32"), (0.96, "fp32"), (0.94, "bf16")):
        clock = FakeClock({"fp32": 1.0, "bf16": bf16_seconds})
        made = calibration.calibrate_scores(
            clock.scorer(scores), _runtimes("fp32", "bf16"), GROUPS, clock=clock
        )
        assert made.precision == chosen, bf16_seconds
    # the margin guards the reference only: with fp32 excluded the fastest allowed one wins
    clock = FakeClock({"fp32": 1.0, "bf16": 0.99, "int8": 0.98})
    made = calibration.calibrate_scores(
        clock.scorer({**scores, "int8": REFERENCE}), _runtimes("fp32", "bf16", "int8"), GROUPS, clock=clock,
        backend="torch", precision="auto",
    )  # fmt: skip
    assert made.precision == "fp32"
    made = calibration.calibrate_training(
        lambda rt: zip(
            [2.0, 1.9, 1.8], [9.0, 1.0, 1.0] if rt.precision == "fp32" else [9.0, 0.97, 0.97], strict=True
        ),
        _runtimes("fp32", "bf16"),
    )
    assert made.precision == "fp32" and made.candidates[1].speedup == pytest.approx(1.031, abs=1e-3)


def test_training_stops_a_candidate_at_its_first_loss_outside_the_tolerance_and_when_clearly_slower():
    consumed, closed = [], []

    def steps(losses, times):
        def run(rt):
            try:
                for i, (loss, seconds) in enumerate(
                    zip(losses[rt.precision], times[rt.precision], strict=True)
                ):
                    consumed.append((rt.precision, i))
                    yield loss, seconds
            finally:
                closed.append(rt.precision)  # the runner is closed (its RNG fork restored) at once

        return run

    times = {"fp32": [9.0, 1.0, 1.0], "bf16": [9.0, 0.5, 0.5]}
    off = {"fp32": [2.0, 1.9, 1.8], "bf16": [2.5, 1.9, 1.8]}
    made = calibration.calibrate_training(steps(off, times), _runtimes("fp32", "bf16"))
    # in turn: bf16's first step right after fp32's, closed at once when its loss is off; fp32 goes on
    assert consumed == [("fp32", 0), ("bf16", 0), ("fp32", 1), ("fp32", 2)] and closed == ["bf16", "fp32"]
    assert made.precision == "fp32" and "at step 1" in made.candidates[1].rejected
    consumed.clear()
    slow = {"fp32": [9.0, 1.0, 1.0], "bf16": [9.0, 2.0, 2.0]}
    made = calibration.calibrate_training(
        steps({"fp32": off["fp32"], "bf16": off["fp32"]}, slow), _runtimes("fp32", "bf16")
    )
    assert [s for p, s in consumed if p == "bf16"] == [0, 1]  # stopped after its first timed step
    assert made.candidates[1].timed == 1 and made.candidates[1].seconds == 2.0 and made.precision == "fp32"
    calls = []
    made = calibration.calibrate_training(
        steps(off, times), _runtimes("fp32", "bf16"), probe=_probe(0.05, calls)
    )
    assert (
        calls == [0.05] and made.candidates[1].seconds is None and "bf16 probe" in made.candidates[1].rejected
    )


def test_with_the_batch_in_halves_the_warm_up_is_the_rest_and_the_first_timed_call_is_judged():
    # the timed half's pairs come first in the judged scores: a candidate whose halves are the
    # reference's own is within fidelity only when they are put back in that order
    n = 24
    perturbed = REFERENCE + np.random.default_rng(1).normal(scale=1.0, size=len(REFERENCE))
    scores = {"fp32": REFERENCE, "bf16": REFERENCE + 1e-6, "int8": perturbed}
    clock = FakeClock({"fp32": 1.0, "bf16": 0.5, "int8": 0.2})
    calls: list[tuple[str, str]] = []

    def half(which: str):
        def run(rt: Runtime) -> np.ndarray:
            calls.append((rt.precision, which))
            clock.now += clock.seconds[rt.precision] * (1 if which == "timed" else 3)  # the rest: slower
            return scores[rt.precision][:n] if which == "timed" else scores[rt.precision][n:]

        return run

    made = calibration.calibrate_scores(
        None, _runtimes("fp32", "bf16", "int8"), GROUPS, clock=clock, timed=half("timed"), rest=half("rest")
    )
    assert (made.precision, made.backend) == ("bf16", "torch")
    # each candidate warms up on the rest, then its first timed call is judged: a reference timed
    # three times in all, no whole-batch call; int8, outside fidelity, keeps no time
    assert calls == [("fp32", "rest")] + [("fp32", "timed")] * 3 + [("bf16", "rest")] + [("bf16", "timed")] * 3 + [
        ("int8", "rest"),
        ("int8", "timed"),
    ]
    by = {m.precision: m for m in made.candidates}
    assert by["fp32"].seconds == 1.0 and by["fp32"].timed == 3 and by["fp32"].spent == pytest.approx(6.0)
    assert by["bf16"].speedup == 2.0 and by["bf16"].spearman == pytest.approx(1.0)
    assert by["int8"].rejected and by["int8"].timed == 0 and by["int8"].seconds is None
    with pytest.raises(ValueError, match="rest needs timed"):
        calibration.calibrate_scores(None, _runtimes("fp32"), GROUPS, rest=half("rest"))


def test_the_halves_are_judged_in_the_batchs_order():
    # queries of 3, 9, 6 and 6 pairs, the first two timed: a candidate that shifts each query's
    # scores by its own constant ranks every query as the reference does, and is within fidelity
    # only when each pair is judged with its own query
    groups = np.repeat(np.arange(4), [3, 9, 6, 6])
    reference = np.random.default_rng(2).normal(size=len(groups))
    scores = {"fp32": reference, "bf16": reference + 10.0 * groups}
    clock = FakeClock({"fp32": 1.0, "bf16": 0.5})

    def half(which: str):
        def run(rt: Runtime) -> np.ndarray:
            clock.now += clock.seconds[rt.precision]
            return scores[rt.precision][:12] if which == "timed" else scores[rt.precision][12:]

        return run

    made = calibration.calibrate_scores(
        None, _runtimes("fp32", "bf16"), groups, clock=clock, timed=half("timed"), rest=half("rest")
    )
    assert made.precision == "bf16" and made.candidates[1].spearman == pytest.approx(1.0)


def test_training_candidates_step_in_turn_so_a_slowing_machine_slows_both():
    """A machine that slows steadily during the calibration (step k takes 1 + k times as long):
    measured one after the other, bf16 (2x fp32's speed) would take the slower half and lose (fp32
    2.5 s, bf16 2.75 s); in turn, both share the slowdown and bf16 wins (fp32 4 s, bf16 2.5 s)."""
    order: list[str] = []

    def steps(rt):
        for _ in range(3):
            order.append(rt.precision)
            yield 2.0, (1.0 if rt.precision == "fp32" else 0.5) * len(order)  # the k-th step: 1 + k

    made = calibration.calibrate_training(steps, _runtimes("fp32", "bf16"))
    assert order == ["fp32", "bf16"] * 3
    assert made.precision == "bf16" and made.chosen.speedup == pytest.approx(4.0 / 2.5)


def test_training_candidates_keep_their_own_random_streams_and_the_callers():
    """Each candidate's steps draw from torch's generator (dropout) as if it ran alone, though the
    candidates take their steps in turn; the caller's random state is as it was."""

    def steps(rt):
        torch.manual_seed(0)  # as the student's steps do, inside their RNG fork
        for _ in range(3):
            yield float(torch.rand(1)), 1.0

    torch.manual_seed(123)
    before = torch.get_rng_state()
    made = calibration.calibrate_training(steps, _runtimes("fp32", "bf16"))
    assert torch.equal(torch.get_rng_state(), before)
    assert made.precision == "fp32" and made.candidates[1].loss_rdiff == 0.0  # the same draws, step by step
