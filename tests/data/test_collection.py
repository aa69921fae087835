"""load_collection: source resolution, Arrow storage and caching, slicing, and the Collection API."""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from omegaconf import OmegaConf

from distillrank.data import Collection, load_collection
from distillrank.data.beir import BeirFolder
from distillrank.data.collection import DATA_DIR_ENV
from distillrank.errors import ConfigError, DataError

CORPUS = [
    {"_id": "d1", "title": "Alpha", "text": "one"},
    {"_id": "d2", "title": "", "text": "two"},
    {"_id": "d3", "text": "three"},
    {"_id": "d4", "title": "Delta", "text": "four"},
    {"_id": "d5", "title": " ", "text": "five"},
    {"_id": "d6", "title": "Zeta", "text": "six"},
    {"_id": "d7", "title": "Eta", "text": "seven"},
]
QUERIES = [
    {"_id": "q1", "text": "query one"},
    {"_id": "q2", "text": "query two"},
    {"_id": "q3", "text": "query three"},
    {"_id": "q4", "text": "query four"},
    {"_id": "q5", "text": "unjudged"},
]
QRELS = {
    "train": "query-id\tcorpus-id\tscore\nq4\td2\t1\nq2\td1\t1\nq2\td5\t0\n",
    "test": "query-id\tcorpus-id\tscore\nq3\td7\t1\nq1\td6\t2\nq1\td4\t0\n",
}


def make_beir(folder: Path, gz: bool = False) -> Path:
    """Write the tiny BEIR folder above (gzip-compressed jsonl if ``gz``)."""
    folder.mkdir(parents=True, exist_ok=True)
    for stem, records in (("corpus", CORPUS), ("queries", QUERIES)):
        text = "".join(json.dumps(r) + "\n" for r in records).encode("utf-8")
        if gz:
            (folder / f"{stem}.jsonl.gz").write_bytes(gzip.compress(text))
        else:
            (folder / f"{stem}.jsonl").write_bytes(text)
    (folder / "qrels").mkdir(exist_ok=True)
    for split, text in QRELS.items():
        (folder / "qrels" / f"{split}.tsv").write_text(text, encoding="utf-8")
    return folder


def cfg_for(path: Path | None, **overrides: Any) -> SimpleNamespace:
    """A data config (train and test splits) pointing at ``path``."""
    values = dict(
        name="tiny",
        source="beir",
        path=str(path) if path else None,
        irds_id=None,
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


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return make_beir(tmp_path / "tiny")


@pytest.fixture
def collection(folder: Path, tmp_path: Path) -> Collection:
    return load_collection(cfg_for(folder), tmp_path / "cache")


@pytest.fixture(autouse=True)
def _no_data_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)


# ---------------------------------------------------------------------------------------------
# Loading and the Collection API
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True])
def test_load_good_folder(tmp_path: Path, gz: bool) -> None:
    folder = make_beir(tmp_path / "tiny", gz=gz)
    collection = load_collection(cfg_for(folder), tmp_path / "cache")
    assert collection.name == "tiny"
    assert collection.corpus.column_names == ["_id", "title", "text"]
    assert collection.queries.column_names == ["_id", "text"]
    assert collection.doc_ids() == [f"d{i}" for i in range(1, 8)]
    assert collection.corpus[2] == {"_id": "d3", "title": "", "text": "three"}
    assert collection.queries["_id"][:] == ["q1", "q2", "q3", "q4", "q5"]
    assert collection.qrels == {
        "train": {"q4": {"d2": 1}, "q2": {"d1": 1, "d5": 0}},
        "test": {"q3": {"d7": 1}, "q1": {"d6": 2, "d4": 0}},
    }
    assert collection.splits() == ["train", "test"]
    assert collection.source_desc == f"BEIR folder {folder}"
    assert re.fullmatch(r"[0-9a-f]{64}", collection.fingerprint)  # a sha256 hex digest
    again = load_collection(cfg_for(folder), tmp_path / "another_cache")  # parsed again from the source
    assert again.fingerprint == collection.fingerprint


def test_stored_as_memory_mapped_arrow_under_cache_dir(collection: Collection, tmp_path: Path) -> None:
    path = collection.path
    assert path is not None and path.parent == tmp_path / "cache" / "collections"
    assert path.name == f"tiny-{collection.fingerprint[:16]}"
    assert {p.name for p in path.iterdir()} == {"corpus", "queries", "qrels.json", "meta.json", ".checksums.json"}
    for dataset, sub in ((collection.corpus, "corpus"), (collection.queries, "queries")):
        assert dataset.cache_files and all(
            Path(f["filename"]).parent == path / sub for f in dataset.cache_files
        )
    assert json.loads((path / "qrels.json").read_text()) == collection.qrels


def test_passage_texts_keep_row_order_and_join_titles(collection: Collection) -> None:
    assert collection.passage_texts([3, 0, 1, 4, 3]) == [
        "Delta four",
        "Alpha one",
        "two",
        "five",
        "Delta four",
    ]
    assert collection.passage_texts([2]) == ["three"]
    assert collection.passage_texts([]) == []
    with pytest.raises(IndexError):
        collection.passage_texts([7])


def test_passage_texts_use_one_arrow_call(collection: Collection, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Any] = []
    arrow_view = collection._corpus_arrow
    original = type(arrow_view).__getitem__

    def counting(self: Any, key: Any) -> Any:
        calls.append(key)
        return original(self, key)

    monkeypatch.setattr(type(arrow_view), "__getitem__", counting)
    collection.passage_texts([5, 1, 6])
    assert calls == [[5, 1, 6]]


def test_doc_row(collection: Collection) -> None:
    assert [collection.doc_row(d) for d in ("d1", "d7", "d4")] == [0, 6, 3]
    with pytest.raises(DataError, match="'nope' is not in collection 'tiny'"):
        collection.doc_row("nope")


def test_split_queries_follow_queries_file_order(collection: Collection) -> None:
    assert collection.split_queries("test") == [("q1", "query one"), ("q3", "query three")]
    assert collection.split_queries("train") == [("q2", "query two"), ("q4", "query four")]
    with pytest.raises(DataError, match="no split 'dev'; available splits: train, test"):
        collection.split_queries("dev")


def test_all_qrels_files_when_no_split_is_configured(folder: Path, tmp_path: Path) -> None:
    cfg = cfg_for(folder, train_split=None, test_split=None)
    assert sorted(load_collection(cfg, tmp_path / "cache").splits()) == ["test", "train"]


def test_omegaconf_config_is_accepted(folder: Path, tmp_path: Path) -> None:
    cfg = OmegaConf.create(vars(cfg_for(folder, max_test_queries=1)))
    collection = load_collection(cfg, tmp_path / "cache")
    assert collection.split_queries("test") == [("q1", "query one")]


# ---------------------------------------------------------------------------------------------
# Slicing
# ---------------------------------------------------------------------------------------------


def test_query_slicing_keeps_first_judged_queries_in_file_order(folder: Path, tmp_path: Path) -> None:
    cfg = cfg_for(folder, max_train_queries=1, max_test_queries=1)
    collection = load_collection(cfg, tmp_path / "cache")
    assert collection.qrels == {"train": {"q2": {"d1": 1, "d5": 0}}, "test": {"q1": {"d6": 2, "d4": 0}}}
    assert collection.queries["_id"][:] == ["q1", "q2"]
    assert len(collection.corpus) == 7  # max_docs not set: every doc is kept


def test_doc_slicing_keeps_every_judged_doc(folder: Path, tmp_path: Path) -> None:
    cfg = cfg_for(folder, max_train_queries=1, max_test_queries=1, max_docs=5)
    collection = load_collection(cfg, tmp_path / "cache")
    # judged for the kept queries: d1, d5 (q2) and d6, d4 (q1); one more doc in file order: d2.
    assert collection.doc_ids() == ["d1", "d2", "d4", "d5", "d6"]
    for split in collection.splits():
        for docs in collection.qrels[split].values():
            assert all(collection.doc_row(d) >= 0 for d in docs)


def test_judged_docs_are_kept_even_beyond_max_docs(folder: Path, tmp_path: Path) -> None:
    collection = load_collection(cfg_for(folder, max_docs=2), tmp_path / "cache")
    assert collection.doc_ids() == ["d1", "d2", "d4", "d5", "d6", "d7"]


def test_slicing_changes_the_fingerprint(folder: Path, tmp_path: Path) -> None:
    full = load_collection(cfg_for(folder), tmp_path / "cache")
    sliced = load_collection(cfg_for(folder, max_test_queries=1), tmp_path / "cache")
    assert full.fingerprint != sliced.fingerprint and full.path != sliced.path
    assert len(full.split_queries("test")) == 2


@pytest.mark.parametrize("bad", [0, -3, "10", True])
def test_bad_limits_are_config_errors(folder: Path, tmp_path: Path, bad: Any) -> None:
    with pytest.raises(ConfigError, match="max_docs"):
        load_collection(cfg_for(folder, max_docs=bad), tmp_path / "cache")


def test_unknown_source_is_a_config_error(folder: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="data.source must be one of beir, ir_datasets"):
        load_collection(cfg_for(folder, source="csv"), tmp_path / "cache")


# ---------------------------------------------------------------------------------------------
# Fingerprint and cache
# ---------------------------------------------------------------------------------------------


def test_fingerprint_depends_on_content_not_location(folder: Path, tmp_path: Path) -> None:
    first = load_collection(cfg_for(folder), tmp_path / "cache1")
    copy = make_beir(tmp_path / "elsewhere" / "copy")
    assert load_collection(cfg_for(copy), tmp_path / "cache2").fingerprint == first.fingerprint
    with (copy / "qrels" / "test.tsv").open("a") as handle:
        handle.write("q3\td1\t0\n")
    changed = load_collection(cfg_for(copy), tmp_path / "cache2")
    assert changed.fingerprint != first.fingerprint
    assert changed.qrels["test"]["q3"] == {"d7": 1, "d1": 0}


def test_second_load_reuses_the_arrow_copy(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = load_collection(cfg_for(folder), tmp_path / "cache")

    def fail(*_: Any, **__: Any) -> Any:
        raise AssertionError("the source was parsed again")

    for method in ("iter_docs", "iter_queries", "read_qrels"):
        monkeypatch.setattr(BeirFolder, method, fail)
    second = load_collection(cfg_for(folder), tmp_path / "cache")
    assert second.path == first.path and second.fingerprint == first.fingerprint
    assert second.corpus.cache_files == first.corpus.cache_files
    assert second.passage_texts([0]) == ["Alpha one"] and second.qrels == first.qrels
    assert len(list((tmp_path / "cache" / "collections").iterdir())) == 1


def _dead_pid() -> int:
    """Return the id of a process that has exited."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_leftover_of_a_killed_build_is_not_used(folder: Path, tmp_path: Path) -> None:
    target = load_collection(cfg_for(folder), tmp_path / "cache").path
    assert target is not None
    good_corpus = (target / "corpus").resolve()
    # Simulate a build killed half-way: the real target is gone, a temp dir holds partial output.
    shutil.rmtree(target)
    dead = target.parent / f".tmp-{target.name}-killed"
    alive = target.parent / f".tmp-{target.name}-running"
    for leftover in (dead, alive):
        (leftover / "corpus").mkdir(parents=True)
        (leftover / "qrels.json").write_text("{}")
    (dead / "owner.json").write_text(json.dumps({"host": socket.gethostname(), "pid": _dead_pid()}))
    (alive / "owner.json").write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid()}))

    collection = load_collection(cfg_for(folder), tmp_path / "cache")
    assert collection.path == target and (target / "corpus").resolve() == good_corpus
    assert len(collection.corpus) == 7 and collection.qrels["test"]
    assert not dead.exists()  # its builder is gone: removed
    assert alive.exists()  # a live build's directory is left alone


def test_incomplete_target_is_rebuilt(collection: Collection, folder: Path, tmp_path: Path) -> None:
    assert collection.path is not None
    (collection.path / "meta.json").unlink()
    again = load_collection(cfg_for(folder), tmp_path / "cache")
    assert (again.path / "meta.json").is_file() and len(again.corpus) == 7


def test_failed_build_leaves_nothing_behind(folder: Path, tmp_path: Path) -> None:
    with (folder / "qrels" / "test.tsv").open("a") as handle:
        handle.write("q1\tmissing-doc\t1\n")
    with pytest.raises(DataError, match="missing-doc"):
        load_collection(cfg_for(folder), tmp_path / "cache")
    assert list((tmp_path / "cache" / "collections").iterdir()) == []


def test_meta_records_counts(collection: Collection) -> None:
    assert collection.path is not None
    meta = json.loads((collection.path / "meta.json").read_text())
    assert meta["num_docs"] == 7 and meta["num_queries"] == 5 and meta["splits"] == {"train": 2, "test": 2}
    assert meta["fingerprint"] == collection.fingerprint


# ---------------------------------------------------------------------------------------------
# Source resolution
# ---------------------------------------------------------------------------------------------


def test_data_dir_env_resolves_local_mirror(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mirror = tmp_path / "mirror"
    make_beir(mirror / "tiny", gz=True)
    monkeypatch.setenv(DATA_DIR_ENV, str(mirror))
    collection = load_collection(cfg_for(None, source="ir_datasets", irds_id="beir/tiny"), tmp_path / "cache")
    assert collection.source_desc == f"BEIR folder {mirror / 'tiny'}"
    assert len(collection.corpus) == 7


def test_cfg_root_wins_over_env_and_path_wins_over_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_beir(tmp_path / "env" / "tiny")
    make_beir(tmp_path / "root" / "tiny")
    explicit = make_beir(tmp_path / "explicit")
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "env"))
    by_root = load_collection(cfg_for(None, root=str(tmp_path / "root")), tmp_path / "cache")
    assert by_root.source_desc == f"BEIR folder {tmp_path / 'root' / 'tiny'}"
    by_path = load_collection(cfg_for(explicit, root=str(tmp_path / "root")), tmp_path / "cache")
    assert by_path.source_desc == f"BEIR folder {explicit}"


def test_explicit_path_that_is_not_a_beir_folder(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="is not a BEIR folder") as info:
        load_collection(cfg_for(tmp_path / "empty"), tmp_path / "cache")
    assert "corpus.jsonl" in str(info.value) and "qrels/" in str(info.value)


def test_nothing_found_lists_every_place_tried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "mirror"))
    with pytest.raises(DataError) as info:
        load_collection(cfg_for(None), tmp_path / "cache")
    message = str(info.value)
    assert "no source found for collection 'tiny'" in message
    assert "cfg.path: not set" in message
    assert f"${DATA_DIR_ENV}: {tmp_path / 'mirror' / 'tiny'} is not a BEIR folder" in message
    assert "ir_datasets: not used" in message


def test_nothing_found_without_any_root(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=f"cfg.root and \\${DATA_DIR_ENV}: neither is set"):
        load_collection(cfg_for(None), tmp_path / "cache")


# ---------------------------------------------------------------------------------------------
# Shared fixtures and real data
# ---------------------------------------------------------------------------------------------


def test_tiny_beir_fixture_loads(tiny_beir: Path, tmp_path: Path) -> None:
    collection = load_collection(cfg_for(tiny_beir), tmp_path / "cache")
    assert len(collection.corpus) > 0
    assert collection.split_queries("train") and collection.split_queries("test")


@pytest.mark.slow
def test_scifact_loads(scifact_dir: Path, tmp_path: Path) -> None:
    cfg = cfg_for(scifact_dir, name="scifact")
    collection = load_collection(cfg, tmp_path / "cache")
    assert len(collection.corpus) == 5183 and len(collection.queries) == 1109
    assert len(collection.split_queries("train")) == 809 and len(collection.split_queries("test")) == 300
    assert sum(len(d) for d in collection.qrels["test"].values()) == 339
    docid = next(iter(next(iter(collection.qrels["test"].values()))))
    assert collection.passage_texts([collection.doc_row(docid)])[0]
