"""BEIR folder parsing and validation: every bad input is a DataError naming the file and line."""

from __future__ import annotations

import gzip
import json
import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from distillrank.data import load_collection
from distillrank.data.beir import BeirFolder, is_beir_folder, read_qrels_file
from distillrank.errors import DataError

CORPUS = [
    {"_id": "d1", "title": "Alpha", "text": "alpha text"},
    {"_id": "d2", "title": "", "text": "beta text"},
    {"_id": "d3", "text": "gamma text"},
]
QUERIES = [{"_id": "q1", "text": "first"}, {"_id": "q2", "text": "second"}]
QRELS = {"test": "query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td3\t0\n"}


def write_lines(path: Path, lines: list[Any]) -> Path:
    """Write dicts as JSON lines and strings verbatim (gzip if the name ends in .gz)."""
    text = "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.name.endswith(".gz"):
        path.write_bytes(gzip.compress(text.encode("utf-8")))
    else:
        path.write_text(text, encoding="utf-8")
    return path


def make_beir(
    folder: Path,
    corpus: list[Any] = CORPUS,
    queries: list[Any] = QUERIES,
    qrels: dict[str, str] = QRELS,
    gz: bool = False,
) -> Path:
    """Write a tiny BEIR folder."""
    suffix = ".jsonl.gz" if gz else ".jsonl"
    write_lines(folder / f"corpus{suffix}", corpus)
    write_lines(folder / f"queries{suffix}", queries)
    (folder / "qrels").mkdir(parents=True, exist_ok=True)
    for split, text in qrels.items():
        (folder / "qrels" / f"{split}.tsv").write_text(text, encoding="utf-8")
    return folder


def cfg_for(folder: Path, **overrides: Any) -> SimpleNamespace:
    """A data config pointing at ``folder``."""
    values = dict(
        name="tiny",
        source="beir",
        path=str(folder),
        irds_id=None,
        root=None,
        train_split=None,
        dev_split=None,
        test_split="test",
        max_train_queries=None,
        max_test_queries=None,
        max_docs=None,
    )
    values.update(overrides)
    return SimpleNamespace(**values)


def load_error(folder: Path, tmp_path: Path, **overrides: Any) -> str:
    """Load ``folder`` expecting a DataError; return its message."""
    with pytest.raises(DataError) as info:
        load_collection(cfg_for(folder, **overrides), tmp_path / "cache")
    return str(info.value)


# ---------------------------------------------------------------------------------------------
# Good input
# ---------------------------------------------------------------------------------------------


def test_is_beir_folder(tmp_path: Path) -> None:
    folder = make_beir(tmp_path / "ok")
    assert is_beir_folder(folder)
    assert not is_beir_folder(tmp_path / "missing")
    (folder / "qrels" / "test.tsv").unlink()
    assert not is_beir_folder(folder)


@pytest.mark.parametrize("gz", [False, True])
def test_docs_and_queries_are_parsed_in_file_order(tmp_path: Path, gz: bool) -> None:
    corpus = [{"_id": 7, "title": None, "text": "seven", "extra": [1]}, "", "   ", *CORPUS]
    folder = make_beir(tmp_path / "b", corpus=corpus, gz=gz)
    source = BeirFolder(folder)
    assert list(source.iter_docs()) == [
        ("7", "", "seven"),
        ("d1", "Alpha", "alpha text"),
        ("d2", "", "beta text"),
        ("d3", "", "gamma text"),
    ]
    assert list(source.iter_queries()) == [("q1", "first"), ("q2", "second")]
    assert source.corpus_path.name == ("corpus.jsonl.gz" if gz else "corpus.jsonl")


def test_qrels_header_and_trec_format(tmp_path: Path) -> None:
    path = tmp_path / "dev.tsv"
    path.write_text("q1 0 d1 1\n\nq1 0 d2 0\nq2\tQ0\td3\t2\n", encoding="utf-8")
    assert read_qrels_file(path) == {"q1": {"d1": 1, "d2": 0}, "q2": {"d3": 2}}
    path.write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\n", encoding="utf-8")
    assert read_qrels_file(path) == {"q1": {"d1": 1}}
    path.write_text("q1\td1\t1\n", encoding="utf-8")  # no header
    assert read_qrels_file(path) == {"q1": {"d1": 1}}


def test_every_qrels_file_is_a_split_named_by_its_stem(tmp_path: Path) -> None:
    folder = make_beir(tmp_path / "b", qrels={"test": "q1\td1\t1\n", "train": "q2\td2\t1\n"})
    assert BeirFolder(folder).read_qrels() == {"test": {"q1": {"d1": 1}}, "train": {"q2": {"d2": 1}}}
    assert list(BeirFolder(folder, ["train"]).read_qrels()) == ["train"]


# ---------------------------------------------------------------------------------------------
# Malformed lines
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True])
def test_malformed_json_names_file_line_and_excerpt(tmp_path: Path, gz: bool) -> None:
    folder = make_beir(tmp_path / "b", corpus=[CORPUS[0], "", '{"_id": "d9", "text": oops}'], gz=gz)
    message = load_error(folder, tmp_path)
    assert "corpus.jsonl" in message and "line 3" in message
    assert "malformed JSON" in message and "oops" in message


def test_line_that_is_not_an_object(tmp_path: Path) -> None:
    folder = make_beir(tmp_path / "b", queries=[QUERIES[0], '["q2", "second"]'])
    message = load_error(folder, tmp_path)
    assert "queries.jsonl" in message and "line 2" in message and "JSON object" in message


@pytest.mark.parametrize(
    ("line", "key"),
    [({"title": "t", "text": "x"}, "_id"), ({"_id": "d9", "title": "t"}, "text")],
)
def test_missing_key_names_the_key(tmp_path: Path, line: dict[str, str], key: str) -> None:
    folder = make_beir(tmp_path / "b", corpus=[*CORPUS, line])
    message = load_error(folder, tmp_path)
    assert "corpus.jsonl" in message and "line 4" in message and f"missing key '{key}'" in message


def test_wrong_value_types(tmp_path: Path) -> None:
    folder = make_beir(tmp_path / "b", corpus=[CORPUS[0], {"_id": ["d2"], "text": "x"}])
    message = load_error(folder, tmp_path)
    assert "line 2" in message and "'_id'" in message and "string" in message
    folder = make_beir(tmp_path / "c", queries=[{"_id": "q1", "text": 3}])
    message = load_error(folder, tmp_path)
    assert "queries.jsonl" in message and "line 1" in message and "'text'" in message


def test_invalid_utf8_and_broken_gzip(tmp_path: Path) -> None:
    folder = make_beir(tmp_path / "b")
    with (folder / "corpus.jsonl").open("ab") as handle:
        handle.write(b'{"_id": "d4", "text": "\xff"}\n')
    message = load_error(folder, tmp_path)
    assert "corpus.jsonl" in message and "line 4" in message and "UTF-8" in message
    folder = make_beir(tmp_path / "c", gz=True)
    (folder / "queries.jsonl.gz").write_bytes(b"not gzip at all")
    message = load_error(folder, tmp_path)
    assert "queries.jsonl.gz" in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td3\n", "expected 3 columns"),
        ("q1\td1\t1\n\nq2\td3\thigh\n", "expected an integer score, found 'high'"),
        ("q1 0 d1 1 extra\nq1 0 d2 1\nq2 0 d3 1.5\n", "found 5"),
    ],
)
def test_bad_qrels_line_names_file_and_line(tmp_path: Path, text: str, expected: str) -> None:
    folder = make_beir(tmp_path / "b", qrels={"test": text})
    message = load_error(folder, tmp_path)
    assert "test.tsv" in message and expected in message
    assert ("line 1" if "extra" in text else "line 3") in message


def test_empty_qrels_file(tmp_path: Path) -> None:
    folder = make_beir(tmp_path / "b", qrels={"test": "query-id\tcorpus-id\tscore\n"})
    assert "holds no judgements" in load_error(folder, tmp_path)


# ---------------------------------------------------------------------------------------------
# Cross-file consistency
# ---------------------------------------------------------------------------------------------


def test_duplicate_doc_ids_give_count_and_examples(tmp_path: Path) -> None:
    corpus = [*CORPUS] + [{"_id": f"x{i}", "text": "t"} for i in range(7)] * 2 + [CORPUS[1]]
    folder = make_beir(tmp_path / "b", corpus=corpus)
    message = load_error(folder, tmp_path)
    assert "corpus.jsonl" in message and "8 document id(s) occur more than once" in message
    # the first five duplicated ids, in order of first occurrence
    assert "e.g. 'd2', 'x0', 'x1', 'x2', 'x3';" in message and "'x4'" not in message


def test_duplicate_query_ids(tmp_path: Path) -> None:
    folder = make_beir(tmp_path / "b", queries=[*QUERIES, {"_id": "q1", "text": "again"}])
    message = load_error(folder, tmp_path)
    assert (
        "queries.jsonl" in message and "1 query id(s) occur more than once" in message and "'q1'" in message
    )


def test_qrels_with_unknown_query_ids(tmp_path: Path) -> None:
    qrels = {"test": "q1\td1\t1\n" + "".join(f"zz{i}\td1\t1\n" for i in range(6))}
    folder = make_beir(tmp_path / "b", qrels=qrels)
    message = load_error(folder, tmp_path)
    assert "test.tsv" in message and "6 query id(s) are not in" in message and "queries.jsonl" in message
    assert "'zz0'" in message and "'zz5'" not in message


def test_qrels_with_unknown_doc_ids_are_checked_before_slicing(tmp_path: Path) -> None:
    # q2 is dropped by max_test_queries=1, but its unknown doc must still be reported.
    folder = make_beir(tmp_path / "b", qrels={"test": "q1\td1\t1\nq2\tnope\t1\n"})
    message = load_error(folder, tmp_path, max_test_queries=1, max_docs=1)
    assert "test.tsv" in message and "1 document id(s) are not in" in message and "'nope'" in message


def test_judged_doc_beyond_max_docs_is_not_reported_unknown(tmp_path: Path) -> None:
    folder = make_beir(tmp_path / "b", qrels={"test": "q1\td3\t1\n"})
    collection = load_collection(cfg_for(folder, max_docs=1), tmp_path / "cache")
    assert collection.doc_ids() == ["d3"]


def test_empty_texts_warn_with_count(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    corpus = [*CORPUS, {"_id": "e1", "title": "t", "text": "  "}, {"_id": "e2", "text": ""}]
    folder = make_beir(tmp_path / "b", corpus=corpus, queries=[*QUERIES, {"_id": "q3", "text": " "}])
    with caplog.at_level(logging.WARNING, logger="distillrank.data"):
        collection = load_collection(cfg_for(folder), tmp_path / "cache")
    assert len(collection.corpus) == 5
    messages = [r.getMessage() for r in caplog.records if r.name == "distillrank.data"]
    assert any("2 documents have an empty text" in m and "corpus.jsonl" in m for m in messages)
    assert any("1 queries have an empty text" in m for m in messages)


# ---------------------------------------------------------------------------------------------
# Folder layout
# ---------------------------------------------------------------------------------------------


def test_missing_corpus_names_folder_and_expected_files(tmp_path: Path) -> None:
    folder = make_beir(tmp_path / "b")
    (folder / "corpus.jsonl").unlink()
    message = load_error(folder, tmp_path)
    assert str(folder) in message and "corpus.jsonl or corpus.jsonl.gz" in message
    assert "queries.jsonl" in message  # the expected layout is spelled out


def test_empty_qrels_folder(tmp_path: Path) -> None:
    folder = make_beir(tmp_path / "b", qrels={})
    message = load_error(folder, tmp_path)
    assert str(folder) in message and "qrels/ folder is empty" in message and "qrels/<split>.tsv" in message


def test_unknown_configured_split_lists_available(tmp_path: Path) -> None:
    folder = make_beir(tmp_path / "b")
    message = load_error(folder, tmp_path, train_split="train")
    assert "'train'" in message and "available splits: test" in message


def test_both_plain_and_gzipped_corpus_is_ambiguous(tmp_path: Path) -> None:
    folder = make_beir(tmp_path / "b")
    write_lines(folder / "corpus.jsonl.gz", CORPUS)
    assert "corpus.jsonl and corpus.jsonl.gz" in load_error(folder, tmp_path)
