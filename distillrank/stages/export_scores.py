"""Export the teacher scores of an experiment's score stage (``distillrank export-scores``).

Reads ``<score stage>/scores.parquet`` (the stage must be complete and current for the config) and
writes the pair scores as a TREC run, JSONL or Hofstätter-style triples TSV
(:mod:`distillrank.teachers.score_files`). The file reads back as a teacher
(``teacher=precomputed teacher.path=FILE``) with the same scores. The raw teacher scores are
exported: when ``score.normalize`` is set, ``teacher_raw`` rather than the normalised ``teacher``
column (``normalized=True`` exports the normalised one).
"""

from __future__ import annotations

import logging
from pathlib import Path

import pyarrow.parquet as pq
from omegaconf import DictConfig

from distillrank import artifacts, keys
from distillrank.errors import ConfigError
from distillrank.teachers.score_files import (
    EXTENSIONS,
    FORMATS,
    canonical_format,
    format_from_extension,
    write_scores,
)
from distillrank.workspace import stage_dir

log = logging.getLogger(__name__)

DEFAULT_NAME = "teacher_scores"


def default_path(cfg: DictConfig, fmt: str) -> Path:
    """``<workspace>/<experiment>/score/teacher_scores.{tsv|trec|jsonl}``."""
    return stage_dir(cfg, artifacts.SCORE) / f"{DEFAULT_NAME}.{EXTENSIONS[fmt]}"


def run(
    cfg: DictConfig, fmt: str = "trec", path: Path | str | None = None, *, normalized: bool = False
) -> Path:
    """Write the current score output of ``cfg``'s experiment to ``path`` in format ``fmt``.

    Args:
        fmt: ``trec`` | ``jsonl`` | ``triples_tsv`` (``tsv``); ``auto`` takes it from ``path``'s extension.
        path: the output file; default :func:`default_path`.
        normalized: export the normalised ``teacher`` column even when ``teacher_raw`` exists.

    Returns:
        the path written (atomically).

    Raises:
        ArtifactError: the score stage is missing or stale for this config (names the command).
        ConfigError: an unknown format, or ``auto`` without a telling extension.
    """
    fmt = canonical_format(fmt)
    if fmt == "auto":
        fmt = "trec" if path is None else format_from_extension(path)
        if fmt is None:
            raise ConfigError(
                f"cannot tell the format from the extension of {path}; name one of {', '.join(FORMATS)}"
            )
    _, folder = keys.require(cfg, artifacts.SCORE)
    table = pq.read_table(folder / artifacts.SCORES)
    if "teacher_raw" in table.column_names and not normalized:
        table = table.drop_columns(["teacher"]).rename_columns(
            ["teacher" if name == "teacher_raw" else name for name in table.column_names if name != "teacher"]
        )
    out = Path(path).expanduser() if path is not None else default_path(cfg, fmt)
    lines = write_scores(table, out, fmt)
    log.info(
        "export-scores: %d pairs of %s written as %s (%d lines) to %s",
        table.num_rows,
        folder,
        fmt,
        lines,
        out,
    )
    return out
