"""``distillrank report -o DIR`` replaces only a folder it wrote itself (its marker) or an empty one,
never the workspace or a folder holding it: anything else is one clear line and exit code != 0."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import tiny_overrides
from typer.testing import CliRunner

from distillrank.cli import app
from distillrank.errors import ConfigError
from distillrank.reporting.report import REPORT_MARKER, check_output
from distillrank.stages import mine, score
from distillrank.validation import compose


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tiny_beir, tiny_bi_encoder) -> Path:
    root = tmp_path_factory.mktemp("h1_report") / "runs"
    cfg = compose(tiny_overrides(root, tiny_beir, tiny_bi_encoder))
    mine.run(cfg)
    score.run(cfg)
    return root


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _report(workspace: Path, output: Path):
    return CliRunner().invoke(app, ["report", str(workspace), "-o", str(output)])


def test_foreign_folder_is_refused_and_kept(workspace, tmp_path):
    thesis = tmp_path / "thesis"
    thesis.mkdir()
    (thesis / "thesis.tex").write_text("\\documentclass{article}")
    result = _report(workspace, thesis)
    assert result.exit_code != 0
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "refusing to replace" in lines[0] and REPORT_MARKER in lines[0]
    assert _tree(thesis) == {"thesis.tex": b"\\documentclass{article}"}

    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    assert _report(workspace, a_file).exit_code != 0 and a_file.read_text() == "mine"


@pytest.mark.parametrize("where", ["itself", "parent", "grandparent"])
def test_the_workspace_or_a_folder_holding_it_is_refused(workspace, where):
    before = _tree(workspace)
    output = {"itself": workspace, "parent": workspace.parent, "grandparent": workspace.parent.parent}[where]
    result = _report(workspace, output)
    assert result.exit_code != 0 and "is or contains the workspace" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert _tree(workspace) == before


def test_own_report_and_empty_folder_are_replaced(workspace, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _report(workspace, empty).exit_code == 0
    assert (empty / REPORT_MARKER).is_file() and (empty / "report.md").is_file()
    (empty / "stale.txt").write_text("from an edit")  # inside our own report: replaced whole
    assert _report(workspace, empty).exit_code == 0
    assert not (empty / "stale.txt").exists() and (empty / REPORT_MARKER).is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]


def test_a_report_of_an_older_version_at_the_default_place_is_accepted(tmp_path):
    workspace = tmp_path / "runs"
    (workspace / "report").mkdir(parents=True)
    (workspace / "report" / "report.md").write_text("# old report")
    check_output(workspace / "report", workspace)  # no error
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "report.md").write_text("# someone's notes")
    with pytest.raises(ConfigError, match="did not write it"):
        check_output(elsewhere, workspace)
