"""The one replace-folder primitive and its temporaries: unique names, leftovers of dead writers
removed (and only those), a concurrent writer survived, the fault-injection hook."""

from __future__ import annotations

import gc
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from distillrank.errors import ConfigError
from distillrank.workspace import (
    FAULT_ENV,
    InjectedFault,
    atomic_dir,
    atomic_write_text,
    remove_stale_temps,
    reset_fault_injection,
)


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_leftovers_of_dead_writers_are_removed_and_nothing_else(tmp_path: Path) -> None:
    target = tmp_path / "last"
    dead = _dead_pid()
    leftovers = [
        f".last.{dead}.abc_12xy.tmp",  # atomic_dir / atomic_path temp of a killed writer
        f".last.old-{dead}-q1w2e3",  # a folder moved aside by a writer killed between its renames
        f".last.old-{dead}",  # the fixed name older versions used
    ]
    for name in leftovers:
        (tmp_path / name).mkdir()
        (tmp_path / name / "x").write_text("x")
    reused = tmp_path / f".last.{os.getpid()}.zz9.tmp"  # this PID, but older than this process
    reused.write_text("x")
    then = time.time() - 3 * 24 * 3600
    os.utime(reused, (then, then))
    live = tmp_path / f".last.{os.getpid()}.fresh1.tmp"  # a write of this very process in flight
    live.write_text("x")
    foreign = [".last.notes", "last.bak", f".lastx.{dead}.abc.tmp", f".other.{dead}.abc.tmp", ".last.abc.tmp"]
    for name in foreign:
        (tmp_path / name).write_text("user's")

    removed = remove_stale_temps(target)
    assert sorted(p.name for p in removed) == sorted([*leftovers, reused.name])
    assert live.exists() and all((tmp_path / name).read_text() == "user's" for name in foreign)

    with atomic_dir(target) as tmp:
        assert tmp.name.startswith(f".last.{os.getpid()}.") and tmp.name.endswith(".tmp")
        (tmp / "a").write_text("1")
    with atomic_dir(target) as tmp:
        (tmp / "a").write_text("2")
    assert (target / "a").read_text() == "2"
    assert _names(tmp_path) == sorted(["last", live.name, *foreign])


def test_a_stale_temp_inside_a_folder_of_unique_names_is_removed(tmp_path: Path) -> None:
    dead = _dead_pid()
    (tmp_path / f".shard-1-2.parquet.{dead}.k3j4.tmp").write_text("half")
    (tmp_path / "shard-1-2.parquet").write_text("done")
    (tmp_path / ".hidden").write_text("user's")
    remove_stale_temps(tmp_path, anywhere=True)
    assert _names(tmp_path) == [".hidden", "shard-1-2.parquet"]


def _save_many(path: str, tag: str, n: int) -> None:
    gc.disable()  # a forked child: objects of earlier tests (ONNX sessions) must not be finalized here
    for i in range(n):
        with atomic_dir(Path(path)) as tmp:
            (tmp / "who").write_text(f"{tag}{i}")
            (tmp / "check").write_text(f"{tag}{i}")


def test_two_processes_replacing_the_same_folder(tmp_path: Path) -> None:
    target = tmp_path / "last"
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_save_many, args=(str(target), tag, 150)) for tag in "ab"]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    assert (target / "who").read_text() == (target / "check").read_text()  # one writer's whole folder
    assert _names(tmp_path) == ["last"]


def test_fault_hook_raises_at_the_nth_rename(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(FAULT_ENV, "3")
    reset_fault_injection()
    atomic_write_text(tmp_path / "a", "1")
    atomic_write_text(tmp_path / "b", "1")
    target = tmp_path / "d"
    with pytest.raises(InjectedFault, match="rename 3"), atomic_dir(target) as tmp:
        (tmp / "x").write_text("never")
    assert _names(tmp_path) == ["a", "b"]  # nothing half-written left
    monkeypatch.delenv(FAULT_ENV)
    with atomic_dir(target) as tmp:
        (tmp / "x").write_text("old")
    monkeypatch.setenv(FAULT_ENV, "2:raise")  # a new setting counts afresh
    with pytest.raises(InjectedFault, match="rename 2"), atomic_dir(target) as tmp:  # 1: aside, 2: in
        (tmp / "x").write_text("new")
    assert (target / "x").read_text() == "old"  # the old folder was put back
    assert _names(tmp_path) == ["a", "b", "d"]
    monkeypatch.setenv(FAULT_ENV, "two")
    with pytest.raises(ConfigError, match=FAULT_ENV):
        atomic_write_text(tmp_path / "c", "1")
    monkeypatch.delenv(FAULT_ENV)
    atomic_write_text(tmp_path / "c", "1")
    assert (tmp_path / "c").read_text() == "1"
