"""Score files: the three readers on hand-written files, every error with its line, writer round trips."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from distillrank.errors import ConfigError, DataError
from distillrank.teachers.score_files import (
    FORMATS,
    canonical_format,
    detect_format,
    read_scores,
    write_scores,
)


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _fails(path: Path, line: int, *fragments: str, fmt: str = "auto") -> str:
    """Reading ``path`` raises a DataError naming ``path:line`` and every fragment."""
    with pytest.raises(DataError) as err:
        read_scores(path, fmt)
    message = str(err.value)
    assert f"{path}:{line}:" in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


# --------------------------------------------------------------------------- triples_tsv
TRIPLES = (
    "10.5\t-2.25\tq1\tp1\tn1\n"
    "10.5\t3.0\tq1\tp1\tn2\n"
    "\n"  # blank lines are skipped (and still counted)
    "7.0\t-1\tq2\tp9\tn1\n"
    "10.500001\t-2.25\tq1\tp1\tn1\n"  # the same pairs again, within the tolerance
)


def test_triples_reader(tmp_path):
    scores = read_scores(_write(tmp_path, "t.tsv", TRIPLES))
    assert scores.format == "triples_tsv" and len(scores) == 5
    assert scores.get("q1", "p1") == 10.5 and scores.get("q1", "n1") == -2.25
    assert scores.get("q2", "n1") == -1.0 and scores.get("q2", "p1") is None
    assert scores.line("q1", "n2") == 2 and scores.line("q2", "p9") == 4 and scores.line("q1", "n1") == 1
    assert scores.ranked("q1") == [("p1", 10.5), ("n2", 3.0), ("n1", -2.25)]
    assert scores.ranked("q2") == [("p9", 7.0), ("n1", -1.0)]
    assert scores.ranked("nope") == [] and scores.qids() == ["q1", "q2"]
    assert ("q1", "p1") in scores and scores.scores.dtype == np.float64


def test_triples_ids_are_stripped_and_crlf_accepted(tmp_path):
    scores = read_scores(_write(tmp_path, "t.tsv", "1.0\t2.0\t q1 \tp\tn\r\n"))
    assert scores.get("q1", "p") == 1.0 and scores.get("q1", "n") == 2.0


@pytest.mark.parametrize(
    "bad_line, fragments",
    [
        ("1.0\t2.0\tq1\tp1\n", ["expected 5 tab-separated columns", "got 4"]),
        ("1.0\t2.0\tq1\tp1\tn1\textra\n", ["expected 5 tab-separated columns", "got 6"]),
        ("1.0 2.0 q1 p1 n1\n", ["expected 5 tab-separated columns", "got 1"]),
        ("high\t2.0\tq1\tp1\tn1\n", ["expected a number for pos_score", "'high'"]),
        ("1.0\tnan\tq1\tp1\tn1\n", ["expected a finite number for neg_score", "'nan'"]),
        ("inf\t2.0\tq1\tp1\tn1\n", ["expected a finite number for pos_score", "'inf'"]),
        ("1.0\t2.0\t\tp1\tn1\n", ["expected a non-empty qid"]),
    ],
)
def test_triples_errors_name_the_line(tmp_path, bad_line, fragments):
    path = _write(tmp_path, "t.tsv", "5.0\t1.0\tq0\tp0\tn0\n\n" + bad_line)
    _fails(path, 3, *fragments)


def test_triples_disagreeing_duplicate_names_both_lines(tmp_path):
    path = _write(tmp_path, "t.tsv", "5.0\t1.0\tq1\tp1\tn1\n5.0\t2.0\tq1\tp1\tn2\n4.0\t1.0\tq1\tp1\tn3\n")
    message = _fails(path, 3, "(qid='q1', docid='p1')", "4.0 here", "5.0 on line 1")
    assert "tolerance" in message
    # the negative side too
    path = _write(tmp_path, "u.tsv", "5.0\t1.0\tq1\tp1\tn1\n6.0\t1.5\tq1\tp2\tn1\n")
    _fails(path, 2, "(qid='q1', docid='n1')", "1.5 here", "1.0 on line 1")


def test_tolerance_is_a_parameter(tmp_path):
    path = _write(tmp_path, "t.tsv", "5.0\t1.0\tq1\tp1\tn1\n5.01\t1.0\tq1\tp1\tn1\n")
    with pytest.raises(DataError):
        read_scores(path)
    assert read_scores(path, tolerance=0.01).get("q1", "p1") == 5.0  # the first line's score is kept


# --------------------------------------------------------------------------- trec
TREC = "q1 Q0 d1 1 12.5 bm25\nq1 Q0 d2 2 7 bm25\n\nq2\tQ0\td1\t1\t-0.5\ttag\n"


def test_trec_reader(tmp_path):
    scores = read_scores(_write(tmp_path, "r.trec", TREC))
    assert scores.format == "trec" and len(scores) == 3
    assert scores.get("q1", "d2") == 7.0 and scores.get("q2", "d1") == -0.5
    assert scores.line("q2", "d1") == 4
    assert scores.ranked("q1") == [("d1", 12.5), ("d2", 7.0)]


@pytest.mark.parametrize(
    "bad_line, fragments",
    [
        ("q1 Q0 d9 3 1.0\n", ["expected 6 whitespace-separated columns", "got 5"]),
        ("q1 Q0 d9 3 1.0 tag extra\n", ["expected 6 whitespace-separated columns", "got 7"]),
        ("q1 Q0 d9 third 1.0 tag\n", ["expected an integer rank", "'third'"]),
        ("q1 Q0 d9 3 x1.0 tag\n", ["expected a number for score", "'x1.0'"]),
        ("q1 Q0 d9 3 -inf tag\n", ["expected a finite number for score", "'-inf'"]),
        ("q1 Q0 d9 3 NaN tag\n", ["expected a finite number for score"]),
        ("q1 Q0 d1 3 12.0 tag\n", ["(qid='q1', docid='d1')", "12.0 here", "12.5 on line 1"]),
    ],
)
def test_trec_errors_name_the_line(tmp_path, bad_line, fragments):
    path = _write(tmp_path, "r.trec", TREC + bad_line)
    _fails(path, 5, *fragments)


def test_trec_repeated_pair_with_the_same_score_is_accepted(tmp_path):
    scores = read_scores(_write(tmp_path, "r.trec", TREC + "q1 Q0 d1 1 12.5 other\n"))
    assert len(scores) == 3 and scores.line("q1", "d1") == 1


# --------------------------------------------------------------------------- jsonl
JSONL = (
    '{"qid": "q1", "docids": ["d1", "d2"], "scores": [0.5, 2]}\n'
    '{"qid": 7, "docid": 3, "score": -1.25}\n'
    "\n"
    '{"qid": "q1", "docid": "d3", "score": 1e-3, "extra": "ignored"}\n'
)


def test_jsonl_reader_both_shapes(tmp_path):
    scores = read_scores(_write(tmp_path, "s.jsonl", JSONL))
    assert scores.format == "jsonl" and len(scores) == 4
    assert scores.get("q1", "d2") == 2.0 and scores.get("7", "3") == -1.25  # integer ids become strings
    assert scores.line("q1", "d3") == 4 and scores.line("q1", "d1") == 1
    assert scores.ranked("q1") == [("d2", 2.0), ("d1", 0.5), ("d3", 0.001)]


@pytest.mark.parametrize(
    "bad_line, fragments",
    [
        ('{"qid": "q2", "docids": ["a"]\n', ["malformed JSON"]),
        ("not json\n", ["malformed JSON"]),
        ('["q2", "a", 1.0]\n', ["expected a JSON object", "got list"]),
        ('{"docids": ["a"], "scores": [1]}\n', ["expected a 'qid' field"]),
        (
            '{"qid": "q2", "docids": ["a", "b"], "scores": [1.0]}\n',
            ["'docids' has 2 entries but 'scores' has 1"],
        ),
        ('{"qid": "q2", "docids": "a", "scores": [1.0]}\n', ["expected lists 'docids' and 'scores'"]),
        ('{"qid": "q2", "docids": ["a", "b"], "scores": [1.0, "x"]}\n', ["expected a number for scores[1]"]),
        ('{"qid": "q2", "docids": ["a"], "scores": [NaN]}\n', ["expected a finite number for scores[0]"]),
        ('{"qid": "q2", "docids": ["a"], "scores": [Infinity]}\n', ["expected a finite number"]),
        ('{"qid": "q2", "docids": [null], "scores": [1]}\n', ["expected docids[0] to be a non-empty string"]),
        ('{"qid": "q2", "docid": "a"}\n', ["expected a 'score' field"]),
        ('{"qid": "q2", "docid": "a", "score": true}\n', ["expected a number for 'score'"]),
        ('{"qid": "q2", "docid": "a", "score": "1.0"}\n', ["expected a number for 'score'"]),
        ('{"qid": ["q2"], "docid": "a", "score": 1.0}\n', ["expected 'qid' to be a string"]),
        ('{"qid": "q2"}\n', ["expected 'docids' and 'scores' lists, or 'docid' and 'score' fields"]),
        (
            '{"qid": "q1", "docid": "d1", "score": 0.75}\n',
            ["(qid='q1', docid='d1')", "0.75 here", "0.5 on line 1"],
        ),
    ],
)
def test_jsonl_errors_name_the_line(tmp_path, bad_line, fragments):
    path = _write(tmp_path, "s.jsonl", JSONL + bad_line)
    _fails(path, 5, *fragments)


# --------------------------------------------------------------------------- formats and detection
def test_format_detection_by_extension_then_content(tmp_path):
    assert detect_format(_write(tmp_path, "a.run", TREC)) == "trec"
    assert detect_format(_write(tmp_path, "a.json", JSONL)) == "jsonl"
    assert detect_format(_write(tmp_path, "a.txt", "\n" + TRIPLES)) == "triples_tsv"
    assert detect_format(_write(tmp_path, "b.txt", TREC)) == "trec"
    assert detect_format(_write(tmp_path, "c.txt", JSONL)) == "jsonl"
    assert read_scores(_write(tmp_path, "d.scores", TREC)).format == "trec"
    with pytest.raises(
        DataError, match=re.escape(f"{tmp_path / 'e.txt'}:2: cannot tell the score-file format")
    ):
        detect_format(_write(tmp_path, "e.txt", "\nq1 d1 3.0\n"))
    with pytest.raises(DataError, match="is empty"):
        detect_format(_write(tmp_path, "f.txt", "\n\n"))


def test_named_format_overrides_the_extension(tmp_path):
    path = _write(tmp_path, "scores.txt", TRIPLES)
    assert read_scores(path, "triples_tsv").format == "triples_tsv"
    assert read_scores(path, "tsv").format == "triples_tsv"  # alias
    # a TREC file read as triples fails on its first line
    _fails(_write(tmp_path, "r.trec", TREC), 1, "expected 5 tab-separated columns", fmt="triples_tsv")
    with pytest.raises(ConfigError, match="unknown score-file format 'csv'"):
        read_scores(path, "csv")
    assert [canonical_format(f) for f in FORMATS] == list(FORMATS)


def test_missing_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_scores(tmp_path / "nope.tsv")


def test_gzip_files_are_read(tmp_path):
    path = tmp_path / "t.tsv.gz"
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        fh.write(TRIPLES)
    scores = read_scores(path)
    assert scores.format == "triples_tsv" and scores.get("q1", "n2") == 3.0


# --------------------------------------------------------------------------- writers
def _table() -> pa.Table:
    rng = np.random.default_rng(0)
    rows = []
    for q in range(4):
        for d in range(6):
            rows.append((f"q{q}", f"doc-{q}-{d}", 1 if d < (1 + q % 2) else 0, bool(d == 5 and q == 0)))
    qid, docid, label, dropped = map(list, zip(*rows, strict=True))
    teacher = rng.normal(size=len(rows)).astype(np.float32)
    teacher[3] = teacher[4]  # a tie
    teacher[7] = np.float32(1 / 3)  # not exact in decimal
    return pa.table(
        {
            "qid": qid,
            "docid": docid,
            "label": label,
            "teacher": pa.array(teacher, pa.float32()),
            "dropped": dropped,
        }
    )


@pytest.mark.parametrize("fmt, ext", [("trec", "trec"), ("jsonl", "jsonl"), ("triples_tsv", "tsv")])
def test_write_read_round_trip_is_exact(tmp_path, fmt, ext):
    table = _table()
    path = tmp_path / f"out.{ext}"
    write_scores(table, path, fmt)
    back = read_scores(path)
    assert back.format == fmt
    rows = table.to_pylist()
    expected = {(r["qid"], r["docid"]): r["teacher"] for r in rows}
    if fmt == "triples_tsv":  # pairs of queries with a positive and a non-dropped negative
        expected = {(r["qid"], r["docid"]): r["teacher"] for r in rows if not r["dropped"]}
    assert set(back.index) == set(expected)
    for (q, d), score in expected.items():
        got = back.get(q, d)
        assert got == float(np.float32(score)) and np.float32(got) == np.float32(score)
    assert not list(tmp_path.glob(".*.tmp"))  # the atomic write left nothing behind


def test_trec_writer_ranks_per_query(tmp_path):
    table = _table()
    path = tmp_path / "out.trec"
    assert write_scores(table, path, "trec") == table.num_rows
    lines = [line.split() for line in path.read_text().splitlines()]
    assert all(len(cols) == 6 and cols[1] == "Q0" and cols[5] == "distillrank" for cols in lines)
    for q in ("q0", "q1", "q2", "q3"):
        mine = [cols for cols in lines if cols[0] == q]
        assert [int(c[3]) for c in mine] == list(range(1, len(mine) + 1))
        scores = [float(c[4]) for c in mine]
        assert scores == sorted(scores, reverse=True)
    assert [c[0] for c in lines] == sorted(c[0] for c in lines)  # queries kept together, in table order


def test_jsonl_writer_one_line_per_query_best_first(tmp_path):
    path = tmp_path / "out.jsonl"
    assert write_scores(_table(), path, "jsonl") == 4
    objs = [json.loads(line) for line in path.read_text().splitlines()]
    assert [o["qid"] for o in objs] == ["q0", "q1", "q2", "q3"]
    assert all(o["scores"] == sorted(o["scores"], reverse=True) and len(o["docids"]) == 6 for o in objs)


def test_triples_writer_pairs_every_positive_with_every_kept_negative(tmp_path):
    path = tmp_path / "out.tsv"
    # q0: 1 positive x 4 kept negatives (one dropped); q1: 2 x 4; q2: 1 x 5; q3: 2 x 4
    assert write_scores(_table(), path, "triples_tsv") == 4 + 8 + 5 + 8
    lines = [line.split("\t") for line in path.read_text().splitlines()]
    assert all(len(cols) == 5 for cols in lines)
    assert not any(cols[4] == "doc-0-5" for cols in lines)  # the dropped negative
    assert {(c[2], c[3]) for c in lines if c[2] == "q1"} == {("q1", "doc-1-0"), ("q1", "doc-1-1")}


def test_triples_writer_without_dropped_column_keeps_every_negative(tmp_path):
    path = tmp_path / "out.tsv"
    assert write_scores(_table().drop_columns(["dropped"]), path, "triples_tsv") == 5 + 8 + 5 + 8


def test_writer_format_from_extension_and_errors(tmp_path):
    table = _table()
    write_scores(table, tmp_path / "out.run")
    assert read_scores(tmp_path / "out.run").format == "trec"
    write_scores(table, tmp_path / "out.jsonl.gz")
    assert len(read_scores(tmp_path / "out.jsonl.gz")) == table.num_rows
    with pytest.raises(ConfigError, match="cannot tell the format"):
        write_scores(table, tmp_path / "out.parquet")
    with pytest.raises(DataError, match="lacks the columns"):
        write_scores(table.drop_columns(["label"]), tmp_path / "out.tsv", "triples_tsv")
    spaced = table.set_column(1, "docid", pa.array(["doc 1"] * table.num_rows))
    with pytest.raises(DataError, match="cannot be written as trec"):
        write_scores(spaced, tmp_path / "bad.trec", "trec")
    assert not (tmp_path / "bad.trec").exists()
    nan = table.set_column(3, "teacher", pa.array([float("nan")] * table.num_rows, pa.float32()))
    with pytest.raises(DataError, match="not finite"):
        write_scores(nan, tmp_path / "nan.trec", "trec")
