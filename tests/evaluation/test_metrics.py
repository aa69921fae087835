"""compute_metrics (ir_measures) on hand-computed examples, and TREC run files."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from distillrank.errors import ConfigError, DataError
from distillrank.evaluation.metrics import compute_metrics, parse_measures
from distillrank.evaluation.runs import read_trec_run, write_trec_run

QRELS = {
    "q1": {"d1": 1, "d2": 2, "d3": 0},
    "q2": {"d5": 1},
}
RUN = {
    # q1 ranking: d3 (rel 0), d1 (rel 1), d4 (unjudged), d2 (rel 2)
    "q1": {"d3": 0.9, "d1": 0.8, "d4": 0.7, "d2": 0.6},
    # q2 ranking: d6, d7, d5 (rel 1)
    "q2": {"d6": 0.5, "d7": 0.4, "d5": 0.3},
}

# nDCG@10 = DCG / ideal DCG with gain = relevance and discount log2(rank + 1).
# q1: DCG = 1/log2(3) + 2/log2(5) = 0.630930 + 0.861353 = 1.492283;
#     ideal (2, 1, 0) = 2/log2(2) + 1/log2(3) = 2 + 0.630930 = 2.630930; nDCG = 0.567207.
# q2: DCG = 1/log2(4) = 0.5; ideal = 1/log2(2) = 1; nDCG = 0.5.
NDCG_Q1 = (1 / math.log2(3) + 2 / math.log2(5)) / (2 / math.log2(2) + 1 / math.log2(3))
NDCG_Q2 = (1 / math.log2(4)) / 1.0
# RR@10: q1's first relevant document is at rank 2 -> 1/2; q2's at rank 3 -> 1/3.
RR_Q1 = 1 / 2
RR_Q2 = 1 / 3


def test_hand_computed_ndcg_and_rr() -> None:
    assert NDCG_Q1 == pytest.approx(0.567207, abs=1e-6)
    aggregate, per_query = compute_metrics(QRELS, RUN, ["nDCG@10", "RR@10"])
    assert per_query["q1"]["nDCG@10"] == pytest.approx(NDCG_Q1, abs=1e-6)
    assert per_query["q2"]["nDCG@10"] == pytest.approx(NDCG_Q2, abs=1e-6)
    assert per_query["q1"]["RR@10"] == pytest.approx(RR_Q1, abs=1e-6)
    assert per_query["q2"]["RR@10"] == pytest.approx(RR_Q2, abs=1e-6)
    # Means over the 2 queries: nDCG (0.567207 + 0.5) / 2 = 0.533604; RR (1/2 + 1/3) / 2 = 5/12.
    assert aggregate["nDCG@10"] == pytest.approx((NDCG_Q1 + NDCG_Q2) / 2, abs=1e-6)
    assert aggregate["RR@10"] == pytest.approx(5 / 12, abs=1e-6)
    assert set(aggregate) == {"nDCG@10", "RR@10"}


def test_judged_query_missing_from_run_counts_as_zero() -> None:
    qrels = {**QRELS, "q3": {"d9": 1}}
    run = {**RUN, "qx": {"d1": 1.0}, "qy": {"d5": 1.0}}  # queries without judgments are ignored
    aggregate, per_query = compute_metrics(qrels, run, ["nDCG@10", "RR@10"])
    assert set(per_query) == {"q1", "q2", "q3"}
    assert per_query["q3"] == {"nDCG@10": 0.0, "RR@10": 0.0}
    # Mean over 3 judged queries: RR (1/2 + 1/3 + 0) / 3 = 5/18.
    assert aggregate["RR@10"] == pytest.approx(5 / 18, abs=1e-6)
    assert aggregate["nDCG@10"] == pytest.approx((NDCG_Q1 + NDCG_Q2) / 3, abs=1e-6)


def test_rr_cutoff() -> None:
    run = {"q2": {f"x{i}": 1.0 - i / 100 for i in range(10)} | {"d5": 0.0}}  # d5 at rank 11
    _, per_query = compute_metrics({"q2": {"d5": 1}}, run, ["RR@10", "RR"])
    assert per_query["q2"]["RR@10"] == 0.0
    assert per_query["q2"]["RR"] == pytest.approx(1 / 11, abs=1e-6)


@pytest.mark.parametrize("name", ["nDCG@ten", "NotAMeasure@10", "", "nDCG@10)"])
def test_unknown_measure_raises_config_error(name: str) -> None:
    with pytest.raises(ConfigError, match="evaluate.measures"):
        compute_metrics(QRELS, RUN, ["nDCG@10", name])


def test_parse_measures_names() -> None:
    assert [str(m) for m in parse_measures(["nDCG@10", "R@100", "AP"])] == ["nDCG@10", "R@100", "AP"]


# ----------------------------------------------------------------------------- TREC runs
def test_trec_run_round_trip(tmp_path: Path) -> None:
    run = {"q1": {"d1": 0.25, "d2": 3.5, "d3": -1.0}, "q2": {"d9": 1.0}}
    path = write_trec_run(tmp_path / "runs" / "bm25.trec", run, "bm25")
    assert path == tmp_path / "runs" / "bm25.trec"
    assert read_trec_run(path) == run
    assert [p.name for p in path.parent.iterdir()] == ["bm25.trec"]  # no temporary left


def test_trec_run_lines_are_ranked_by_descending_score(tmp_path: Path) -> None:
    run = {"q1": {"a": 0.1, "b": 0.9, "c": 0.5, "d": 0.5}}
    lines = write_trec_run(tmp_path / "r.trec", run, "tag").read_text().splitlines()
    assert lines == [
        "q1 Q0 b 1 0.900000 tag",
        "q1 Q0 c 2 0.500000 tag",  # ties broken by doc id
        "q1 Q0 d 3 0.500000 tag",
        "q1 Q0 a 4 0.100000 tag",
    ]


def test_read_trec_run_skips_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "r.trec"
    path.write_text("q1 Q0 d1 1 2.0 t\n\n   \nq1 Q0 d2 2 1.0 t\n")
    assert read_trec_run(path) == {"q1": {"d1": 2.0, "d2": 1.0}}


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [("q1 Q0 d2 2 1.0", "expected 6 columns"), ("q1 Q0 d2 2 high t", "is not a number")],
)
def test_malformed_line_raises_data_error_naming_file_and_line(
    tmp_path: Path, bad_line: str, message: str
) -> None:
    path = tmp_path / "bad.trec"
    path.write_text(f"q1 Q0 d1 1 2.0 t\n{bad_line}\n")
    with pytest.raises(DataError, match=message) as err:
        read_trec_run(path)
    assert f"{path}:2:" in str(err.value)
