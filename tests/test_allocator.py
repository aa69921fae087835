"""distillrank sets Arrow's allocator to return freed pages at once, unless the user chose."""

from __future__ import annotations

import os
import subprocess
import sys


def _purge_delay(env: dict[str, str]) -> str:
    code = "import distillrank, os; print(os.environ['MIMALLOC_PURGE_DELAY'])"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_importing_distillrank_sets_the_purge_delay_before_pyarrow_loads() -> None:
    env = {k: v for k, v in os.environ.items() if k != "MIMALLOC_PURGE_DELAY"}
    assert _purge_delay(env) == "0"
    code = "import sys, distillrank; print('pyarrow' in sys.modules)"
    loaded = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "False"  # mimalloc reads it when pyarrow loads: that is later


def test_a_purge_delay_the_user_set_is_kept() -> None:
    assert _purge_delay({**os.environ, "MIMALLOC_PURGE_DELAY": "250"}) == "250"
