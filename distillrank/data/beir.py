"""Reading and validating collections stored in the BEIR folder layout.

A BEIR folder holds::

    corpus.jsonl[.gz]     {"_id": str, "title": str, "text": str} per line
    queries.jsonl[.gz]    {"_id": str, "text": str} per line
    qrels/<split>.tsv     optional header, then ``qid<TAB>docid<TAB>score`` (or TREC ``qid 0 docid rel``)

Everything here streams: the corpus is never held in memory. Problems with the input raise
:class:`~distillrank.errors.DataError` naming the file and the 1-based line number.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import zlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from distillrank.errors import DataError

CORPUS_NAMES = ("corpus.jsonl", "corpus.jsonl.gz")
QUERIES_NAMES = ("queries.jsonl", "queries.jsonl.gz")
QRELS_DIR = "qrels"
EXPECTED_LAYOUT = "corpus.jsonl[.gz], queries.jsonl[.gz] and qrels/<split>.tsv"

_HASH_BLOCK = 1 << 20
_EXCERPT_CHARS = 80
_QRELS_HEADER_FIRST_COLUMNS = {"query-id", "query_id", "queryid", "qid", "query"}

Qrels = dict[str, dict[str, dict[str, int]]]
"""split -> query id -> doc id -> relevance."""

_FILE_HASHES: dict[tuple[str, int, int], str] = {}


def sha256_file(path: Path) -> str:
    """Return the sha256 hex digest of a file's bytes, read in blocks.

    The digest is memoised per (resolved path, size, mtime_ns) within the process, so asking
    again for an unchanged file costs one ``stat``.

    Args:
        path: The file to hash.

    Returns:
        The hex digest.
    """
    resolved = Path(path).resolve()
    stat = resolved.stat()
    key = (str(resolved), stat.st_size, stat.st_mtime_ns)
    cached = _FILE_HASHES.get(key)
    if cached is not None:
        return cached
    digest = hashlib.sha256()
    try:
        with resolved.open("rb") as handle:
            for block in iter(lambda: handle.read(_HASH_BLOCK), b""):
                digest.update(block)
    except OSError as err:
        raise DataError(f"cannot read {resolved}: {err}") from err
    _FILE_HASHES[key] = digest.hexdigest()
    return _FILE_HASHES[key]


def _find_one(folder: Path, names: Sequence[str]) -> Path | None:
    """Return the single existing file among ``names`` in ``folder``, None if there is none.

    Raises:
        DataError: If more than one of the names exists (it would be ambiguous which to use).
    """
    found = [folder / name for name in names if (folder / name).is_file()]
    if len(found) > 1:
        listed = " and ".join(p.name for p in found)
        raise DataError(f"{folder} holds both {listed}; keep only one of them")
    return found[0] if found else None


def _split_name(path: Path) -> str:
    """Return the split a qrels file stands for: its name without ``.gz`` and one suffix."""
    name = path.name[: -len(".gz")] if path.name.endswith(".gz") else path.name
    return Path(name).stem


def _qrels_files(folder: Path) -> dict[str, Path]:
    """Map split name -> qrels file for every visible file in ``folder/qrels``.

    Raises:
        DataError: If two files stand for the same split.
    """
    qrels_dir = folder / QRELS_DIR
    if not qrels_dir.is_dir():
        return {}
    files: dict[str, Path] = {}
    for path in sorted(qrels_dir.iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue
        split = _split_name(path)
        if split in files:
            raise DataError(
                f"{qrels_dir} holds two files for split {split!r}: {files[split].name} and {path.name}"
            )
        files[split] = path
    return files


def beir_folder_problems(path: str | os.PathLike[str]) -> list[str]:
    """List what keeps ``path`` from being a usable BEIR folder (empty when it is one).

    Args:
        path: The candidate folder.

    Returns:
        Human-readable problems, e.g. ``["missing corpus.jsonl or corpus.jsonl.gz"]``.
    """
    folder = Path(path)
    if not folder.is_dir():
        return ["the folder does not exist" if not folder.exists() else "it is not a folder"]
    problems = []
    if not any((folder / name).is_file() for name in CORPUS_NAMES):
        problems.append("missing " + " or ".join(CORPUS_NAMES))
    if not any((folder / name).is_file() for name in QUERIES_NAMES):
        problems.append("missing " + " or ".join(QUERIES_NAMES))
    qrels_dir = folder / QRELS_DIR
    if not qrels_dir.is_dir():
        problems.append(f"missing the {QRELS_DIR}/ folder")
    elif not any(p.is_file() and not p.name.startswith(".") for p in qrels_dir.iterdir()):
        problems.append(f"the {QRELS_DIR}/ folder is empty (expected {QRELS_DIR}/<split>.tsv)")
    return problems


def is_beir_folder(path: str | os.PathLike[str]) -> bool:
    """Tell whether ``path`` is a folder with a corpus, queries and at least one qrels file.

    Args:
        path: The candidate folder.

    Returns:
        True if the BEIR layout is present (the contents are not validated).
    """
    return not beir_folder_problems(path)


def _open_binary(path: Path) -> IO[bytes]:
    """Open a possibly gzipped file for binary reading."""
    if path.name.endswith(".gz"):
        return gzip.open(path, "rb")
    return path.open("rb")


def _excerpt(text: str) -> str:
    """Shorten a line for an error message."""
    text = text.strip()
    return text if len(text) <= _EXCERPT_CHARS else text[:_EXCERPT_CHARS] + "..."


def _decode(raw: bytes, path: Path, lineno: int) -> str:
    """Decode one line as UTF-8 (dropping a byte-order mark on line 1)."""
    if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataError(
            f"{path}, line {lineno}: not valid UTF-8 ({err.reason} at byte {err.start})"
        ) from None


def iter_lines(path: Path) -> Iterator[tuple[int, str]]:
    """Yield (1-based line number, line) for each non-blank line of a possibly gzipped file.

    Raises:
        DataError: If the file cannot be read, is a broken gzip file, or is not UTF-8.
    """
    try:
        with _open_binary(path) as handle:
            for lineno, raw in enumerate(handle, start=1):
                line = _decode(raw, path, lineno)
                if line.strip():
                    yield lineno, line
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"cannot read {path}: {err}") from err


def iter_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, object) for each non-blank line of a JSON-lines file.

    Raises:
        DataError: For a line that is not valid JSON or not a JSON object.
    """
    for lineno, line in iter_lines(path):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(
                f"{path}, line {lineno}: malformed JSON ({err.msg}); expected one JSON object per line, "
                f"found: {_excerpt(line)!r}"
            ) from None
        if not isinstance(record, dict):
            raise DataError(
                f'{path}, line {lineno}: expected a JSON object with "_id" and "text", '
                f"found a JSON {type(record).__name__}: {_excerpt(line)!r}"
            )
        yield lineno, record


def id_problem(value: str, what: str) -> str | None:
    """Why ``value`` cannot be an id (``what``: ``'_id'``, ``query id``, ...), or None.

    An id holds no whitespace: TREC run and qrels files, which distillrank writes and reads,
    separate their columns by whitespace, so such an id would shift every column after it.
    """
    if any(c.isspace() for c in value):
        return (
            f"{what} {value!r} contains whitespace; ids must not (TREC run and qrels files separate "
            "columns by whitespace): rename it, e.g. with '_'"
        )
    return None


def record_id(record: Mapping[str, Any], path: Path | str, lineno: int) -> str:
    """Return the ``_id`` of a record as a non-empty string (integers are converted).

    Raises:
        DataError: If the key is missing, empty, neither a string nor an integer, or holds whitespace.
    """
    if "_id" not in record:
        raise DataError(f'{path}, line {lineno}: missing key \'_id\' (each line needs "_id" and "text")')
    value = record["_id"]
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise DataError(f"{path}, line {lineno}: expected '_id' to be a string, found {type(value).__name__}")
    if not value.strip():
        raise DataError(f"{path}, line {lineno}: '_id' is empty")
    if problem := id_problem(value, "'_id'"):
        raise DataError(f"{path}, line {lineno}: {problem}")
    return value


def record_text(record: Mapping[str, Any], key: str, path: Path | str, lineno: int, required: bool) -> str:
    """Return a string field of a record (``None`` and, if not required, a missing key give "").

    Raises:
        DataError: If a required key is missing or the value is not a string.
    """
    if key not in record:
        if required:
            raise DataError(
                f'{path}, line {lineno}: missing key \'{key}\' (each line needs "_id" and "text")'
            )
        return ""
    value = record[key]
    if value is None:
        return ""
    if not isinstance(value, str):
        raise DataError(
            f"{path}, line {lineno}: expected '{key}' to be a string, found {type(value).__name__}"
        )
    return value


def _qrels_columns(line: str) -> list[str]:
    """Split a qrels line on tabs if it has any, else on runs of whitespace."""
    stripped = line.strip()
    if "\t" in stripped:
        return [col.strip() for col in stripped.split("\t")]
    return stripped.split()


def _parse_int(value: str) -> int | None:
    """Parse an integer, returning None if it is not one."""
    try:
        return int(value)
    except ValueError:
        return None


def _is_header(cols: list[str]) -> bool:
    """Tell whether the first content line of a qrels file is a column header."""
    return cols[0].lower() in _QRELS_HEADER_FIRST_COLUMNS and _parse_int(cols[-1]) is None


def _qrel_from_columns(cols: list[str], path: Path, lineno: int) -> tuple[str, str, int]:
    """Turn the columns of one qrels line into (query id, doc id, relevance).

    Raises:
        DataError: For a wrong number of columns, a non-integer score or an id with whitespace.
    """
    if len(cols) == 3:
        qid, docid, score = cols
    elif len(cols) == 4:
        qid, _, docid, score = cols
    else:
        raise DataError(
            f"{path}, line {lineno}: expected 3 columns 'query-id<TAB>corpus-id<TAB>score' "
            f"(or 4 TREC columns 'qid 0 docid rel'), found {len(cols)}"
        )
    relevance = _parse_int(score)
    if relevance is None:
        raise DataError(f"{path}, line {lineno}: expected an integer score, found {score!r}")
    if not qid or not docid:
        raise DataError(f"{path}, line {lineno}: empty query id or doc id")
    if problem := id_problem(qid, "query id") or id_problem(docid, "doc id"):
        raise DataError(f"{path}, line {lineno}: {problem}")
    return qid, docid, relevance


def read_qrels_file(path: Path) -> dict[str, dict[str, int]]:
    """Read one qrels file (BEIR tsv with optional header, or 4-column TREC).

    A judgement repeated for the same (query, doc) keeps its last score.

    Args:
        path: The qrels file.

    Returns:
        query id -> doc id -> relevance, queries in order of first appearance.

    Raises:
        DataError: For malformed lines or a file without any judgement.
    """
    qrels: dict[str, dict[str, int]] = {}
    first = True
    for lineno, line in iter_lines(path):
        cols = _qrels_columns(line)
        if first and _is_header(cols):
            first = False
            continue
        first = False
        qid, docid, relevance = _qrel_from_columns(cols, path, lineno)
        qrels.setdefault(qid, {})[docid] = relevance
    if not qrels:
        raise DataError(f"{path} holds no judgements (expected lines 'query-id<TAB>corpus-id<TAB>score')")
    return qrels


class BeirFolder:
    """A collection source reading a BEIR folder.

    Args:
        folder: The BEIR folder.
        splits: The qrels splits to read (each must have a file ``qrels/<split>.*``);
            empty means every file in ``qrels/``.

    Raises:
        DataError: If the folder lacks a corpus, queries or qrels file, or a split has no file.
    """

    def __init__(self, folder: str | os.PathLike[str], splits: Sequence[str] = ()) -> None:
        self.folder = Path(folder).expanduser()
        problems = beir_folder_problems(self.folder)
        if problems:
            raise DataError(
                f"{self.folder} is not a BEIR folder: {'; '.join(problems)}. Expected {EXPECTED_LAYOUT}"
            )
        corpus = _find_one(self.folder, CORPUS_NAMES)
        queries = _find_one(self.folder, QUERIES_NAMES)
        assert corpus is not None and queries is not None  # guaranteed by beir_folder_problems
        self.corpus_path: Path = corpus
        self.queries_path: Path = queries
        self.qrels_paths: dict[str, Path] = self._select_splits(_qrels_files(self.folder), splits)
        self.description = f"BEIR folder {self.folder}"
        self.corpus_label = str(self.corpus_path)
        self.queries_label = str(self.queries_path)

    def _select_splits(self, available: dict[str, Path], splits: Sequence[str]) -> dict[str, Path]:
        """Keep the qrels files of the requested splits (all if none requested)."""
        if not splits:
            return available
        missing = [split for split in splits if split not in available]
        if missing:
            raise DataError(
                f"{self.folder / QRELS_DIR} has no qrels file for split(s) {', '.join(map(repr, missing))}; "
                f"available splits: {', '.join(available)}"
            )
        return {split: available[split] for split in dict.fromkeys(splits)}

    def identity(self) -> dict[str, Any]:
        """Describe the content (sha256 of every file read) for the collection fingerprint."""
        return {
            "kind": "beir",
            "corpus": sha256_file(self.corpus_path),
            "queries": sha256_file(self.queries_path),
            "qrels": {split: sha256_file(path) for split, path in self.qrels_paths.items()},
        }

    def qrels_label(self, split: str) -> str:
        """Name the qrels file of a split, for messages."""
        return str(self.qrels_paths[split])

    def iter_docs(self) -> Iterator[tuple[str, str, str]]:
        """Yield (doc id, title, text) for each corpus line, in file order.

        Raises:
            DataError: For a malformed line (naming the file and line number).
        """
        path = self.corpus_path
        for lineno, record in iter_jsonl(path):
            docid = record_id(record, path, lineno)
            text = record_text(record, "text", path, lineno, required=True)
            title = record_text(record, "title", path, lineno, required=False)
            yield docid, title, text

    def iter_queries(self) -> Iterator[tuple[str, str]]:
        """Yield (query id, text) for each queries line, in file order.

        Raises:
            DataError: For a malformed line (naming the file and line number).
        """
        path = self.queries_path
        for lineno, record in iter_jsonl(path):
            yield record_id(record, path, lineno), record_text(record, "text", path, lineno, required=True)

    def read_qrels(self) -> Qrels:
        """Read the qrels of every selected split.

        Raises:
            DataError: For a malformed qrels line or an empty qrels file.
        """
        return {split: read_qrels_file(path) for split, path in self.qrels_paths.items()}


def load_beir(folder: str | os.PathLike[str], splits: Sequence[str] = ()) -> BeirFolder:
    """Open a BEIR folder as a collection source (nothing is parsed yet).

    Args:
        folder: The BEIR folder.
        splits: The qrels splits to read; empty means all.

    Returns:
        The source, to be consumed by :func:`distillrank.data.collection.load_collection`.
    """
    return BeirFolder(folder, splits)
