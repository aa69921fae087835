"""An installed wheel finds its configs without a checkout."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_wheel_ships_conf_and_finds_it(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path), str(REPO)],
        check=True,
        capture_output=True,
        cwd=tmp_path,
    )
    wheel = next(tmp_path.glob("distillrank-*.whl"))
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        zf.extractall(site)
    assert "distillrank/conf/config.yaml" in names
    modules = {str(f.relative_to(REPO)) for f in (REPO / "distillrank").rglob("*.py")}
    assert modules <= set(names), f"not in the wheel (pyproject.toml packages): {sorted(modules - set(names))}"
    assert "distillrank/conf/exp/margin_mse.yaml" in names
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "from distillrank.config import conf_dir; from distillrank.validation import compose;"
        "print(conf_dir()); print(compose(['+exp=margin_mse']).experiment)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(site)], check=True, capture_output=True, text=True, cwd=tmp_path
    ).stdout.split()
    assert out[0] == str(site / "distillrank" / "conf")
    assert out[1] == "margin_mse"
