"""hardware=auto through the builders, the keys and the pipeline (tiny models)."""

from __future__ import annotations

import shutil

import pytest
from typer.testing import CliRunner

from distillrank import calibration, keys, pipeline
from distillrank.builders import components, hardware
from distillrank.calibration import Choice, Measured
from distillrank.cli import app
from distillrank.stages import mine, score

AUTO = ("hardware=auto", "hardware.device=cpu")


def test_validate_accepts_hardware_auto():
    result = CliRunner().invoke(app, ["validate", "hardware=auto"], catch_exceptions=False)
    assert result.exit_code == 0, result.output


def test_the_teacher_is_calibrated_once_and_its_choice_cached(make_cfg, tmp_path, monkeypatch):
    cfg = make_cfg(*AUTO)
    made = hardware.choice(cfg, "teacher")
    assert made is not None and not made.cached and made.chosen is not None
    assert made.candidates[0].precision == "fp32" and made.candidates[0].backend == "torch"
    assert {(m.precision, m.backend) for m in made.candidates} >= {("bf16", "torch"), ("int8", "torch")}
    assert list((tmp_path / "runs" / "_cache" / "calibration").glob("*.json"))
    hardware._choice.cache_clear()  # a new process: read from the cache, no timing runs
    monkeypatch.setattr(calibration, "calibrate_scores", lambda *a, **k: pytest.fail("calibrated again"))
    again = hardware.choice(cfg, "teacher")
    assert again.cached and (again.precision, again.backend) == (made.precision, made.backend)
    assert hardware.choice(make_cfg("hardware=cpu"), "teacher") is None


def _forced(monkeypatch, precision: str, backend: str = "torch") -> None:
    """Every calibration chooses (precision, backend)."""
    hardware._choice.cache_clear()

    def choose(*args, **kwargs):
        return Choice(
            precision, backend, (Measured("fp32", "torch", 1.0), Measured(precision, backend, 0.5, 2.0))
        )

    monkeypatch.setattr(calibration, "calibrate_scores", choose)
    monkeypatch.setattr(calibration, "calibrate_training", choose)


def test_the_score_key_under_auto_is_the_key_of_the_resolved_hardware(make_cfg, tmp_path, monkeypatch):
    _forced(monkeypatch, "int8")
    auto = make_cfg(*AUTO)
    assert keys.stage_key(auto, "score") == keys.stage_key(make_cfg("hardware=cpu_int8"), "score")
    assert keys.stage_key(auto, "score") != keys.stage_key(make_cfg("hardware=cpu"), "score")
    assert components.teacher_fingerprint(auto) == components.teacher_fingerprint(
        make_cfg("hardware=cpu_int8")
    )
    shutil.rmtree(tmp_path / "runs" / "_cache" / "calibration")  # another machine's calibration chooses fp32
    _forced(monkeypatch, "fp32")
    assert keys.stage_key(auto, "score") == keys.stage_key(make_cfg("hardware=cpu"), "score")


def test_the_train_key_follows_the_student_choice(make_cfg, monkeypatch):
    _forced(monkeypatch, "bf16")
    assert keys.stage_key(make_cfg(*AUTO), "train") == keys.stage_key(make_cfg("hardware=cpu_bf16"), "train")


def test_auto_runs_the_pipeline_and_the_manifests_carry_the_choice(make_cfg):
    hardware._choice.cache_clear()
    cfg = make_cfg(
        *AUTO, "train.max_steps=2", "evaluate.systems=[bm25,teacher,student]", "evaluate.latency_queries=0"
    )
    out = pipeline.run(cfg)
    teacher = out["score"].counts["hardware_auto"]["teacher"]
    assert teacher["precision"] in ("fp32", "bf16", "int8") and teacher["candidates"]
    student = out["train"].counts["hardware_auto"]["student"]
    assert student["precision"] in ("fp32", "bf16") and student["candidates"][0]["loss_rdiff"] == 0.0
    assert set(out["evaluate"].counts["hardware_auto"]) == {"teacher", "student"}
    # the key of the resolved hardware written out: the same teacher scores, cached once
    explicit_args = (
        "hardware=cpu",
        f"hardware.precision={teacher['precision']}",
        f"hardware.backend={teacher['backend']}",
    )
    explicit = make_cfg(*explicit_args)
    assert keys.stage_key(cfg, "score") == keys.stage_key(explicit, "score")
    elsewhere = make_cfg(*explicit_args, "experiment=explicit")
    mine.run(elsewhere)
    assert score.run(elsewhere).counts["pairs_scored"] == 0  # every score cached by the auto run
    hardware._choice.cache_clear()  # a later process reads the choice from the cache
    assert hardware.choice(cfg, "teacher").cached


def _rows(pairs) -> list[tuple[str, str]]:
    return [(pairs.queries[q], pairs.passages[p]) for q, p in zip(pairs.pair_q, pairs.pair_p, strict=True)]


def test_the_calibration_batch_in_halves_is_the_judged_batch_in_order(make_cfg):
    coll = components.collection(make_cfg())
    pairs, groups, timed, rest = hardware.calibration_batch(coll, "train")
    assert rest is not None and len(timed) and len(rest)
    assert _rows(timed) + _rows(rest) == _rows(pairs)  # the timed queries' pairs, then the others'
    assert len(groups) == len(pairs) and len(set(timed.pair_q)) == min(hardware.TIMED_QUERIES, len(pairs.queries) // 2)


def test_a_collection_of_one_judged_query_warms_up_on_its_whole_batch(make_cfg, monkeypatch):
    coll = components.collection(make_cfg())
    split = coll.split_queries
    monkeypatch.setattr(coll, "split_queries", lambda name: split(name)[:1])
    pairs, groups, timed, rest = hardware.calibration_batch(coll, "train")
    assert rest is None and timed is pairs and set(groups.tolist()) == {0}
