"""The ir_datasets source, through tiny datasets registered from local files (no network)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, NamedTuple

import ir_datasets
import pytest
from ir_datasets.datasets.base import Dataset
from ir_datasets.formats import TrecQrels, TsvDocs, TsvQueries
from ir_datasets.util import LocalDownload

from distillrank.data import load_collection, load_irds
from distillrank.data.collection import DATA_DIR_ENV
from distillrank.data.irds import IrdsSource
from distillrank.errors import DataError


class TitledDoc(NamedTuple):
    """A doc with a title, like ir_datasets' BEIR docs."""

    doc_id: str
    title: str
    text: str

    def default_text(self) -> str:
        return f"{self.title} {self.text}"


DOCS = "d1\tAlpha\tone\nd2\t\ttwo\nd3\tGamma\tthree\nd4\tDelta\tfour\nd5\t\tfive\n"
QUERIES = "q1\tquery one\nq2\tquery two\nq3\tquery three\nq4\tquery four\n"
TRAIN_QRELS = "q4 0 d2 1\nq2 0 d1 1\nq2 0 d5 0\n"
TEST_QRELS = "q3 0 d3 1\nq1 0 d4 2\n"


def _write(folder: Path, name: str, text: str) -> LocalDownload:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return LocalDownload(path)


@pytest.fixture
def registered(tmp_path: Path) -> Iterator[list[str]]:
    """Register datasets here and drop them from the ir_datasets registry afterwards."""
    names: list[str] = []
    yield names
    for name in names:
        ir_datasets.registry._registered.pop(name, None)


@pytest.fixture
def beir_like(tmp_path: Path, registered: list[str]) -> str:
    """A BEIR-style dataset: ``<id>`` has docs + queries, ``<id>/train`` and ``<id>/test`` add qrels."""
    base_id = f"distillrank-test-{uuid.uuid4().hex[:8]}"
    docs = TsvDocs(_write(tmp_path, "docs.tsv", DOCS), doc_cls=TitledDoc)
    queries = TsvQueries(_write(tmp_path, "queries.tsv", QUERIES))
    ir_datasets.registry.register(base_id, Dataset(docs, queries))
    for split, text in (("train", TRAIN_QRELS), ("test", TEST_QRELS)):
        qrels = TrecQrels(_write(tmp_path, f"{split}.qrels", text), {})
        ir_datasets.registry.register(f"{base_id}/{split}", Dataset(docs, queries, qrels))
    registered.extend([base_id, f"{base_id}/train", f"{base_id}/test"])
    return base_id


@pytest.fixture
def plain(tmp_path: Path, registered: list[str]) -> str:
    """A vaswani-style dataset: docs, queries and qrels in one id (split "test")."""
    dataset_id = f"distillrank-plain-{uuid.uuid4().hex[:8]}"
    docs = TsvDocs(_write(tmp_path, "plain-docs.tsv", "a\tfirst doc\nb\tsecond doc\nc\tthird doc\n"))
    queries = TsvQueries(_write(tmp_path, "plain-queries.tsv", "1\tfirst query\n2\tsecond query\n"))
    qrels = TrecQrels(_write(tmp_path, "plain.qrels", "2 0 c 1\n1 0 a 1\n1 0 b 0\n"), {})
    ir_datasets.registry.register(dataset_id, Dataset(docs, queries, qrels))
    registered.append(dataset_id)
    return dataset_id


@pytest.fixture(autouse=True)
def _no_data_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)


def cfg_for(irds_id: str | None, **overrides: Any) -> SimpleNamespace:
    values = dict(
        name="irds",
        source="ir_datasets",
        path=None,
        irds_id=irds_id,
        root=None,
        train_split="train",
        dev_split=None,
        test_split="test",
        max_train_queries=None,
        max_test_queries=None,
        max_docs=None,
    )
    values.update(overrides)
    return SimpleNamespace(**values)


def test_beir_style_dataset_with_per_split_qrels(beir_like: str, tmp_path: Path) -> None:
    collection = load_collection(cfg_for(beir_like), tmp_path / "cache")
    assert collection.source_desc == f"ir_datasets {beir_like}"
    assert collection.doc_ids() == ["d1", "d2", "d3", "d4", "d5"]
    assert collection.passage_texts([3, 1, 0]) == ["Delta four", "two", "Alpha one"]
    assert collection.queries["_id"][:] == ["q1", "q2", "q3", "q4"]
    assert collection.qrels == {
        "train": {"q4": {"d2": 1}, "q2": {"d1": 1, "d5": 0}},
        "test": {"q3": {"d3": 1}, "q1": {"d4": 2}},
    }
    assert collection.split_queries("train") == [("q2", "query two"), ("q4", "query four")]
    assert collection.split_queries("test") == [("q1", "query one"), ("q3", "query three")]


def test_plain_dataset_qrels_become_the_test_split(plain: str, tmp_path: Path) -> None:
    collection = load_collection(cfg_for(plain, train_split=None), tmp_path / "cache")
    assert collection.splits() == ["test"]
    assert collection.qrels["test"] == {"2": {"c": 1}, "1": {"a": 1, "b": 0}}
    assert collection.split_queries("test") == [("1", "first query"), ("2", "second query")]
    assert collection.passage_texts([2]) == ["third doc"]  # GenericDoc: no title


def test_irds_id_defaults_to_the_name(plain: str, tmp_path: Path) -> None:
    collection = load_collection(cfg_for(None, name=plain, train_split=None), tmp_path / "cache")
    assert collection.source_desc == f"ir_datasets {plain}"


def test_slicing(beir_like: str, tmp_path: Path) -> None:
    cfg = cfg_for(beir_like, max_train_queries=1, max_test_queries=1, max_docs=4)
    collection = load_collection(cfg, tmp_path / "cache")
    assert collection.qrels == {"train": {"q2": {"d1": 1, "d5": 0}}, "test": {"q1": {"d4": 2}}}
    assert collection.doc_ids() == ["d1", "d2", "d4", "d5"]  # judged d1, d5, d4 + first other: d2
    assert collection.queries["_id"][:] == ["q1", "q2"]


def test_second_load_does_not_iterate(
    beir_like: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = load_collection(cfg_for(beir_like), tmp_path / "cache")

    def fail(*_: Any) -> Any:
        raise AssertionError("ir_datasets was read again")

    for method in ("iter_docs", "iter_queries", "read_qrels"):
        monkeypatch.setattr(IrdsSource, method, fail)
    second = load_collection(cfg_for(beir_like), tmp_path / "cache")
    assert second.path == first.path and second.qrels == first.qrels


def test_fingerprint_covers_id_splits_and_version(beir_like: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from distillrank.data.collection import CollectionSpec, compute_fingerprint

    spec = CollectionSpec.from_cfg(cfg_for(beir_like))
    base = compute_fingerprint(load_irds(beir_like, ["train", "test"]), spec)
    assert compute_fingerprint(load_irds(beir_like, ["train", "test"]), spec) == base
    assert compute_fingerprint(load_irds(beir_like, ["test"]), spec) != base
    monkeypatch.setattr(ir_datasets, "__version__", "999.0")
    assert compute_fingerprint(load_irds(beir_like, ["train", "test"]), spec) != base


def test_unknown_id(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="ir_datasets has no dataset 'no-such-dataset-xyz'"):
        load_collection(cfg_for("no-such-dataset-xyz"), tmp_path / "cache")


def test_unknown_split_lists_available(beir_like: str, plain: str, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="split 'dev'.*available splits: test, train"):
        load_collection(cfg_for(beir_like, dev_split="dev"), tmp_path / "cache")
    with pytest.raises(DataError, match="split 'train'.*available splits: test"):
        load_collection(cfg_for(plain), tmp_path / "cache")


def test_unknown_doc_in_qrels(tmp_path: Path, registered: list[str]) -> None:
    dataset_id = f"distillrank-bad-{uuid.uuid4().hex[:8]}"
    docs = TsvDocs(_write(tmp_path, "docs.tsv", "a\tdoc\n"))
    queries = TsvQueries(_write(tmp_path, "queries.tsv", "1\tquery\n"))
    qrels = TrecQrels(_write(tmp_path, "bad.qrels", "1 0 a 1\n1 0 ghost 1\n"), {})
    ir_datasets.registry.register(dataset_id, Dataset(docs, queries, qrels))
    registered.append(dataset_id)
    with pytest.raises(DataError, match=f"ir_datasets {dataset_id} qrels: 1 document id.*'ghost'"):
        load_collection(cfg_for(dataset_id, train_split=None), tmp_path / "cache")


def test_ir_datasets_failure_becomes_data_error(tmp_path: Path, registered: list[str]) -> None:
    dataset_id = f"distillrank-missing-{uuid.uuid4().hex[:8]}"
    docs = TsvDocs(LocalDownload(tmp_path / "never-written.tsv"))
    queries = TsvQueries(_write(tmp_path, "queries.tsv", "1\tquery\n"))
    qrels = TrecQrels(_write(tmp_path, "ok.qrels", "1 0 a 1\n"), {})
    ir_datasets.registry.register(dataset_id, Dataset(docs, queries, qrels))
    registered.append(dataset_id)
    with pytest.raises(DataError, match="ir_datasets could not read .* docs: FileNotFoundError"):
        load_collection(cfg_for(dataset_id, train_split=None), tmp_path / "cache")
    assert list((tmp_path / "cache" / "collections").iterdir()) == []
