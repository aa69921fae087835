"""Reading collections through ``ir_datasets``.

BEIR collections are registered per split (``beir/scifact/train``, ``beir/scifact/test``) around a
shared corpus and query file (``beir/scifact``); classic collections such as ``vaswani`` provide
docs, queries and qrels in one dataset, whose qrels become the split "test".

``ir_datasets`` is imported lazily: importing this module is cheap.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from distillrank.data.beir import Qrels, id_problem
from distillrank.errors import DataError

logger = logging.getLogger("distillrank.data")

DEFAULT_SPLIT = "test"


def _ir_datasets() -> Any:
    """Import ir_datasets, with a clear error if it is not installed."""
    try:
        import ir_datasets
    except ImportError as err:  # pragma: no cover - it is a declared dependency
        raise DataError(
            "the ir_datasets package is needed for source 'ir_datasets' (pip install ir_datasets)"
        ) from err
    return ir_datasets


def _load_or_none(dataset_id: str) -> Any | None:
    """Return the ir_datasets dataset with this id, or None if no such id is registered."""
    try:
        return _ir_datasets().load(dataset_id)
    except KeyError:
        return None


def _child_splits(irds_id: str) -> dict[str, str]:
    """Map split -> dataset id for the registered ``<irds_id>/<split>`` datasets that have qrels."""
    ir_datasets = _ir_datasets()
    prefix = irds_id + "/"
    found = {}
    for key in list(ir_datasets.registry):
        rest = key[len(prefix) :] if key.startswith(prefix) else ""
        if rest and "/" not in rest and ir_datasets.load(key).has_qrels():
            found[rest] = key
    return found


def _resolve_splits(irds_id: str, base: Any, splits: Sequence[str]) -> dict[str, str]:
    """Map each requested split to the ir_datasets id that provides its qrels.

    ``<irds_id>/<split>`` is used when it exists; otherwise a dataset that has qrels itself serves
    the split "test" (or the only split asked for). With no split asked for, every
    ``<irds_id>/<split>`` with qrels is used, or the dataset's own qrels as "test".

    Raises:
        DataError: If a split has no qrels anywhere.
    """
    if not splits:
        if base.has_qrels():
            return {DEFAULT_SPLIT: irds_id}
        found = _child_splits(irds_id)
        if not found:
            raise DataError(
                f"ir_datasets dataset {irds_id!r} has no qrels and no '{irds_id}/<split>' datasets"
            )
        return found
    unique = list(dict.fromkeys(splits))
    resolved = {}
    for split in unique:
        child_id = f"{irds_id}/{split}"
        child = _load_or_none(child_id)
        if child is not None and child.has_qrels():
            resolved[split] = child_id
        elif base.has_qrels() and (split == DEFAULT_SPLIT or len(unique) == 1):
            resolved[split] = irds_id
        else:
            available = sorted(_child_splits(irds_id)) or ([DEFAULT_SPLIT] if base.has_qrels() else [])
            raise DataError(
                f"ir_datasets has no qrels for split {split!r} of {irds_id!r} (tried {child_id!r}"
                f"{' and the qrels of ' + repr(irds_id) if base.has_qrels() else ''}); "
                f"available splits: {', '.join(available) or 'none'}"
            )
    return resolved


def _as_str(value: Any) -> str:
    """Return a field value as a string ("" for None)."""
    if value is None:
        return ""
    return value if isinstance(value, str) else str(value)


class IrdsSource:
    """A collection source reading an ir_datasets dataset (downloads happen on first iteration).

    Args:
        irds_id: The dataset id without split, e.g. ``beir/scifact`` or ``vaswani``.
        split_ids: split -> the ir_datasets id whose qrels form that split.
    """

    def __init__(self, irds_id: str, split_ids: dict[str, str]) -> None:
        self.irds_id = irds_id
        self.split_ids = split_ids
        self.description = f"ir_datasets {irds_id}"
        self._docs_id = self._docs_source([irds_id, *split_ids.values()])
        self._queries_ids = self._queries_sources()
        self.corpus_label = f"ir_datasets {self._docs_id} docs"
        self.queries_label = f"ir_datasets {' + '.join(self._queries_ids)} queries"

    @staticmethod
    def _docs_source(ids: Sequence[str]) -> str:
        """Return the first dataset id among ``ids`` that provides docs."""
        for dataset_id in ids:
            if _ir_datasets().load(dataset_id).has_docs():
                return dataset_id
        raise DataError(f"none of the ir_datasets datasets {', '.join(dict.fromkeys(ids))} provides docs")

    def _queries_sources(self) -> list[str]:
        """Return the ids to read queries from: the dataset itself, else each split's dataset."""
        load = _ir_datasets().load
        if load(self.irds_id).has_queries():
            return [self.irds_id]
        ids = [i for i in dict.fromkeys(self.split_ids.values()) if load(i).has_queries()]
        if not ids:
            raise DataError(f"ir_datasets dataset {self.irds_id!r} and its splits provide no queries")
        return ids

    def identity(self) -> dict[str, Any]:
        """Describe the content for the collection fingerprint (ir_datasets downloads are immutable)."""
        return {
            "kind": "ir_datasets",
            "id": self.irds_id,
            "splits": self.split_ids,
            "ir_datasets_version": _ir_datasets().__version__,
        }

    def qrels_label(self, split: str) -> str:
        """Name the qrels of a split, for messages."""
        return f"ir_datasets {self.split_ids[split]} qrels"

    def _guarded(self, what: str, items: Iterable[Any]) -> Iterator[tuple[int, Any]]:
        """Enumerate ``items`` from 1, turning ir_datasets failures (downloads, parsing) into DataError."""
        iterator = iter(items)
        position = 0
        while True:
            try:
                item = next(iterator)
            except StopIteration:
                return
            except DataError:
                raise
            except Exception as err:  # any failure inside ir_datasets is reported to the user
                raise DataError(f"ir_datasets could not read {what}: {type(err).__name__}: {err}") from err
            position += 1
            yield position, item

    def iter_docs(self) -> Iterator[tuple[str, str, str]]:
        """Yield (doc id, title, text) in the dataset's order.

        Raises:
            DataError: If ir_datasets fails or a doc has an empty id.
        """
        docs = _ir_datasets().load(self._docs_id)
        for position, doc in self._guarded(self.corpus_label, docs.docs_iter()):
            docid = _as_str(doc.doc_id)
            if not docid.strip():
                raise DataError(f"{self.corpus_label}, item {position}: empty doc_id")
            if problem := id_problem(docid, "doc_id"):
                raise DataError(f"{self.corpus_label}, item {position}: {problem}")
            text = _as_str(doc.text) if hasattr(doc, "text") else _as_str(doc.default_text())
            yield docid, _as_str(getattr(doc, "title", "")), text

    def iter_queries(self) -> Iterator[tuple[str, str]]:
        """Yield (query id, text) in the dataset's order (each id once across split datasets).

        Raises:
            DataError: If ir_datasets fails or a query has an empty id.
        """
        seen: set[str] = set()
        for dataset_id in self._queries_ids:
            label = f"ir_datasets {dataset_id} queries"
            queries = _ir_datasets().load(dataset_id).queries_iter()
            for position, query in self._guarded(label, queries):
                qid = _as_str(query.query_id)
                if not qid.strip():
                    raise DataError(f"{label}, item {position}: empty query_id")
                if problem := id_problem(qid, "query_id"):
                    raise DataError(f"{label}, item {position}: {problem}")
                if len(self._queries_ids) > 1:
                    if qid in seen:
                        continue
                    seen.add(qid)
                text = _as_str(query.text) if hasattr(query, "text") else _as_str(query.default_text())
                yield qid, text

    def read_qrels(self) -> Qrels:
        """Read the qrels of every split.

        Raises:
            DataError: If ir_datasets fails or a relevance is not an integer.
        """
        return {split: self._read_split(split) for split in self.split_ids}

    def _read_split(self, split: str) -> dict[str, dict[str, int]]:
        """Read the qrels of one split."""
        label = self.qrels_label(split)
        qrels: dict[str, dict[str, int]] = {}
        items = _ir_datasets().load(self.split_ids[split]).qrels_iter()
        for position, qrel in self._guarded(label, items):
            try:
                relevance = int(qrel.relevance)
            except (TypeError, ValueError):
                raise DataError(
                    f"{label}, item {position}: relevance {qrel.relevance!r} is not an integer"
                ) from None
            qid, docid = _as_str(qrel.query_id), _as_str(qrel.doc_id)
            if problem := id_problem(qid, "query_id") or id_problem(docid, "doc_id"):
                raise DataError(f"{label}, item {position}: {problem}")
            qrels.setdefault(qid, {})[docid] = relevance
        if not qrels:
            raise DataError(f"{label} holds no judgements")
        return qrels


def load_irds(irds_id: str, splits: Sequence[str] = ()) -> IrdsSource:
    """Open an ir_datasets collection as a collection source (nothing is downloaded yet).

    Args:
        irds_id: The dataset id without split, e.g. ``beir/scifact`` or ``vaswani``.
        splits: The splits to provide qrels for; empty means every split found.

    Returns:
        The source, to be consumed by :func:`distillrank.data.collection.load_collection`.

    Raises:
        DataError: If the id is unknown or a split has no qrels.
    """
    base = _load_or_none(irds_id)
    if base is None:
        raise DataError(
            f"ir_datasets has no dataset {irds_id!r} (ids look like 'beir/scifact' or 'vaswani'; "
            "see https://ir-datasets.com)"
        )
    return IrdsSource(irds_id, _resolve_splits(irds_id, base, splits))
