"""The mine stage builds candidates.parquet as columns (numpy / Arrow, no Python object per row):
the file is the one the former row-by-row loop wrote, to the byte, for every sampling and for
positives the first stage did not retrieve (rank 0, NaN score)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from distillrank.builders import components, training
from distillrank.mining.sampling import sample_negatives
from distillrank.stages import mine
from distillrank.workspace import stage_dir


def _row_by_row(cfg) -> pa.Table:
    """candidates.parquet as the stage built it before, one Python object per field of each row."""
    coll = components.collection(cfg)
    queries = training.train_queries(cfg)
    qrels = training.train_qrels(cfg)
    rows, scores, _ = components.mining_first_stage(cfg, coll, [text for _, text in queries], None)
    doc_ids = coll.doc_ids()
    rng = np.random.default_rng(cfg.seed)
    out: dict[str, list] = {"qid": [], "docid": [], "label": [], "rank": [], "first_stage_score": []}
    for i, (qid, _) in enumerate(queries):
        ranked = [doc_ids[r] for r in rows[i]]
        position = {d: r for r, d in enumerate(ranked)}
        judged = qrels.get(qid, {})
        positives = {d: rel for d, rel in judged.items() if rel > 0}
        excluded = set(positives) | {d for d, rel in judged.items() if rel < 0}
        picked = [
            (
                d,
                rel,
                0 if position.get(d) is None else position[d] + 1,
                float("nan") if position.get(d) is None else float(scores[i][position[d]]),
            )
            for d, rel in positives.items()
        ]
        for docid, rank in sample_negatives(
            ranked, excluded, cfg.mining.num_negatives, cfg.mining.sampling,
            cfg.mining.window_start, cfg.mining.window_end, rng,
        ):  # fmt: skip
            picked.append((docid, 0, rank, float(scores[i][rank - 1])))
        for docid, label, rank, score in picked:
            for name, value in zip(out, (qid, docid, label, rank, score), strict=True):
                out[name].append(value)
    types = [pa.string(), pa.string(), pa.int32(), pa.int32(), pa.float32()]
    return pa.table({name: pa.array(values, t) for (name, values), t in zip(out.items(), types, strict=True)})


@pytest.mark.parametrize(
    "extra",
    [
        [],
        ["mining.sampling=top"],
        ["mining.sampling=all"],
        ["mining.depth=1", "mining.window_start=1", "mining.window_end=1"],  # positives not retrieved
    ],
    ids=["window", "top", "all", "depth-1"],
)
def test_columnar_candidates_equal_the_row_by_row_file(make_cfg, tmp_path, extra):
    cfg = make_cfg(*extra, "workspace=" + str(tmp_path / "ws"))
    manifest = mine.run(cfg)
    want = tmp_path / "row_by_row.parquet"
    pq.write_table(_row_by_row(cfg), want)
    got = stage_dir(cfg, "mine") / mine.OUTPUT
    assert got.read_bytes() == want.read_bytes()
    table = pq.read_table(got)
    assert manifest.counts["rows"] == table.num_rows
    assert manifest.counts["negatives"] == int(np.sum(table["label"].to_numpy() == 0))
    if "mining.depth=1" in extra:
        assert np.isnan(table["first_stage_score"].to_numpy()).any()  # the case is exercised
