"""A teacher whose scores are read from a file (``teacher=precomputed``).

Published teacher scores (Hofstätter et al.'s ensemble triples for MS MARCO, a TREC run of a large
re-ranker, an LLM's scores as JSONL) stand in for a teacher model: the score stage looks every mined
pair up instead of running a model. Formats: :mod:`distillrank.teachers.score_files`.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from distillrank.errors import DataError, DistillrankError
from distillrank.ranking import Pairs, RankerKind
from distillrank.runtime import Runtime
from distillrank.teachers.base import Teacher
from distillrank.teachers.score_files import ScoreFile, canonical_format, detect_format, read_scores
from distillrank.workspace import file_fingerprint

_EXAMPLES = 3
HINT = (
    "a precomputed teacher scores only the pairs its file holds: mine the candidates from this same "
    "file, or use a teacher model (e.g. teacher=cross_encoder)"
)


class PrecomputedTeacher(Teacher):
    """Looks the scores of (qid, docid) pairs up in a score file.

    Args:
        path: the score file (``.gz`` read through gzip).
        format: ``auto`` (from the extension, else the first line), ``triples_tsv``, ``trec`` or ``jsonl``.
    """

    kind = RankerKind.PRECOMPUTED

    def __init__(self, path: str, format: str = "auto") -> None:  # noqa: A002 - the config key is `format`
        self.path = Path(str(path)).expanduser()
        self.format = canonical_format(format)
        self._loaded: tuple[tuple[int, int], ScoreFile] | None = None

    def __repr__(self) -> str:
        return f"PrecomputedTeacher(path={str(self.path)!r}, format={self.format!r})"

    def resolved_format(self) -> str:
        """The file's format (``auto`` resolved)."""
        return detect_format(self.path) if self.format == "auto" else self.format

    def identity(self, runtime: Runtime) -> dict:
        """The file's content (sha256) and its format."""
        if not self.path.is_file():
            raise DataError(f"teacher.path={str(self.path)!r}: no such score file")
        return {"kind": "precomputed", "file": file_fingerprint(self.path), "format": self.resolved_format()}

    def scores(self) -> ScoreFile:
        """The file's pair scores, read once (again when the file changes on disk)."""
        if not self.path.is_file():
            raise DataError(f"teacher.path={str(self.path)!r}: no such score file")
        st = self.path.stat()
        stamp = (st.st_size, st.st_mtime_ns)
        if self._loaded is None or self._loaded[0] != stamp:
            self._loaded = (stamp, read_scores(self.path, self.format))
        return self._loaded[1]

    # ----------------------------------------------------------------------- checks
    def check_pairs(self, pairs: Iterable[tuple[str, str]]) -> None:
        """Fail when any ``(qid, docid)`` is not in the file.

        Raises:
            DataError: naming the first missing pairs, how many are missing, and what to do.
        """
        table = self.scores()
        pairs = list(pairs)
        missing = [pair for pair in pairs if pair not in table.index]
        if missing:
            raise DataError(self._missing_message(missing, len(pairs)))

    def _missing_message(self, missing: list[tuple[str, str]], total: int) -> str:
        examples = ", ".join(f"(qid={q!r}, docid={d!r})" for q, d in missing[:_EXAMPLES])
        more = f" and {len(missing) - _EXAMPLES} more" if len(missing) > _EXAMPLES else ""
        return (
            f"{len(missing)} of {total} pairs to score are not in the score file {self.path} "
            f"({self.scores().format}): {examples}{more}; {HINT}"
        )

    def check_ids(self, known_qids: set[str], known_docids: set[str]) -> None:
        """Fail when the file names a query or document id the collection lacks.

        Raises:
            DataError: ``file:line`` of the first unknown id (in file order) and the number of
                distinct unknown query and document ids.
        """
        table = self.scores()
        unknown_q: set[str] = set()
        unknown_d: set[str] = set()
        first: tuple[int, str, str] | None = None  # (line, kind, id)
        for (qid, docid), i in table.index.items():
            bad_q, bad_d = qid not in known_qids, docid not in known_docids
            if not (bad_q or bad_d):
                continue
            if bad_q:
                unknown_q.add(qid)
            if bad_d:
                unknown_d.add(docid)
            line = int(table.lines[i])
            if first is None or line < first[0]:
                first = (line, "query id", qid) if bad_q else (line, "document id", docid)
        if first is None:
            return
        line, kind, value = first
        n = len(unknown_q) + len(unknown_d)
        raise DataError(
            f"{table.path}:{line}: unknown {kind} {value!r} (not in the collection); {n} ids of this score "
            f"file are unknown ({len(unknown_q)} query ids, {len(unknown_d)} document ids): is it a score "
            f"file for this collection (data=...)?"
        )

    # ----------------------------------------------------------------------- the Ranker interface
    def score_pairs(
        self, pairs: Pairs, runtime: Runtime, *, batch_size: int | None = None, progress: bool = False
    ) -> np.ndarray:
        """The file's scores of the pairs (``qids[pair_q[i]]``, ``docids[pair_p[i]]``), float32."""
        qids, docids = pairs.qids, pairs.docids
        if qids is None or docids is None:
            raise DistillrankError(
                "the precomputed teacher looks scores up by id: score_pairs() needs the qids= and docids= "
                "of the pairs' query and passage lists"
            )
        if len(qids) != len(pairs.queries) or len(docids) != len(pairs.passages):
            raise DistillrankError(
                f"qids ({len(qids)}) / docids ({len(docids)}) must name the {len(pairs.queries)} queries "
                f"and {len(pairs.passages)} passages"
            )
        table = self.scores()
        index = table.index
        rows = np.empty(len(pairs), dtype=np.int64)
        missing: list[tuple[str, str]] = []
        for k, (qi, pi) in enumerate(zip(pairs.pair_q.tolist(), pairs.pair_p.tolist(), strict=True)):
            pair = (qids[qi], docids[pi])
            row = index.get(pair)
            if row is None:
                missing.append(pair)
                row = -1
            rows[k] = row
        if missing:
            raise DataError(self._missing_message(missing, len(pairs)))
        return table.scores[rows].astype(np.float32)
