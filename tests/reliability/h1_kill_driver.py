"""The driver of ``test_h1_kill_every_rename.py``, run as a fresh interpreter: it forks every run
from itself, never from the pytest process (whose objects of earlier tests, such as ONNX Runtime
sessions, would hang a forked child that frees them). Usage: ``python h1_kill_driver.py RESULT.json
WORKDIR OVERRIDE...``; RESULT.json gets the figures and every failure.

Kill -9 at every atomic rename of a tiny ``distillrank run``: the rerun ends with exactly the
artifacts of an uninterrupted run, and no temporary entry is left.

A kill -9 leaves the disk as it was at that instant, so one forked run copies the workspace just
before each of its renames (what a kill there would leave), and each copy is then rerun to the
end in a fresh forked process and compared with the uninterrupted run. The real hook
(``DISTILLRANK_FAULT_RENAME=N:kill``, SIGKILL just before the Nth rename) kills a run at a middle
rename, and ``N:raise`` fails one, each rerun the same way.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import re
import shutil
import signal
import sys
from pathlib import Path

from omegaconf import DictConfig

from distillrank import pipeline
from distillrank import workspace as workspace_module
from distillrank.validation import compose
from distillrank.workspace import FAULT_ENV, MANIFEST, reset_fault_injection

# a small run that still makes every kind of artifact: collection, BM25 index, candidates, score
# shards, checkpoints, the model and its card, runs and metrics of two systems
FAST = [
    "train.max_steps=3",
    "train.checkpoint_every=1",
    "evaluate.systems=[student]",
    "evaluate.baseline=null",
    "evaluate.hybrid=false",
    "evaluate.latency_queries=0",
]
# outputs that hold timings (throughput, latency, wall time): compared by their deterministic parts
TIMED = {MANIFEST, "metrics.json", "results.md", "README.md", "meta.json", "state.json"}
SHARD_NAME = re.compile(r"shard-\d+-\d+\.parquet(\.sha256\.json)?$")  # a shard and its seal
SEAL = ".checksums.json"
PARALLEL = 2  # reruns at once (the CI machine has 2 cores)  # a cache folder's checksums: compared without those of timed files


def _start(run) -> int:
    """Call ``run()`` in a forked child (exit 0 when it returns, 1 when it raises); its PID.

    The child's cyclic garbage collector is off: objects the test process made before the fork
    (an ONNX Runtime session of an earlier test, say) would join threads the child does not have.
    """
    pid = os.fork()
    if pid == 0:  # the child never returns into pytest
        code = 1
        try:
            gc.disable()
            run()
            code = 0
        finally:
            os._exit(code)
    return pid


def _fork(run) -> int:
    """Call ``run()`` in a forked child and wait for it; its wait status."""
    return os.waitpid(_start(run), 0)[1]


def _go(cfg: DictConfig, fault: str | None = None):
    def go() -> None:
        if fault is None:
            os.environ.pop(FAULT_ENV, None)
        else:
            os.environ[FAULT_ENV] = fault
        reset_fault_injection()
        pipeline.run(cfg)

    return go


def _run(cfg: DictConfig, fault: str | None = None) -> int:
    return _fork(_go(cfg, fault))


def _snapshot_run(cfg: DictConfig, workspace: Path, snapshots: Path) -> int:
    """Run once, copying ``workspace`` to ``snapshots/N`` just before rename N."""

    def go() -> None:
        count = 0

        def snapshot(src: Path, dst: Path) -> None:
            nonlocal count
            count += 1
            shutil.copytree(workspace, snapshots / str(count), symlinks=True)

        workspace_module._inject_fault = snapshot  # this child only
        pipeline.run(cfg)

    return _fork(go)


def _digest(workspace: Path, *moved_from: Path) -> dict[str, str]:
    """Every file of the workspace: its sha256, or for timed files their deterministic fields.

    Manifests name their inputs by absolute path: the workspace's, and ``moved_from`` (where a
    snapshot's files were written before it was copied), are both read as ``WS``.
    """
    out = {}
    for path in sorted(workspace.rglob("*")):
        if not path.is_file() or "collections" in path.parts and path.name in TIMED:
            continue
        rel = SHARD_NAME.sub(r"shard\1", str(path.relative_to(workspace)))  # named by time and PID
        if path.name == SEAL:
            files = json.loads(path.read_text())["files"]
            out[rel] = json.dumps({k: v for k, v in sorted(files.items()) if Path(k).name not in TIMED})
        elif path.name == MANIFEST:
            data = json.loads(path.read_text())
            text = json.dumps([data["key"], data["inputs"], data["outputs"]])
            for root in (workspace, *moved_from):
                text = text.replace(str(root), "WS")
            out[rel] = text
        elif path.name in TIMED:
            out[rel] = "present"
        else:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            out[f"{rel}#{digest}" if rel.endswith(("shard", "shard.sha256.json")) else rel] = digest
    return out


def _temporaries(workspace: Path) -> list[str]:
    return sorted(
        str(p.relative_to(workspace))
        for p in workspace.rglob(".*")
        if p.name.endswith(".tmp") or ".old-" in p.name or p.name.startswith(".tmp-")
    )


def _killed(status: int) -> bool:
    return os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL


def main(result_path: Path, work: Path, overrides: list[str]) -> None:
    """Every check of the test; the figures and failures go to ``result_path`` as JSON."""
    import torch

    torch.set_num_threads(1)
    os.environ.pop(FAULT_ENV, None)
    failures: list[str] = []
    workspace, reference, snapshots = work / "runs", work / "reference", work / "snapshots"
    cfg = compose([*overrides, *FAST, f"workspace={workspace}"])
    # the uninterrupted run, in this process: every run forked after it starts with the modules
    # imported and the lazy first-call work done (half of a tiny run's time in a cold process)
    try:
        pipeline.run(compose([*overrides, *FAST, f"workspace={reference}"]))
    except Exception as err:  # noqa: BLE001 - reported as a failure of the test
        failures.append(f"the uninterrupted run failed: {err!r}")
    want = _digest(reference)
    if not any(name.endswith("model.safetensors") for name in want) or _temporaries(reference):
        failures.append("the uninterrupted run has no model or left temporaries")
    if _snapshot_run(cfg, workspace, snapshots) != 0 or _digest(workspace) != want:
        failures.append("the snapshotting run failed or differs")
    renames = len(list(snapshots.iterdir())) if snapshots.is_dir() else 0
    shutil.rmtree(workspace, ignore_errors=True)
    # each snapshot is rerun where it lies (the digests do not depend on the workspace's path),
    # PARALLEL at a time, one torch thread each: tiny models gain nothing from a second thread
    survived, running = 0, {}
    todo = list(range(1, renames + 1))
    while todo or running:
        while todo and len(running) < PARALLEL:
            n = todo.pop(0)
            running[_start(_go(compose([*overrides, *FAST, f"workspace={snapshots / str(n)}"])))] = n
        pid, status = os.wait()
        n = running.pop(pid)
        rerun = snapshots / str(n)
        if status != 0:
            failures.append(f"rerun after a kill before rename {n} failed")
        elif (got := _digest(rerun, workspace)) != want:
            diff = sorted(k for k in set(got) | set(want) if got.get(k) != want.get(k))
            failures.append(f"rerun after a kill before rename {n} differs: {diff[:4]}")
        elif _temporaries(rerun):
            failures.append(f"kill before rename {n}: temporaries left: {_temporaries(rerun)}")
        else:
            survived += 1
        shutil.rmtree(rerun)

    # the hook itself: SIGKILL at a middle rename, an error at another, each rerun
    hook = {}
    for fault in (f"{renames // 2}:kill", f"{renames // 3}:raise"):
        status = _run(cfg, fault)
        stopped = _killed(status) if fault.endswith("kill") else os.WIFEXITED(status) and os.WEXITSTATUS(status) == 1
        rerun = _run(cfg) == 0 and _digest(workspace) == want and not _temporaries(workspace)
        hook[fault] = {"stopped": bool(stopped), "rerun_identical": bool(rerun)}
        shutil.rmtree(workspace, ignore_errors=True)
    result = {"renames": renames, "survived": survived, "failures": failures, "hook": hook}
    result_path.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:])
