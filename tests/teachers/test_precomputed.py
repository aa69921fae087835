"""PrecomputedTeacher: looked-up scores, missing pairs, unknown ids, fingerprint, config."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from distillrank.errors import DataError, DistillrankError
from distillrank.ranking import Pairs
from distillrank.runtime import Runtime
from distillrank.teachers import PrecomputedTeacher
from distillrank.validation import check_targets, compose

CPU = torch.device("cpu")
TRIPLES = "9.5\t1.25\tq1\tp1\tn1\n9.5\t-3.0\tq1\tp1\tn2\n4.0\t0.5\tq2\tp2\tn1\n"


@pytest.fixture
def triples(tmp_path: Path) -> Path:
    path = tmp_path / "teacher.tsv"
    path.write_text(TRIPLES, encoding="utf-8")
    return path


def _score(teacher, pairs: list[tuple[str, str]]) -> np.ndarray:
    """Score pairs the way the score stage does: de-duplicated id lists and index arrays."""
    uq = sorted({q for q, _ in pairs})
    ud = sorted({d for _, d in pairs})
    pair_q = np.array([uq.index(q) for q, _ in pairs])
    pair_p = np.array([ud.index(d) for _, d in pairs])
    texts_q, texts_p = [f"text of {q}" for q in uq], [f"text of {d}" for d in ud]
    return teacher.score_pairs(Pairs(texts_q, texts_p, pair_q, pair_p, qids=uq, docids=ud), Runtime(), progress=False)


def test_scores_are_looked_up_by_id(triples):
    teacher = PrecomputedTeacher(str(triples))
    pairs = [("q2", "n1"), ("q1", "n1"), ("q1", "p1"), ("q1", "n2"), ("q2", "p2")]
    scores = _score(teacher, pairs)
    assert scores.dtype == np.float32
    np.testing.assert_array_equal(scores, np.array([0.5, 1.25, 9.5, -3.0, 4.0], dtype=np.float32))


def test_missing_pairs_are_counted_and_named(triples):
    teacher = PrecomputedTeacher(str(triples))
    with pytest.raises(DataError) as err:
        _score(teacher, [("q1", "p1"), ("q2", "n2"), ("q3", "p1"), ("q1", "n1")])
    message = str(err.value)
    assert "2 of 4 pairs" in message and str(triples) in message
    assert "(qid='q2', docid='n2')" in message and "(qid='q3', docid='p1')" in message
    assert "mine the candidates from this same file" in message and "teacher model" in message
    teacher.check_pairs([("q1", "p1"), ("q2", "n1")])  # all present: no error
    with pytest.raises(DataError, match="1 of 2 pairs"):
        teacher.check_pairs([("q1", "p1"), ("q9", "x")])


def test_score_needs_the_ids(triples):
    teacher = PrecomputedTeacher(str(triples))
    with pytest.raises(DistillrankError, match="needs the qids= and docids="):
        teacher.score_pairs(Pairs(["a"], ["b"], np.array([0]), np.array([0])), Runtime(), progress=False)


def test_unknown_ids_name_the_first_line_and_the_count(triples):
    teacher = PrecomputedTeacher(str(triples))
    teacher.check_ids({"q1", "q2"}, {"p1", "p2", "n1", "n2"})  # all known
    with pytest.raises(DataError) as err:
        teacher.check_ids({"q1", "q2"}, {"p1", "p2", "n1"})
    message = str(err.value)
    assert f"{triples}:2: unknown document id 'n2'" in message
    assert "1 ids of this score file are unknown (0 query ids, 1 document ids)" in message
    with pytest.raises(DataError) as err:
        teacher.check_ids({"q1"}, {"p1", "n1"})
    message = str(err.value)
    assert f"{triples}:2: unknown document id 'n2'" in message  # line 2 comes before q2's line 3
    assert "3 ids of this score file are unknown (1 query ids, 2 document ids)" in message
    with pytest.raises(DataError, match=f"{triples}:1: unknown query id 'q1'"):
        teacher.check_ids(set(), {"p1", "p2", "n1", "n2"})


def test_fingerprint_is_the_content_and_the_format(tmp_path, triples):
    copy = tmp_path / "copy.tsv"
    copy.write_text(TRIPLES, encoding="utf-8")
    a = PrecomputedTeacher(str(triples))
    assert a.fingerprint() == PrecomputedTeacher(str(copy)).fingerprint()  # content, not the name
    assert a.fingerprint() == PrecomputedTeacher(str(triples), format="triples_tsv").fingerprint()
    jsonl = tmp_path / "same.jsonl"
    jsonl.write_text('{"qid": "q1", "docid": "p1", "score": 9.5}\n', encoding="utf-8")
    changed = tmp_path / "changed.tsv"
    changed.write_text(TRIPLES.replace("4.0", "4.5"), encoding="utf-8")
    assert (
        len(
            {
                a.fingerprint(),
                PrecomputedTeacher(str(jsonl)).fingerprint(),
                PrecomputedTeacher(str(changed)).fingerprint(),
            }
        )
        == 3
    )
    with pytest.raises(DataError, match="no such score file"):
        PrecomputedTeacher(str(tmp_path / "absent.tsv")).fingerprint()


def test_a_changed_file_is_read_again(triples):
    teacher = PrecomputedTeacher(str(triples))
    assert _score(teacher, [("q2", "p2")])[0] == 4.0
    triples.write_text(TRIPLES.replace("4.0", "4.25"), encoding="utf-8")
    st = triples.stat()
    os.utime(triples, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert _score(teacher, [("q2", "p2")])[0] == 4.25


def test_config_validates_and_instantiates(triples):
    cfg = compose(["teacher=precomputed", f"teacher.path={triples}"])
    check_targets(cfg)
    teacher = instantiate(cfg.teacher)
    assert isinstance(teacher, PrecomputedTeacher) and teacher.format == "auto"
    assert teacher.resolved_format() == "triples_tsv"
    unset = compose(["teacher=precomputed"])
    with pytest.raises(DistillrankError, match=r"teacher\.path is required \(\?\?\?\)"):
        check_targets(unset)
    bad = compose(["teacher=precomputed", f"teacher.path={triples}", "+teacher.normalise=zscore"])
    with pytest.raises(DistillrankError, match="teacher.normalise is not a parameter"):
        check_targets(bad)
