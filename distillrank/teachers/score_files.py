"""Teacher-score files: read (to use as a teacher, or to mine candidates from) and write (to export).

Three formats, one (query, document) pair score each:

``triples_tsv``
    Hofstätter et al.'s teacher-score triples (github.com/sebastian-hofstaetter/neural-ranking-kd):
    ``pos_score<TAB>neg_score<TAB>qid<TAB>pid_pos<TAB>pid_neg`` per line. Each line gives two pair
    scores; a pair repeats over many lines and must keep its score (within ``tolerance``).
``trec``
    A TREC run: ``qid Q0 docid rank score tag``, whitespace-separated.
``jsonl``
    One query per line ``{"qid": ..., "docids": [...], "scores": [...]}``, or one pair per line
    ``{"qid": ..., "docid": ..., "score": ...}`` (the two may mix).

Readers stream the file line by line and keep only the pair -> score mapping (and, per pair, the
line it was first read from, for later "unknown id" errors). Every malformed line is a
:class:`~distillrank.errors.DataError` naming ``file:line`` and what was expected. A file ending in
``.gz`` is read through gzip. Scores are written with ``repr`` precision, so write -> read gives
back the exact values.
"""

from __future__ import annotations

import gzip
import io
import json
import math
from array import array
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa

from distillrank.errors import ConfigError, DataError
from distillrank.workspace import atomic_path

FORMATS = ("triples_tsv", "trec", "jsonl")
ALIASES = {"tsv": "triples_tsv", "triples": "triples_tsv", "run": "trec", "json": "jsonl"}
EXTENSIONS = {"triples_tsv": "tsv", "trec": "trec", "jsonl": "jsonl"}
_SUFFIX_FORMAT = {".tsv": "triples_tsv", ".trec": "trec", ".run": "trec", ".jsonl": "jsonl", ".json": "jsonl"}
TREC_TAG = "distillrank"
DEFAULT_TOLERANCE = 1e-5
_TRIPLE_COLUMNS = "pos_score, neg_score, qid, pid_pos, pid_neg"
_TREC_COLUMNS = "qid Q0 docid rank score tag"


# --------------------------------------------------------------------------- format names
def canonical_format(fmt: str) -> str:
    """``fmt`` as one of :data:`FORMATS` (aliases ``tsv``, ``triples``, ``run``, ``json`` accepted), or ``auto``.

    Raises:
        ConfigError: for an unknown name.
    """
    name = str(fmt).strip().lower()
    name = ALIASES.get(name, name)
    if name != "auto" and name not in FORMATS:
        raise ConfigError(f"unknown score-file format {fmt!r}; available: auto, {', '.join(FORMATS)}")
    return name


def _plain_suffix(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    return suffixes[-1] if suffixes else ""


def format_from_extension(path: str | Path) -> str | None:
    """The format that ``path``'s extension names (``.tsv``, ``.trec``/``.run``, ``.jsonl``/``.json``, each optionally ``.gz``), or None."""
    return _SUFFIX_FORMAT.get(_plain_suffix(Path(path)))


def _open_text(path: Path) -> io.TextIOBase:
    if path.suffix.lower() == ".gz":
        return gzip.open(path, "rt", encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def _check_exists(path: Path) -> None:
    if not path.is_file():
        raise DataError(f"score file {path} does not exist (or is not a file)")


def detect_format(path: str | Path) -> str:
    """The format of a score file: from its extension, else from its first non-blank line.

    Raises:
        DataError: when the file is missing or neither the extension nor the content tells.
    """
    path = Path(path)
    _check_exists(path)
    by_extension = format_from_extension(path)
    if by_extension is not None:
        return by_extension
    with _open_text(path) as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            text = line.strip()
            if text.startswith("{"):
                return "jsonl"
            tabs = line.rstrip("\r\n").split("\t")
            if len(tabs) == 5:
                return "triples_tsv"
            if len(text.split()) == 6:
                return "trec"
            raise DataError(
                f"{path}:{lineno}: cannot tell the score-file format (expected a JSON object, "
                f"5 tab-separated columns {_TRIPLE_COLUMNS}, or 6 columns {_TREC_COLUMNS}); "
                f"got {_snippet(line)}; set the format explicitly ({', '.join(FORMATS)})"
            )
    raise DataError(f"score file {path} is empty: cannot tell its format")


# --------------------------------------------------------------------------- the read result
class ScoreFile:
    """The pair scores of one file and, per pair, the 1-based line it was first read from.

    Attributes:
        path: the file read.
        format: its format (one of :data:`FORMATS`).
        index: ``(qid, docid) -> i`` into ``scores`` and ``lines`` (file order of first appearance).
        scores: float64 [n_pairs].
        lines: int64 [n_pairs].
    """

    def __init__(
        self, path: Path, fmt: str, index: dict[tuple[str, str], int], scores: np.ndarray, lines: np.ndarray
    ) -> None:
        self.path = path
        self.format = fmt
        self.index = index
        self.scores = scores
        self.lines = lines
        self._by_query: dict[str, list[int]] | None = None
        self._pairs: list[tuple[str, str]] | None = None

    def __len__(self) -> int:
        return len(self.index)

    def __contains__(self, pair: object) -> bool:
        return pair in self.index

    def __repr__(self) -> str:
        return f"ScoreFile({str(self.path)!r}, format={self.format!r}, pairs={len(self)}, queries={len(self.qids())})"

    def get(self, qid: str, docid: str, default: float | None = None) -> float | None:
        """The score of a pair, or ``default`` when the file lacks it."""
        i = self.index.get((qid, docid))
        return default if i is None else float(self.scores[i])

    def line(self, qid: str, docid: str) -> int | None:
        """The 1-based line a pair was first read from, or None."""
        i = self.index.get((qid, docid))
        return None if i is None else int(self.lines[i])

    def pairs(self) -> list[tuple[str, str]]:
        """Every ``(qid, docid)``, in file order of first appearance (index order)."""
        if self._pairs is None:
            self._pairs = list(self.index)
        return self._pairs

    def _queries(self) -> dict[str, list[int]]:
        if self._by_query is None:
            by_query: dict[str, list[int]] = {}
            for (qid, _), i in self.index.items():
                by_query.setdefault(qid, []).append(i)
            self._by_query = by_query
        return self._by_query

    def qids(self) -> list[str]:
        """The query ids, in file order of first appearance."""
        return list(self._queries())

    def ranked(self, qid: str) -> list[tuple[str, float]]:
        """``(docid, score)`` of one query, best first (ties by docid); empty for an unknown query."""
        pairs = self.pairs()
        rows = [(pairs[i][1], float(self.scores[i])) for i in self._queries().get(qid, [])]
        rows.sort(key=lambda r: (-r[1], r[0]))
        return rows


class _Builder:
    """Collects pair scores while a file streams; duplicate pairs must agree."""

    def __init__(self, path: Path, tolerance: float) -> None:
        self.path = path
        self.tolerance = tolerance
        self.index: dict[tuple[str, str], int] = {}
        self.scores = array("d")
        self.lines = array("q")
        self._ids: dict[str, str] = {}  # interned ids: a query's id is stored once however many pairs it has

    def intern(self, value: str) -> str:
        return self._ids.setdefault(value, value)

    def add(self, qid: str, docid: str, score: float, lineno: int) -> None:
        key = (self.intern(qid), self.intern(docid))
        i = self.index.get(key)
        if i is None:
            self.index[key] = len(self.scores)
            self.scores.append(score)
            self.lines.append(lineno)
            return
        old = self.scores[i]
        if abs(old - score) > self.tolerance * max(1.0, abs(old), abs(score)):
            raise DataError(
                f"{self.path}:{lineno}: pair (qid={qid!r}, docid={docid!r}) has score {score!r} here but "
                f"{old!r} on line {self.lines[i]} (a pair must keep one score; tolerance {self.tolerance})"
            )

    def build(self, fmt: str) -> ScoreFile:
        return ScoreFile(
            self.path,
            fmt,
            self.index,
            np.frombuffer(self.scores, dtype=np.float64).copy(),
            np.frombuffer(self.lines, dtype=np.int64).copy(),
        )


def _snippet(line: str, limit: int = 120) -> str:
    text = line.rstrip("\r\n")
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _number(text: str, what: str, where: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise DataError(f"{where}: expected a number for {what}, got {text!r}") from None
    if not math.isfinite(value):
        raise DataError(f"{where}: expected a finite number for {what}, got {text!r}")
    return value


# --------------------------------------------------------------------------- readers
def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """Non-blank lines with their 1-based numbers."""
    try:
        with _open_text(path) as fh:
            for lineno, line in enumerate(fh, 1):
                if line.strip():
                    yield lineno, line
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text ({err})") from None
    except (OSError, EOFError) as err:  # gzip: truncated or not gzip
        raise DataError(f"{path}: cannot be read ({err})") from None


def _read_triples(path: Path, out: _Builder) -> None:
    for lineno, line in _lines(path):
        where = f"{path}:{lineno}"
        cols = [c.strip() for c in line.rstrip("\r\n").split("\t")]
        if len(cols) != 5:
            raise DataError(
                f"{where}: expected 5 tab-separated columns ({_TRIPLE_COLUMNS}), got {len(cols)}: {_snippet(line)}"
            )
        pos = _number(cols[0], "pos_score (column 1)", where)
        neg = _number(cols[1], "neg_score (column 2)", where)
        qid, pid_pos, pid_neg = cols[2], cols[3], cols[4]
        for name, value in (("qid", qid), ("pid_pos", pid_pos), ("pid_neg", pid_neg)):
            if not value:
                raise DataError(f"{where}: expected a non-empty {name}: {_snippet(line)}")
        out.add(qid, pid_pos, pos, lineno)
        out.add(qid, pid_neg, neg, lineno)


def _read_trec(path: Path, out: _Builder) -> None:
    for lineno, line in _lines(path):
        where = f"{path}:{lineno}"
        cols = line.split()
        if len(cols) != 6:
            raise DataError(
                f"{where}: expected 6 whitespace-separated columns ({_TREC_COLUMNS}), got {len(cols)}: {_snippet(line)}"
            )
        qid, _, docid, rank, score, _ = cols
        try:
            int(rank)
        except ValueError:
            raise DataError(f"{where}: expected an integer rank (column 4), got {rank!r}") from None
        out.add(qid, docid, _number(score, "score (column 5)", where), lineno)


def _json_id(obj: dict, key: str, where: str) -> str:
    if key not in obj:
        raise DataError(f"{where}: expected a {key!r} field")
    value = obj[key]
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise DataError(f"{where}: expected {key!r} to be a string (or integer) id, got {value!r}")
    if isinstance(value, str) and not value:
        raise DataError(f"{where}: expected a non-empty {key!r}")
    return str(value)


def _json_score(value: object, what: str, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise DataError(f"{where}: expected a number for {what}, got {value!r}")
    if not math.isfinite(value):
        raise DataError(f"{where}: expected a finite number for {what}, got {value!r}")
    return float(value)


def _read_jsonl(path: Path, out: _Builder) -> None:
    for lineno, line in _lines(path):
        where = f"{path}:{lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(
                f"{where}: malformed JSON ({err.msg} at column {err.colno}): {_snippet(line)}"
            ) from None
        if not isinstance(obj, dict):
            raise DataError(
                f'{where}: expected a JSON object {{"qid", "docids", "scores"}} or '
                f'{{"qid", "docid", "score"}}, got {type(obj).__name__}'
            )
        qid = _json_id(obj, "qid", where)
        if "docids" in obj or "scores" in obj:
            docids, scores = obj.get("docids"), obj.get("scores")
            if not isinstance(docids, list) or not isinstance(scores, list):
                raise DataError(
                    f"{where}: expected lists 'docids' and 'scores', got {type(docids).__name__} and {type(scores).__name__}"
                )
            if len(docids) != len(scores):
                raise DataError(f"{where}: 'docids' has {len(docids)} entries but 'scores' has {len(scores)}")
            for k, (docid, score) in enumerate(zip(docids, scores, strict=True)):
                if isinstance(docid, bool) or not isinstance(docid, str | int) or docid == "":
                    raise DataError(
                        f"{where}: expected docids[{k}] to be a non-empty string (or integer) id, got {docid!r}"
                    )
                out.add(qid, str(docid), _json_score(score, f"scores[{k}]", where), lineno)
        elif "docid" in obj:
            docid = _json_id(obj, "docid", where)
            if "score" not in obj:
                raise DataError(f"{where}: expected a 'score' field")
            out.add(qid, docid, _json_score(obj["score"], "'score'", where), lineno)
        else:
            raise DataError(f"{where}: expected 'docids' and 'scores' lists, or 'docid' and 'score' fields")


_READERS = {"triples_tsv": _read_triples, "trec": _read_trec, "jsonl": _read_jsonl}


def read_scores(path: str | Path, fmt: str = "auto", tolerance: float = DEFAULT_TOLERANCE) -> ScoreFile:
    """Read a score file into a :class:`ScoreFile`.

    Args:
        path: the file (``.gz`` read through gzip).
        fmt: ``auto`` (extension, else content) or one of :data:`FORMATS`.
        tolerance: relative tolerance (absolute below 1) within which a repeated pair's scores agree.

    Raises:
        DataError: naming ``file:line`` and what was expected, for the first malformed line.
        ConfigError: for an unknown format name.
    """
    path = Path(path).expanduser()
    fmt = canonical_format(fmt)
    _check_exists(path)
    if fmt == "auto":
        fmt = detect_format(path)
    builder = _Builder(path, tolerance)
    _READERS[fmt](path, builder)
    return builder.build(fmt)


# --------------------------------------------------------------------------- writers
def _score_text(value: float) -> str:
    """Exact text of a score: ``repr`` of the float64 value (float32 scores widen exactly)."""
    return repr(float(value))


def _by_query(table: pa.Table) -> dict[str, list[int]]:
    rows: dict[str, list[int]] = {}
    for i, qid in enumerate(table["qid"].to_pylist()):
        rows.setdefault(qid, []).append(i)
    return rows


def _check_ids(ids: list[str], what: str, fmt: str, forbidden: str) -> None:
    for value in ids:
        if not value or any(ch in value for ch in forbidden):
            raise DataError(
                f"{what} {value!r} cannot be written as {fmt} (empty, or contains whitespace or a tab)"
            )


def write_scores(table: pa.Table, path: str | Path, fmt: str = "auto") -> int:
    """Write the teacher scores of a scores table (``qid, docid, label, teacher[, dropped]``).

    ``trec``: every pair, ranked by teacher score per query (ties by docid), tag ``distillrank``.
    ``jsonl``: one line per query, docids and scores best first. ``triples_tsv``: every positive
    (label > 0) × every negative (label <= 0) not ``dropped``, per query. Queries keep their order
    of first appearance. Atomic: a failed write leaves no file.

    Returns:
        the number of lines written.

    Raises:
        ConfigError: unknown format, or ``auto`` with an extension that names none.
        DataError: a column is missing, or an id cannot be written in the format.
    """
    path = Path(path).expanduser()
    fmt = canonical_format(fmt)
    if fmt == "auto":
        fmt = format_from_extension(path)
        if fmt is None:
            raise ConfigError(
                f"cannot tell the format from the extension of {path}; name one of {', '.join(FORMATS)}"
            )
    needed = ["qid", "docid", "teacher"] + (["label"] if fmt == "triples_tsv" else [])
    missing = [c for c in needed if c not in table.column_names]
    if missing:
        raise DataError(f"the scores table lacks the columns {missing} (has {table.column_names})")
    qids = table["qid"].to_pylist()
    docids = table["docid"].to_pylist()
    teacher = table["teacher"].to_numpy().astype(np.float64)
    if not np.isfinite(teacher).all():
        bad = int(np.flatnonzero(~np.isfinite(teacher))[0])
        raise DataError(
            f"teacher score {teacher[bad]} of (qid={qids[bad]}, docid={docids[bad]}) is not finite"
        )
    forbidden = "\t\r\n" if fmt == "triples_tsv" else (" \t\r\n\f\v" if fmt == "trec" else "")
    if forbidden:
        _check_ids(list(set(qids)), "query id", fmt, forbidden)
        _check_ids(list(set(docids)), "document id", fmt, forbidden)
    groups = _by_query(table)
    count = 0
    opener = (
        (lambda p: gzip.open(p, "wt", encoding="utf-8", newline="\n"))
        if path.suffix.lower() == ".gz"
        else (lambda p: open(p, "w", encoding="utf-8", newline="\n"))
    )
    with atomic_path(path) as tmp, opener(tmp) as fh:
        if fmt == "triples_tsv":
            labels = table["label"].to_numpy()
            dropped = (
                np.asarray(table["dropped"].to_pylist(), dtype=bool)
                if "dropped" in table.column_names
                else np.zeros(len(qids), dtype=bool)
            )
            for qid, rows in groups.items():
                pos = [i for i in rows if labels[i] > 0]
                neg = [i for i in rows if labels[i] <= 0 and not dropped[i]]
                for p in pos:
                    head = f"{_score_text(teacher[p])}\t"
                    for n in neg:
                        fh.write(f"{head}{_score_text(teacher[n])}\t{qid}\t{docids[p]}\t{docids[n]}\n")
                        count += 1
        else:
            for qid, rows in groups.items():
                ranked = sorted(rows, key=lambda i: (-teacher[i], docids[i]))
                if fmt == "trec":
                    for rank, i in enumerate(ranked, 1):
                        fh.write(f"{qid} Q0 {docids[i]} {rank} {_score_text(teacher[i])} {TREC_TAG}\n")
                        count += 1
                else:
                    obj = {
                        "qid": qid,
                        "docids": [docids[i] for i in ranked],
                        "scores": [float(teacher[i]) for i in ranked],
                    }
                    fh.write(json.dumps(obj, ensure_ascii=False) + "\n")
                    count += 1
    return count
