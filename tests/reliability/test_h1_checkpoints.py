"""Checkpoints never run code and resume from what a kill left: a planted pickle is refused (with
or without its run.json record updated), a copy left under ``.last.old-*`` is resumed, and the
time-based trigger (on by default) checkpoints."""

from __future__ import annotations

import json
import logging
import pickle
from pathlib import Path

import pytest
from training.test_resume import _assert_same_weights, _log, _run  # tests/ is on sys.path

from distillrank.training import loop
from distillrank.training.loop import CKPT_LOG, LAST, RUN_FILE, STATE
from distillrank.workspace import file_fingerprint

PAYLOAD_FLAG = "planted-pickle-ran"


class _Payload:
    """Unpickling this creates a file: proof that a load ran code."""

    def __init__(self, flag: Path) -> None:
        self.flag = flag

    def __reduce__(self):
        return (Path.touch, (self.flag,))


def _killed_run(model: Path, work: Path) -> Path:
    with pytest.raises(KeyboardInterrupt):
        _run(model, work, 0.0, kill_after=5)  # checkpoint at step 4
    return work / "checkpoints" / LAST


def _plant(folder: Path, flag: Path, update_record: bool) -> None:
    (folder / STATE).write_bytes(pickle.dumps({"model": _Payload(flag)}))
    if update_record:  # an attacker who also rewrites run.json: weights_only must refuse it
        run = json.loads((folder / RUN_FILE).read_text())
        run["files"][STATE] = {"size": (folder / STATE).stat().st_size, "sha256": file_fingerprint(folder / STATE)}
        (folder / RUN_FILE).write_text(json.dumps(run))


@pytest.fixture(scope="module")
def whole(tiny_bi_encoder, tmp_path_factory) -> tuple:
    """The uninterrupted run (no dropout, step checkpoints) the resumed ones must equal: its
    student and work folder, made once for the module."""
    work = tmp_path_factory.mktemp("whole")
    return _run(tiny_bi_encoder, work, 0.0), work


@pytest.mark.parametrize(("update_record", "message"), [(False, "differs from its run.json"), (True, "weights_only")])
def test_planted_pickle_is_refused_and_training_starts_afresh(
    tiny_bi_encoder, tmp_path, caplog, update_record, message, whole
):
    folder = _killed_run(tiny_bi_encoder, tmp_path / "w")
    flag = tmp_path / PAYLOAD_FLAG
    _plant(folder, flag, update_record)
    with caplog.at_level(logging.INFO, logger=loop.__name__):
        again = _run(tiny_bi_encoder, tmp_path / "w", 0.0)
    assert not flag.exists()  # the payload never ran
    assert message in caplog.text and "resuming" not in caplog.text
    _assert_same_weights(whole[0], again)
    assert _log(tmp_path / "w") == _log(whole[1])


def test_a_checkpoint_of_another_run_is_not_even_loaded(tiny_bi_encoder, tmp_path, caplog, monkeypatch):
    folder = _killed_run(tiny_bi_encoder, tmp_path / "w")
    run = json.loads((folder / RUN_FILE).read_text())
    run["identity"] = "0" * 64
    (folder / RUN_FILE).write_text(json.dumps(run))
    loads = []
    monkeypatch.setattr(loop.torch, "load", lambda *a, **k: loads.append(a))
    with caplog.at_level(logging.INFO, logger=loop.__name__):
        _run(tiny_bi_encoder, tmp_path / "w", 0.0)
    assert loads == [] and "another configuration" in caplog.text


def test_resume_falls_back_to_a_complete_old_copy(tiny_bi_encoder, tmp_path, caplog, whole):
    """Killed between the two renames of a save: ``last`` is gone, the previous checkpoint sits
    complete under ``.last.old-PID-RAND`` (PID of the dead process)."""
    folder = _killed_run(tiny_bi_encoder, tmp_path / "w")
    old = folder.with_name(".last.old-999999999-abc123")  # no such process
    folder.rename(old)
    with caplog.at_level(logging.INFO, logger=loop.__name__):
        resumed = _run(tiny_bi_encoder, tmp_path / "w", 0.0)
    assert "train: resuming from step 4" in caplog.text and "interrupted save" in caplog.text
    _assert_same_weights(whole[0], resumed)
    assert _log(tmp_path / "w") == _log(whole[1])
    assert not old.exists()  # removed by the next save: its writer is dead


def test_truncated_checkpoint_is_ignored(tiny_bi_encoder, tmp_path, caplog, whole):
    folder = _killed_run(tiny_bi_encoder, tmp_path / "w")
    (folder / CKPT_LOG).write_bytes((folder / CKPT_LOG).read_bytes()[:10])
    with caplog.at_level(logging.INFO, logger=loop.__name__):
        again = _run(tiny_bi_encoder, tmp_path / "w", 0.0)
    assert "differs from its run.json" in caplog.text and "resuming" not in caplog.text
    _assert_same_weights(whole[0], again)


def test_time_based_checkpoints_resume_exactly(tiny_bi_encoder, tmp_path, caplog):
    """``checkpoint_minutes`` alone (steps off): a tiny interval checkpoints after every step."""
    whole = _run(tiny_bi_encoder, tmp_path / "whole", 0.0, checkpoint_every=0, checkpoint_minutes=1e-9)
    with pytest.raises(KeyboardInterrupt):
        _run(tiny_bi_encoder, tmp_path / "w", 0.0, kill_after=7, checkpoint_every=0, checkpoint_minutes=1e-9)
    assert json.loads((tmp_path / "w" / "checkpoints" / LAST / RUN_FILE).read_text())["step"] == 7
    with caplog.at_level(logging.INFO, logger=loop.__name__):
        resumed = _run(tiny_bi_encoder, tmp_path / "w", 0.0, checkpoint_every=0, checkpoint_minutes=1e-9)
    assert "train: resuming from step 7" in caplog.text
    _assert_same_weights(whole, resumed)


def test_negative_checkpoint_interval_is_a_config_error(tiny_bi_encoder, tmp_path):
    with pytest.raises(loop.ConfigError, match="checkpoint_minutes=-1"):
        _run(tiny_bi_encoder, tmp_path, 0.0, checkpoint_minutes=-1)


def test_checkpoints_are_on_by_default(make_cfg):
    cfg = make_cfg()
    assert cfg.train.checkpoint_minutes == 10 and cfg.train.checkpoint_every == 0
