"""A rank that reads only its share of the candidates (``_share_of``) gets exactly the pairs the
block rule gives it with every pair in memory: same blocks, same order, whatever the cache holds,
duplicated rows, ranks or shard size; and it holds far fewer pairs than the file has."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from distillrank.sharding import Share
from distillrank.teachers import cache as teacher_cache
from distillrank.teachers.cache import PairFile, PairIndex, ScoreCache


def _candidates(path, rng) -> pa.Table:
    """300 queries of 1-12 passages among 400 (some rows twice), rows shuffled, in small row groups."""
    qids, docids = [], []
    for q in range(300):
        for d in rng.choice(400, size=rng.integers(1, 13), replace=False):
            qids.append(f"q{q}")
            docids.append(f"doc-{d}")
    qids += qids[:40]  # a pair listed twice
    docids += docids[:40]
    order = rng.permutation(len(qids))
    table = pa.table({"qid": pa.array(qids).take(order), "docid": pa.array(docids).take(order)})
    pq.write_table(table, path, row_group_size=97)
    return table


@pytest.mark.parametrize(("ranks", "shard_size"), [(2, 16), (3, 7), (4, 50)])
def test_each_rank_reads_its_share_and_gets_the_blocks_of_the_whole_index(
    tmp_path, monkeypatch, ranks, shard_size
):
    rng = np.random.default_rng(ranks)
    table = _candidates(tmp_path / "candidates.parquet", rng)
    cache = ScoreCache(tmp_path / "scores")
    cached = rng.choice(table.num_rows, size=table.num_rows // 3, replace=False)  # a resumed run
    cache.add(
        table["qid"].take(cached).to_pylist(),
        table["docid"].take(cached).to_pylist(),
        np.ones(len(cached), np.float32),
    )
    whole, _ = PairIndex.of(table["qid"], table["docid"])
    found, _ = cache.lookup(whole)
    missing = np.flatnonzero(~found)
    n_q = len(whole.qids)
    every = teacher_cache._Missing.of(whole, whole.keys[missing])
    first_key = np.full(n_q, np.iinfo(np.int64).max)
    np.minimum.at(first_key, whole.keys[missing] % n_q, whole.keys[missing])

    def reduce_array(share, values, how="sum"):
        """The all-reduces: what every rank's per-passage counts add up to, each query's first missing key."""
        if how == "sum":
            return np.bincount(whole.keys[missing] // n_q, minlength=len(whole.docids))
        return first_key

    monkeypatch.setattr(teacher_cache, "reduce_array", reduce_array)
    file = PairFile(tmp_path / "candidates.parquet", batch_rows=200)
    ids = PairIndex(*file.ids(), np.zeros(0, np.int64))
    assert ids.qids.equals(whole.qids) and ids.docids.equals(whole.docids)
    got = []
    for rank in range(ranks):
        share = Share.rank_of(rank, ranks)
        index, todo, seen = teacher_cache._share_of(file, ids, cache, share, shard_size, queries=True)
        # what a bi-encoder teacher needs of every worker's missing pairs, as from the whole index
        assert seen.count == every.count == len(missing)
        assert seen.docids().equals(every.docids()) and seen.qids() == every.qids()
        want = whole.keys[missing[share.owns(np.arange(len(missing)) // shard_size)]]
        np.testing.assert_array_equal(index.keys[todo], want)
        assert len(index.keys) < len(whole.keys)  # it never held every pair
        got.append(index.keys[todo])
    np.testing.assert_array_equal(
        np.sort(np.concatenate(got)), whole.keys[missing]
    )  # every missing pair once
