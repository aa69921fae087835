"""Fixtures of the reliability suite.

The kill test's driver (``h1_kill_driver.py``) runs in a fresh interpreter, and importing torch,
transformers and the pipeline there takes seconds. It is started in the background when the first
test of this package starts, so that its start and its reruns overlap the other reliability tests
(on two cores, the suite then ends about as soon as the driver does); the kill test runs last in
the package and only collects its result. The driver starts only when the kill test is selected.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import distillrank
from tests.conftest import tiny_overrides

DRIVER = Path(__file__).with_name("h1_kill_driver.py")
KILL_TEST = "test_h1_kill_every_rename.py::test_kill_at_every_rename_then_rerun_is_identical"
TIMEOUT_S = 600


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    """The kill test runs after the other tests of this package, which overlap its driver."""
    kill = [item for item in items if item.nodeid.endswith(KILL_TEST)]
    if not kill:
        return
    items.remove(kill[0])
    package = str(Path(__file__).parent)
    last = max(i for i, item in enumerate(items) if str(item.path).startswith(package + os.sep))
    items.insert(last + 1, kill[0])


@dataclass
class KillDriver:
    """The driver process and the file it writes its result to."""

    process: subprocess.Popen
    result: Path
    log: Path

    def wait(self) -> int:
        """Its exit code, once it ends (killed after ``TIMEOUT_S``)."""
        try:
            return self.process.wait(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


@pytest.fixture(scope="package", autouse=True)
def kill_driver(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, tiny_beir: Path, tiny_bi_encoder: Path
) -> Iterator[KillDriver | None]:
    """The kill test's driver, started now in the background (``None`` when that test is not selected)."""
    if not any(item.nodeid.endswith(KILL_TEST) for item in request.session.items):
        yield None
        return
    work = tmp_path_factory.mktemp("kill_every_rename")
    overrides = [a for a in tiny_overrides(work / "unused", tiny_beir, tiny_bi_encoder) if not a.startswith("workspace=")]
    env = {k: v for k, v in os.environ.items() if k != "DISTILLRANK_FAULT_RENAME"}
    root = str(Path(distillrank.__file__).resolve().parents[1])  # this checkout's package first
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    result, log = work / "result.json", work / "driver.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, str(DRIVER), str(result), str(work), *overrides], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    driver = KillDriver(process, result, log)
    yield driver
    if process.poll() is None:  # the kill test did not run to its end (interrupted, failed early)
        process.kill()
        process.wait()
