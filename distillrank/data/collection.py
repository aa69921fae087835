"""Loading an IR collection once into Arrow: validated, optionally sliced, and cached on disk.

:func:`load_collection` finds the source (a BEIR folder or an ir_datasets id), fingerprints its
content, and either loads the Arrow copy stored under
``<cache_dir>/collections/<name>-<fingerprint[:16]>`` or builds it by streaming the source into
Arrow files. A build happens in a temporary sibling directory that is renamed into place only
once complete, so a killed build is never mistaken for a finished one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import datasets
import pyarrow as pa
import pyarrow.compute as pc

from distillrank.data.beir import EXPECTED_LAYOUT, BeirFolder, Qrels, beir_folder_problems
from distillrank.data.irds import load_irds
from distillrank.errors import ConfigError, DataError
from distillrank.workspace import atomic_rename, cache_entry, drop_entry, drop_unreadable, process_gone, seal

logger = logging.getLogger("distillrank.data")

DATA_DIR_ENV = "DISTILLRANK_DATA_DIR"
"""Environment variable naming a local mirror root of BEIR folders (``<root>/<name>``)."""

FORMAT_VERSION = 1
"""Bumped whenever the stored layout or the parsing rules change (it enters the fingerprint)."""

SOURCES = ("beir", "ir_datasets")
CORPUS_SCHEMA = pa.schema([("_id", pa.string()), ("title", pa.string()), ("text", pa.string())])
QUERIES_SCHEMA = pa.schema([("_id", pa.string()), ("text", pa.string())])
_IDS_SCHEMA = pa.schema([("_id", pa.string())])

_REQUIRED_ENTRIES = ("corpus", "queries", "qrels.json", "meta.json")
_TMP_PREFIX = ".tmp-"
_OWNER_FILE = "owner.json"
_STALE_UNOWNED_S = 24 * 3600
_BATCH_ROWS = 4096
_BATCH_CHARS = 32 * 1024 * 1024
_EXAMPLES = 5


class CollectionSource(Protocol):
    """What :func:`load_collection` needs from a source (see ``beir.BeirFolder``, ``irds.IrdsSource``)."""

    description: str
    corpus_label: str
    queries_label: str

    def identity(self) -> dict[str, Any]:
        """Describe the source content for the fingerprint."""
        ...

    def qrels_label(self, split: str) -> str:
        """Name the qrels of a split, for messages."""
        ...

    def iter_docs(self) -> Iterator[tuple[str, str, str]]:
        """Yield (doc id, title, text) in source order."""
        ...

    def iter_queries(self) -> Iterator[tuple[str, str]]:
        """Yield (query id, text) in source order."""
        ...

    def read_qrels(self) -> Qrels:
        """Return split -> query id -> doc id -> relevance."""
        ...


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


def _attr(cfg: Any, key: str) -> Any:
    """Read an optional attribute of a config object (DictConfig, dataclass, namespace)."""
    try:
        return getattr(cfg, key)
    except (AttributeError, KeyError):
        return None


def _limit(cfg: Any, key: str) -> int | None:
    """Read a positive integer limit (or None) from the config.

    Raises:
        ConfigError: If the value is not a positive integer.
    """
    value = _attr(cfg, key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"data.{key} must be a positive integer or null, got {value!r}")
    return value


def _merge_limits(roles: Sequence[tuple[str, int | None]]) -> dict[str, int | None]:
    """Combine per-role query limits per split: a split used by two roles gets the larger limit."""
    merged: dict[str, int | None] = {}
    for split, limit in roles:
        if split not in merged:
            merged[split] = limit
        else:
            previous = merged[split]
            merged[split] = None if previous is None or limit is None else max(previous, limit)
    return merged


@dataclass(frozen=True)
class CollectionSpec:
    """The parts of a data config that decide which collection is loaded and how it is sliced."""

    name: str
    source: str
    path: str | None
    irds_id: str | None
    root: str | None
    splits: tuple[str, ...]
    query_limits: tuple[tuple[str, int | None], ...]
    max_docs: int | None

    @classmethod
    def from_cfg(cls, cfg: Any) -> CollectionSpec:
        """Read a spec from any object with the data config attributes.

        The dev split is limited by ``max_dev_queries`` when the config has it, else by
        ``max_test_queries``.

        Raises:
            ConfigError: For a missing name, an unknown source or a bad limit.
        """
        name = _attr(cfg, "name")
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"data.name must be a non-empty string, got {name!r}")
        source = _attr(cfg, "source") or "beir"
        if source not in SOURCES:
            raise ConfigError(f"data.source must be one of {', '.join(SOURCES)}, got {source!r}")
        train, dev, test = (_attr(cfg, f"{role}_split") for role in ("train", "dev", "test"))
        max_test = _limit(cfg, "max_test_queries")
        dev_limit = _limit(cfg, "max_dev_queries")
        roles = [
            (train or "train", _limit(cfg, "max_train_queries")),
            (dev or "dev", dev_limit if dev_limit is not None else max_test),
            (test or "test", max_test),
        ]
        return cls(
            name=name,
            source=source,
            path=_attr(cfg, "path") or None,
            irds_id=_attr(cfg, "irds_id") or None,
            root=_attr(cfg, "root") or None,
            splits=tuple(dict.fromkeys(s for s in (train, dev, test) if s)),
            query_limits=tuple(_merge_limits(roles).items()),
            max_docs=_limit(cfg, "max_docs"),
        )

    def limit(self, split: str) -> int | None:
        """Return the query limit of a split (None: keep every judged query)."""
        return dict(self.query_limits).get(split)

    def slicing_params(self) -> dict[str, Any]:
        """Return the parameters that change the stored content besides the source."""
        return {
            "splits": list(self.splits),
            "query_limits": dict(self.query_limits),
            "max_docs": self.max_docs,
        }


# --------------------------------------------------------------------------------------------
# Source resolution and fingerprint
# --------------------------------------------------------------------------------------------


def _data_root(spec: CollectionSpec) -> tuple[str | None, str]:
    """Return the mirror root to look in and where it came from."""
    if spec.root:
        return spec.root, "cfg.root"
    return os.environ.get(DATA_DIR_ENV) or None, f"${DATA_DIR_ENV}"


def resolve_source(spec: CollectionSpec) -> CollectionSource:
    """Find the source of a collection.

    Order: ``spec.path`` (a BEIR folder); ``<root>/<name>`` with root from ``spec.root`` or
    ``$DISTILLRANK_DATA_DIR`` when it is a BEIR folder; ir_datasets when the source is
    "ir_datasets" or an ``irds_id`` is set (the id defaults to the name).

    Raises:
        DataError: If nothing is found (listing every place tried) or the chosen source is broken.
    """
    if spec.path:
        return BeirFolder(spec.path, spec.splits)
    tried = ["cfg.path: not set"]
    root, origin = _data_root(spec)
    if root is None:
        tried.append(f"cfg.root and ${DATA_DIR_ENV}: neither is set")
    else:
        candidate = Path(root).expanduser() / spec.name
        problems = beir_folder_problems(candidate)
        if not problems:
            return BeirFolder(candidate, spec.splits)
        tried.append(f"{origin}: {candidate} is not a BEIR folder ({'; '.join(problems)})")
    if spec.source == "ir_datasets" or spec.irds_id:
        return load_irds(spec.irds_id or spec.name, spec.splits)
    tried.append(f"ir_datasets: not used (source is {spec.source!r} and irds_id is not set)")
    raise DataError(
        f"no source found for collection {spec.name!r}. Tried:\n  - "
        + "\n  - ".join(tried)
        + f"\nPoint cfg.path at a BEIR folder ({EXPECTED_LAYOUT}), put one at <root>/{spec.name} "
        f"with cfg.root or ${DATA_DIR_ENV}, or set source: ir_datasets with an irds_id."
    )


def compute_fingerprint(source: CollectionSource, spec: CollectionSpec) -> str:
    """Return the sha256 hex of the source content, the slicing parameters and the format version."""
    payload = {"format": FORMAT_VERSION, "source": source.identity(), "slicing": spec.slicing_params()}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode("utf-8")).hexdigest()


def _safe_name(name: str) -> str:
    """Make a collection name usable as a directory name (``beir/scifact`` -> ``beir_scifact``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "collection"


# --------------------------------------------------------------------------------------------
# Streaming into Arrow
# --------------------------------------------------------------------------------------------


class _ArrowSink:
    """Write rows to an Arrow IPC stream file in bounded record batches."""

    def __init__(self, path: Path, schema: pa.Schema) -> None:
        self.schema = schema
        self.rows = 0
        self._columns: list[list[str]] = [[] for _ in schema]
        self._chars = 0
        self._file = pa.OSFile(str(path), "wb")
        self._writer = pa.ipc.new_stream(self._file, schema)

    def add(self, row: Sequence[str]) -> None:
        """Append one row (values in schema order)."""
        for column, value in zip(self._columns, row, strict=True):
            column.append(value)
            self._chars += len(value)
        self.rows += 1
        if len(self._columns[0]) >= _BATCH_ROWS or self._chars >= _BATCH_CHARS:
            self._flush()

    def _flush(self) -> None:
        """Write the pending rows as one record batch."""
        if not self._columns[0]:
            return
        arrays = [
            pa.array(col, type=field.type) for col, field in zip(self._columns, self.schema, strict=True)
        ]
        self._writer.write_batch(pa.record_batch(arrays, schema=self.schema))
        self._columns = [[] for _ in self.schema]
        self._chars = 0

    def __enter__(self) -> _ArrowSink:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        try:
            if exc_type is None:
                self._flush()
            self._writer.close()
        finally:
            self._file.close()


def _read_arrow(path: Path) -> pa.Table:
    """Memory-map an Arrow IPC stream file as a table (no copy)."""
    with pa.ipc.open_stream(pa.memory_map(str(path))) as reader:
        return reader.read_all()


def _examples(items: Sequence[str]) -> str:
    """Format the first few items for an error message."""
    return ", ".join(repr(item) for item in items[:_EXAMPLES])


def _check_unique(ids: pa.ChunkedArray, what: str, label: str) -> None:
    """Raise DataError if an id occurs more than once (computed in Arrow, not Python)."""
    counts = pc.value_counts(ids)
    duplicates = counts.field("values").filter(pc.greater(counts.field("counts"), 1)).to_pylist()
    if duplicates:
        raise DataError(
            f"{label}: {len(duplicates)} {what} id(s) occur more than once, e.g. {_examples(duplicates)}; "
            "ids must be unique"
        )


def _check_known(ids: Iterable[str], universe: pa.ChunkedArray, what: str, label: str, where: str) -> None:
    """Raise DataError if some of ``ids`` (from qrels ``label``) are not in ``universe``."""
    candidates = pa.array(list(dict.fromkeys(ids)), type=pa.string())
    unknown = candidates.filter(pc.invert(pc.is_in(candidates, value_set=universe))).to_pylist()
    if unknown:
        raise DataError(f"{label}: {len(unknown)} {what} id(s) are not in {where}, e.g. {_examples(unknown)}")


def _warn_empty(count: int, what: str, label: str) -> None:
    """Log a warning when some texts are empty."""
    if count:
        logger.warning("%s: %d %s have an empty text", label, count, what)


def _write_queries(source: CollectionSource, path: Path) -> pa.Table:
    """Stream every query into ``path`` and validate them; return the memory-mapped table.

    Raises:
        DataError: If there are no queries or an id repeats.
    """
    empty = 0
    with _ArrowSink(path, QUERIES_SCHEMA) as sink:
        for qid, text in source.iter_queries():
            empty += not text.strip()
            sink.add((qid, text))
    if sink.rows == 0:
        raise DataError(f"{source.queries_label} holds no queries")
    table = _read_arrow(path)
    _check_unique(table.column("_id"), "query", source.queries_label)
    _warn_empty(empty, "queries", source.queries_label)
    return table


def _first_judged(order: Sequence[str], split_qrels: Mapping[str, Any], limit: int | None) -> list[str]:
    """Return the queries of ``order`` that have qrels in a split, at most ``limit`` of them."""
    kept: list[str] = []
    for qid in order:
        if limit is not None and len(kept) >= limit:
            break
        if qid in split_qrels:
            kept.append(qid)
    return kept


def _write_corpus(
    source: CollectionSource, path: Path, ids_path: Path | None, keep: set[str] | None, max_docs: int | None
) -> int:
    """Stream the corpus into ``path`` (sliced) and, when slicing, every id into ``ids_path``.

    Kept are every doc in ``keep`` plus the first other docs in source order, up to ``max_docs``
    in all (every doc when ``max_docs`` is None).

    Returns:
        The number of docs read.
    """
    budget = None if max_docs is None or keep is None else max(0, max_docs - len(keep))
    total = empty = 0
    with _ArrowSink(path, CORPUS_SCHEMA) as sink, contextlib.ExitStack() as stack:
        ids_sink = stack.enter_context(_ArrowSink(ids_path, _IDS_SCHEMA)) if ids_path else None
        for docid, title, text in source.iter_docs():
            total += 1
            empty += not text.strip()
            if ids_sink is not None:
                ids_sink.add((docid,))
            if budget is None or (keep is not None and docid in keep):
                sink.add((docid, title, text))
            elif budget > 0:
                budget -= 1
                sink.add((docid, title, text))
    _warn_empty(empty, "documents", source.corpus_label)
    return total


def _write_table(table: pa.Table, path: Path) -> None:
    """Write a table as an Arrow IPC stream file."""
    with pa.OSFile(str(path), "wb") as handle, pa.ipc.new_stream(handle, table.schema) as writer:
        writer.write_table(table)


@contextlib.contextmanager
def _quiet_progress() -> Iterator[None]:
    """Silence the ``datasets`` progress bars for an internal copy, restoring them afterwards."""
    was_disabled = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            datasets.enable_progress_bars()


def _save_dataset(arrow_file: Path, dest: Path) -> int:
    """Store an Arrow stream file as a ``datasets`` dataset with ``save_to_disk``; return its rows."""
    dataset = datasets.Dataset.from_file(str(arrow_file))
    with _quiet_progress():
        dataset.save_to_disk(str(dest))
    return len(dataset)


# --------------------------------------------------------------------------------------------
# Building and publishing
# --------------------------------------------------------------------------------------------


def _build_into(source: CollectionSource, spec: CollectionSpec, out: Path, fingerprint: str) -> None:
    """Parse, validate and slice ``source`` into ``out``/{corpus,queries,qrels.json,meta.json}."""
    work = out / "work"
    work.mkdir()
    queries = _write_queries(source, work / "queries-all.arrow")
    query_ids = queries.column("_id")
    qrels = source.read_qrels()
    for split, split_qrels in qrels.items():
        _check_known(split_qrels, query_ids, "query", source.qrels_label(split), source.queries_label)
    order = query_ids.to_pylist()
    kept = {split: _first_judged(order, qrels[split], spec.limit(split)) for split in qrels}
    del order
    keep_docs = None
    if spec.max_docs is not None:
        keep_docs = {docid for split, qids in kept.items() for qid in qids for docid in qrels[split][qid]}
    ids_path = work / "corpus-ids.arrow" if spec.max_docs is not None else None
    num_read = _write_corpus(source, work / "corpus.arrow", ids_path, keep_docs, spec.max_docs)
    if num_read == 0:
        raise DataError(f"{source.corpus_label} holds no documents")
    doc_ids = _read_arrow(ids_path or work / "corpus.arrow").column("_id")
    _check_unique(doc_ids, "document", source.corpus_label)
    for split, split_qrels in qrels.items():
        judged = (docid for per_query in split_qrels.values() for docid in per_query)
        _check_known(judged, doc_ids, "document", source.qrels_label(split), source.corpus_label)
    sliced = {split: {qid: qrels[split][qid] for qid in qids} for split, qids in kept.items()}
    queries_file = work / "queries-all.arrow"
    if any(spec.limit(split) is not None for split in qrels):
        kept_ids = pa.array(list({qid for qids in kept.values() for qid in qids}), type=pa.string())
        queries_file = work / "queries.arrow"
        _write_table(queries.filter(pc.is_in(query_ids, value_set=kept_ids)), queries_file)
    del queries, query_ids, doc_ids
    num_docs = _save_dataset(work / "corpus.arrow", out / "corpus")
    num_queries = _save_dataset(queries_file, out / "queries")
    (out / "qrels.json").write_text(json.dumps(sliced), encoding="utf-8")
    meta = {
        "name": spec.name,
        "fingerprint": fingerprint,
        "format_version": FORMAT_VERSION,
        "source": source.description,
        "num_docs": num_docs,
        "num_docs_in_source": num_read,
        "num_queries": num_queries,
        "splits": {split: len(qids) for split, qids in kept.items()},
        "slicing": spec.slicing_params(),
        "created": time.time(),
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
    shutil.rmtree(work)
    logger.info(
        "collection %r: %d docs (of %d), %d queries, splits %s",
        spec.name,
        num_docs,
        num_read,
        num_queries,
        meta["splits"],
    )


def _is_complete(path: Path) -> bool:
    """Tell whether a stored collection directory has every part."""
    return path.is_dir() and all((path / entry).exists() for entry in _REQUIRED_ENTRIES)


def _is_stale(tmp: Path) -> bool:
    """Tell whether a temporary build directory was left behind by a build that died.

    A build on this host is stale when its process is gone (the PID from ``owner.json``, or from
    the folder's name once the build removed ``owner.json`` just before publishing); one without
    either, or from another host, when it has not been touched for a day.
    """
    try:
        owner = json.loads((tmp / _OWNER_FILE).read_text(encoding="utf-8"))
        if owner.get("host") == socket.gethostname():
            return process_gone(int(owner["pid"]), owner.get("started"))
    except (OSError, ValueError, KeyError, TypeError):
        pass
    named = re.search(r"-(\d+)-\w+$", tmp.name)  # .tmp-NAME-PID-RANDOM
    try:
        if named and not (tmp / _OWNER_FILE).exists():
            return process_gone(int(named.group(1)), tmp.stat().st_mtime)
        return time.time() - tmp.stat().st_mtime > _STALE_UNOWNED_S
    except OSError:
        return False


def _remove_stale_builds(target: Path) -> None:
    """Delete temporary build directories of ``target`` whose builder died."""
    for tmp in target.parent.glob(f"{_TMP_PREFIX}{target.name}-*"):
        if tmp.is_dir() and _is_stale(tmp):
            logger.info("removing %s, left behind by an interrupted build", tmp)
            shutil.rmtree(tmp, ignore_errors=True)


def _publish(tmp: Path, target: Path) -> None:
    """Rename a finished build into place (keeping a complete one another process published first)."""
    try:
        atomic_rename(tmp, target)
    except OSError:
        if not _is_complete(target):
            raise
        logger.info("%s was built concurrently by another process; using that one", target)
        shutil.rmtree(tmp, ignore_errors=True)


def build_collection(source: CollectionSource, spec: CollectionSpec, target: Path, fingerprint: str) -> None:
    """Build the stored collection ``target`` from ``source`` in a temporary sibling directory.

    Raises:
        DataError: For invalid source content (nothing is left behind).
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_builds(target)
    tmp = Path(tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}{target.name}-{os.getpid()}-", dir=target.parent))
    try:
        owner = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}
        (tmp / _OWNER_FILE).write_text(json.dumps(owner), encoding="utf-8")
        logger.info("building collection %r from %s into %s", spec.name, source.description, target)
        _build_into(source, spec, tmp, fingerprint)
        (tmp / _OWNER_FILE).unlink()
        seal(tmp)  # its checksums, committed with it by the rename
        _publish(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# --------------------------------------------------------------------------------------------
# The loaded collection
# --------------------------------------------------------------------------------------------


class Collection:
    """A collection in memory-mapped Arrow: corpus, queries and per-split qrels.

    Attributes:
        name: The collection name.
        fingerprint: sha256 hex of the source content and slicing parameters.
        corpus: Columns ``_id``, ``title``, ``text``.
        queries: Columns ``_id``, ``text``.
        qrels: split -> query id -> doc id -> relevance (0 = judged non-relevant).
        source_desc: Where the collection came from, e.g. ``BEIR folder /data/scifact``.
        path: The stored directory, when loaded from disk.
    """

    def __init__(
        self,
        name: str,
        fingerprint: str,
        corpus: datasets.Dataset,
        queries: datasets.Dataset,
        qrels: Qrels,
        source_desc: str,
        path: Path | None = None,
    ) -> None:
        self.name = name
        self.fingerprint = fingerprint
        self.corpus = corpus
        self.queries = queries
        self.qrels = qrels
        self.source_desc = source_desc
        self.path = path
        self._corpus_arrow = corpus.with_format("arrow")
        self._doc_ids: list[str] | None = None
        self._doc_rows: dict[str, int] | None = None
        self._split_queries: dict[str, list[tuple[str, str]]] = {}

    @classmethod
    def from_disk(
        cls, path: str | os.PathLike[str], name: str, fingerprint: str, source_desc: str
    ) -> Collection:
        """Open a stored collection (memory-mapped, nothing parsed).

        Raises:
            DataError: If the stored files cannot be read.
        """
        path = Path(path)
        try:
            corpus = datasets.load_from_disk(str(path / "corpus"))
            queries = datasets.load_from_disk(str(path / "queries"))
            qrels = json.loads((path / "qrels.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise DataError(
                f"the stored collection {path} cannot be read ({err}); delete it to rebuild"
            ) from err
        return cls(name, fingerprint, corpus, queries, qrels, source_desc, path)

    def __repr__(self) -> str:
        return (
            f"Collection(name={self.name!r}, docs={len(self.corpus)}, queries={len(self.queries)}, "
            f"splits={self.splits()}, source={self.source_desc!r})"
        )

    def splits(self) -> list[str]:
        """Return the qrels splits, in config (or file name) order."""
        return list(self.qrels)

    def doc_ids(self) -> list[str]:
        """Return every doc id in row order (computed once)."""
        if self._doc_ids is None:
            self._doc_ids = self._corpus_arrow[:].column("_id").to_pylist()
        return self._doc_ids

    def doc_row(self, docid: str) -> int:
        """Return the corpus row of a doc id.

        Raises:
            DataError: If the id is not in the corpus.
        """
        if self._doc_rows is None:
            self._doc_rows = {d: row for row, d in enumerate(self.doc_ids())}
        row = self._doc_rows.get(docid)
        if row is None:
            raise DataError(f"document id {docid!r} is not in collection {self.name!r} ({self.source_desc})")
        return row

    def passage_texts(self, rows: Sequence[int]) -> list[str]:
        """Return ``"title text"`` (just the text when the title is blank) for corpus rows, in order.

        Args:
            rows: Corpus row numbers; fetched in one Arrow call.

        Raises:
            IndexError: If a row is out of range.
        """
        indices = [int(row) for row in rows]
        if not indices:
            return []
        size = len(self.corpus)
        bad = [row for row in indices if not 0 <= row < size]
        if bad:
            raise IndexError(f"corpus rows out of range [0, {size}): {bad[:_EXAMPLES]}")
        table = self._corpus_arrow[indices]
        titles = table.column("title").to_pylist()
        texts = table.column("text").to_pylist()
        return [
            f"{title} {text}" if title.strip() else text for title, text in zip(titles, texts, strict=True)
        ]

    def split_queries(self, split: str) -> list[tuple[str, str]]:
        """Return (query id, text) of the queries judged in ``split``, in queries-file order.

        Raises:
            DataError: If the split is unknown (naming the available ones).
        """
        if split not in self.qrels:
            raise DataError(
                f"collection {self.name!r} has no split {split!r}; available splits: {', '.join(self.qrels)}"
            )
        if split not in self._split_queries:
            judged = self.qrels[split]
            table = self.queries.with_format("arrow")[:]
            ids = table.column("_id").to_pylist()
            texts = table.column("text").to_pylist()
            self._split_queries[split] = [(q, t) for q, t in zip(ids, texts, strict=True) if q in judged]
        return self._split_queries[split]


def load_collection(cfg: Any, cache_dir: str | os.PathLike[str]) -> Collection:
    """Load a collection, building its Arrow copy under ``cache_dir`` on first use.

    Args:
        cfg: An object with the data config attributes (``name``, ``source``, ``path``,
            ``irds_id``, ``root``, ``{train,dev,test}_split``, ``max_train_queries``,
            ``max_test_queries``, ``max_docs``; optional ``max_dev_queries``).
        cache_dir: Root of the cache; the collection is stored under ``collections/``.

    Returns:
        The collection, memory-mapped from ``<cache_dir>/collections/<name>-<fingerprint[:16]>``.

    Raises:
        DataError: If no source is found or its content is invalid.
        ConfigError: If the config is invalid.
    """
    spec = CollectionSpec.from_cfg(cfg)
    source = resolve_source(spec)
    fingerprint = compute_fingerprint(source, spec)
    target = Path(cache_dir).expanduser() / "collections" / f"{_safe_name(spec.name)}-{fingerprint[:16]}"
    # locked while checked and built: a second process waits, then loads what the first built; one
    # that is incomplete, does not match its checksums or cannot be opened is dropped and rebuilt
    with cache_entry(target, "stored collection") as present:
        if present and _is_complete(target):
            logger.info("loading collection %r from %s", spec.name, target)
            try:
                return Collection.from_disk(target, spec.name, fingerprint, source.description)
            except DataError as err:
                drop_unreadable(target, "stored collection", err)
        elif target.exists():
            drop_entry(target)
        build_collection(source, spec, target, fingerprint)
        return Collection.from_disk(target, spec.name, fingerprint, source.description)
