"""The exported student's model card (``train/model/README.md``), as Markdown from plain values.

``train`` writes the card (:func:`training_card`): what the student was distilled from, how, and
on what; ``evaluate`` writes, or replaces, its ``## Evaluation`` section (:func:`evaluation_section`,
:func:`write_evaluation`): the student's measures per collection and split, and the command that
produced them. Layer 1 (unlike the rest of :mod:`distillrank.reporting`): the stages call it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import yaml

from distillrank.evaluation.tables import student_card_table
from distillrank.students.base import Description
from distillrank.teachers.base import describe as describe_teacher
from distillrank.workspace import atomic_write_text

CARD_HEADING = "## Evaluation"


def training_card(experiment: str, description: Description, config: dict, counts: dict) -> str:
    """A README for the exported student: what it was distilled from, how, and on what.

    Args:
        experiment: the experiment's name.
        description: the student kind's (:meth:`~distillrank.students.base.Student.describe`): its
            title, the library that loads its folder, and how.
        config: the plain ``data``, ``mining``, ``teacher``, ``student``, ``loss`` and ``train`` sections.
        counts: the train stage's counts.
    """
    library, usage = description.library, description.usage
    return (
        f"---\nlibrary_name: {library}\ntags: [{library}, distillrank, knowledge-distillation]\n---\n"
        f"# {experiment}: {description.title}\n\n"
        f"Trained with [distillrank](https://pypi.org/project/distillrank/) from the teacher `{describe_teacher(config['teacher'])}` "
        f"on the `{config['data']['train_split']}` queries of `{config['data']['name']}`, loss `{config['loss']['_target_']}`.\n\n"
        f"```python\n{usage}\n```\n\n"
        f"## Training\n\n{counts}\n\n## Config\n\n```yaml\n{yaml.safe_dump(config, sort_keys=False)}```\n"
    )


def evaluation_section(
    how: str,
    rows: Sequence[tuple[str, str, int, dict, dict | None]],
    measures: list[str],
    mean_row: dict | None,
    baseline: str | None,
    alpha: float,
    command: str,
    config_yaml: str,
) -> str:
    """The model card's ``## Evaluation`` section (Markdown, ends with a newline, no dates).

    Args:
        how: how the student was run (``re-ranking the top 100 of the bm25 first stage``).
        rows: ``(collection, split, queries, the student's result, its significance or None)``.
        mean_row: the student's macro mean over the collections (None with one collection).
        baseline, alpha: the significance tests († / ‡ against the baseline).
        command: the command that produced the evaluation; empty outside a Hydra job, and then
            ``config_yaml`` (the ``evaluate`` settings) is written instead.
    """
    table = student_card_table(rows, list(measures), mean_row, baseline=baseline, alpha=alpha)
    run_with = (
        f"Produced by:\n\n```bash\n{command}\n```\n"
        if command
        else f"Produced by `distillrank.stages.evaluate.run` with:\n\n```yaml\n{config_yaml}```\n"
    )
    return (
        f"{CARD_HEADING}\n\n"
        f"Measured by `distillrank evaluate` on the judged queries of each collection's test split, "
        f"{how}.\n\n{table}\n{run_with}"
    )


def replace_section(text: str, heading: str, section: str) -> str:
    """``text`` with the Markdown section starting at the line ``heading`` (up to the next heading of
    the same or a higher level, or the end) replaced by ``section``; appended when absent."""
    level = len(heading) - len(heading.lstrip("#"))
    lines = text.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.rstrip() == heading), None)
    if start is None:
        body = text if not text or text.endswith("\n") else text + "\n"
        return body + ("\n" if body else "") + section
    end = len(lines)
    fence = False
    for i in range(start + 1, len(lines)):
        if lines[i].startswith("```"):
            fence = not fence
        match = re.match(r"^(#+)\s", lines[i])
        if not fence and match and len(match.group(1)) <= level:
            end = i
            break
    tail = "".join(lines[end:])
    return "".join(lines[:start]) + section + ("\n" + tail if tail else "")


def write_evaluation(readme: Path, section: str) -> None:
    """Write ``section`` into a model folder's ``README.md`` atomically, replacing an older
    ``## Evaluation`` section (the rest of the card, written by ``train``, is kept). The temporary
    file goes beside the model folder, never into it."""
    old = readme.read_text(encoding="utf-8") if readme.is_file() else ""
    atomic_write_text(readme, replace_section(old, CARD_HEADING, section), tmp_dir=readme.parent.parent)
