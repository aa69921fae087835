"""TREC run files: ``qid Q0 docid rank score tag``."""

from __future__ import annotations

from pathlib import Path

from distillrank.errors import DataError
from distillrank.workspace import atomic_path

Run = dict[str, dict[str, float]]


def write_trec_run(path: str | Path, run: Run, tag: str) -> Path:
    """Write a run (qid -> docid -> score), each query's documents by descending score, atomically."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        for qid in run:
            ranked = sorted(run[qid].items(), key=lambda item: (-item[1], item[0]))
            for rank, (docid, score) in enumerate(ranked, start=1):
                fh.write(f"{qid} Q0 {docid} {rank} {score:.6f} {tag}\n")
    return path


def read_trec_run(path: str | Path) -> Run:
    """Read a TREC run file.

    Raises:
        DataError: naming the file and line of a malformed row.
    """
    run: Run = {}
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            parts = line.split()
            if len(parts) != 6:
                raise DataError(f"{path}:{lineno}: expected 6 columns 'qid Q0 docid rank score tag', got {len(parts)}")
            try:
                score = float(parts[4])
            except ValueError:
                raise DataError(f"{path}:{lineno}: score {parts[4]!r} is not a number") from None
            run.setdefault(parts[0], {})[parts[2]] = score
    return run
