"""Kill -9 at every atomic rename of a tiny ``distillrank run``: the rerun ends with exactly the
artifacts of an uninterrupted run, and no temporary entry is left.

A kill -9 leaves the disk as it was at that instant, so one forked run copies the workspace just
before each of its renames (what a kill there would leave), and each copy is then rerun to the
end in a fresh forked process and compared with the uninterrupted run. The real hook
(``DISTILLRANK_FAULT_RENAME=N:kill``, SIGKILL just before the Nth rename) kills a run at a middle
rename, and ``N:raise`` fails one, each rerun the same way. The runs are forked by
``h1_kill_driver.py`` in a fresh interpreter (see there why), which ``conftest.py`` starts in the
background when this package's first test starts; this test collects its result.
"""

from __future__ import annotations

import json


def test_kill_at_every_rename_then_rerun_is_identical(kill_driver):
    assert kill_driver is not None  # started by the package fixture whenever this test is selected
    code = kill_driver.wait()
    assert code == 0, kill_driver.log.read_text(errors="replace")[-3000:]
    result = json.loads(kill_driver.result.read_text())
    assert result["failures"] == [], result["failures"][:3]
    assert result["renames"] >= 15 and result["survived"] == result["renames"]
    assert all(outcome == {"stopped": True, "rerun_identical": True} for outcome in result["hook"].values())
    assert len(result["hook"]) == 2
