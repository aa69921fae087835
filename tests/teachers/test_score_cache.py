"""The score cache joined with integer keys gives what the dict it replaced gave: the last shard's
score of a pair cached twice, nothing for pairs of other experiments, legacy shards kept."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from distillrank.sharding import Share
from distillrank.teachers.cache import PairIndex, ScoreCache
from distillrank.workspace import seal_path


def _reference(cache: ScoreCache, qids: list[str], docids: list[str]) -> dict[tuple[str, str], float]:
    """What the dict-based cache held: every shard in name order, later rows overriding earlier ones."""
    held: dict[tuple[str, str], float] = {}
    for shard in sorted(cache.folder.glob("shard-*.parquet")):
        table = pq.read_table(shard)
        pairs = zip(table["qid"].to_pylist(), table["docid"].to_pylist(), strict=True)
        held.update(zip(pairs, table["score"].to_pylist(), strict=True))
    return {p: held[p] for p in zip(qids, docids, strict=True) if p in held}


def test_lookup_equals_the_dict_it_replaced(tmp_path):
    cache = ScoreCache(tmp_path / "scores")
    f32 = np.float32
    cache.add(["q1", "q1", "q2"], ["d1", "d2", "d1"], np.array([0.1, 0.2, 0.3], f32))
    # q2/d2 has both ids among the candidates but is not one; q9 is another experiment's query
    cache.add(["q2", "q9", "q1"], ["d2", "d1", "d1"], np.array([0.4, 0.5, 0.6], f32), Share(1, 2))
    legacy = cache.folder / "shard-1-1.parquet"  # written before seals were kept: still read
    pq.write_table(pa.table({"qid": ["q3"], "docid": ["d3"], "score": pa.array([0.7], pa.float32())}), legacy)
    candidates = pa.table(
        {"qid": ["q2", "q1", "q1", "q3", "q3", "q1"], "docid": ["d1", "d1", "d2", "d3", "d9", "d1"]}
    )
    index, position = PairIndex.of(candidates["qid"], candidates["docid"])
    assert index.keys.tolist() == sorted(index.keys.tolist()) and len(index.keys) == 5  # q1/d1 twice
    assert index.ids(index.keys) == (
        ["q1", "q2", "q1", "q3", "q3"],
        ["d1", "d1", "d2", "d3", "d9"],
    )  # (docid, qid)
    found, scores = cache.lookup(index)
    want = _reference(cache, candidates["qid"].to_pylist(), candidates["docid"].to_pylist())
    got = {
        (q, d): float(scores[position[i]])
        for i, (q, d) in enumerate(
            zip(candidates["qid"].to_pylist(), candidates["docid"].to_pylist(), strict=True)
        )
        if found[position[i]]
    }
    assert got == want and got[("q1", "d1")] == np.float32(0.6)  # the later shard's score
    assert ("q3", "d9") not in got and seal_path(legacy).exists()  # the legacy shard was read, then sealed
    names = [p.name for p in cache.folder.glob("shard-*.parquet")]
    assert len(cache.load()) == 7 and sum(n.endswith("-w1.parquet") for n in names) == 1  # worker 1's shard


def test_no_pairs_and_no_cache(tmp_path):
    index, position = PairIndex.of(pa.array([], pa.string()), pa.array([], pa.string()))
    found, scores = ScoreCache(tmp_path / "none").lookup(index)
    assert len(found) == len(scores) == len(position) == 0
    assert ScoreCache(tmp_path / "none").load().num_rows == 0
