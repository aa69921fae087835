"""hardware=auto's calibration (distillrank/calibration.py): the choice, its fidelity rules and its cache."""

from __future__ import annotations

import json

import numpy as np
import pytest

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
        return lambda rt: (
            losses[rt.precision],
            [9.0, 1.0 if rt.precision == "fp32" else 0.5, 1.0 if rt.precision == "fp32" else 0.5],
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
    assert {"cpu", "isa", "cores", "threads", "torch", "onnxruntime"} <= set(identity)
    assert identity["torch"] == torch.__version__
