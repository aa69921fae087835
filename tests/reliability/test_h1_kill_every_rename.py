"""Kill -9 at every atomic rename of a tiny ``distillrank run``: the rerun ends with exactly the
artifacts of an uninterrupted run, and no temporary entry is left.

A kill -9 leaves the disk as it was at that instant, so one forked run copies the workspace just
before each of its renames (what a kill there would leave), and each copy is then rerun to the
end in a fresh forked process and compared with the uninterrupted run. The real hook
(``DISTILLRANK_FAULT_RENAME=N:kill``, SIGKILL just before the Nth rename) kills a run at a middle
rename, and ``N:raise`` fails one, each rerun the same way. The runs are forked by
``h1_kill_driver.py`` in a fresh interpreter (see there why).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import distillrank

DRIVER = Path(__file__).with_name("h1_kill_driver.py")


def test_kill_at_every_rename_then_rerun_is_identical(tiny_args, tmp_path):
    overrides = [a for a in tiny_args if not a.startswith("workspace=")]
    env = {k: v for k, v in os.environ.items() if k != "DISTILLRANK_FAULT_RENAME"}
    root = str(Path(distillrank.__file__).resolve().parents[1])  # this checkout's package first
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    result_file = tmp_path / "result.json"
    done = subprocess.run(
        [sys.executable, str(DRIVER), str(result_file), str(tmp_path), *overrides],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(result_file.read_text())
    assert result["failures"] == [], result["failures"][:3]
    assert result["renames"] >= 15 and result["survived"] == result["renames"]
    assert all(outcome == {"stopped": True, "rerun_identical": True} for outcome in result["hook"].values())
    assert len(result["hook"]) == 2

