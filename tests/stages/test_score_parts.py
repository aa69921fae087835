"""The score stage's final pass split among ranks: each rank reads the cached scores of one row range
of the candidates (ranges that split no query), de-noises and normalises it with per-query
statistics reduced over the ranks, and writes a part; the parts joined are the file one process
writes, byte for byte. Here the ranks are threads and the reduction an in-process all-reduce, so
every split is checked in milliseconds; tests/stages/test_sharded_score.py runs gloo processes."""

from __future__ import annotations

import functools
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from distillrank.columns import group_cuts
from distillrank.mining import denoise
from distillrank.runtime import Runtime
from distillrank.stages import score
from distillrank.teachers import normalize
from distillrank.teachers.cache import PairFile, ScoreCache, file_scores, part_scores
from distillrank.teachers.ensemble import EnsembleTeacher
from tests.teachers.test_file_scores import _Collection, _QueryText, _Trivial

_OPS = {"sum": np.add, "min": np.minimum, "max": np.maximum}


class _Group:
    """``n`` threads standing for the ranks of a group: ``reduce_of(rank)`` is that rank's
    all-reduce (every rank gets the element-wise reduction of all the ranks' arrays)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.slots: list[np.ndarray | None] = [None] * n
        self.barrier = threading.Barrier(n, timeout=30)
        self.calls = [0] * n

    def reduce_of(self, rank: int):
        def reduce(values: np.ndarray, how: str) -> np.ndarray:
            self.calls[rank] += 1
            self.slots[rank] = np.array(values, copy=True)
            self.barrier.wait()
            out = functools.reduce(_OPS[how], self.slots)
            self.barrier.wait()  # no rank overwrites its slot before every rank has read them all
            return out

        return reduce

    def run(self, fn):
        """``fn(rank, reduce)`` on every rank at once; the results in rank order."""
        with ThreadPoolExecutor(self.n) as pool:
            futures = [pool.submit(fn, r, self.reduce_of(r)) for r in range(self.n)]
            return [f.result() for f in futures]


def _candidates(path, rng, interleaved: bool = False) -> pa.Table:
    """200 queries of 1-15 passages among 400, each query's rows together (as the mine stage writes
    them); ``interleaved``: the first rows listed again at the end, so the first query spans the file."""
    rows = {"qid": [], "docid": [], "label": []}
    for q in range(200):
        for r, d in enumerate(rng.choice(400, size=rng.integers(1, 16), replace=False)):
            rows["qid"].append(f"q{q:03d}")
            rows["docid"].append(f"d{d}")
            rows["label"].append(int(r == 0 and q % 7 != 0))  # some queries without a positive
    if interleaved:
        for key in rows:
            rows[key] += rows[key][:5]
    table = pa.table({**rows, "label": pa.array(rows["label"], pa.int64())})
    pq.write_table(table, path, row_group_size=97)
    return table


def _scored(tmp_path, teacher, interleaved: bool = False) -> PairFile:
    """The candidates file, every pair in the teacher's caches (as after the ranks' shares)."""
    path = tmp_path / "candidates.parquet"
    _candidates(path, np.random.default_rng(3), interleaved)
    pair_file = PairFile(path, batch_rows=64)
    file_scores(
        teacher, "fp-ensemble" if isinstance(teacher, EnsembleTeacher) else teacher.fingerprint(), _Collection(),
        pair_file, _QueryText(), lambda ids: [f"passage {d}" for d in ids], cache_root=tmp_path / "cache",
        runtime=Runtime(), shard_size=50, progress=False,
    )  # fmt: skip
    return pair_file


def _whole(tmp_path, teacher, pair_file, settings, batch_rows) -> bytes:
    fp = "fp-ensemble" if isinstance(teacher, EnsembleTeacher) else teacher.fingerprint()
    rows = file_scores(
        teacher, fp, _Collection(), pair_file, _QueryText(), lambda ids: [f"passage {d}" for d in ids],
        cache_root=tmp_path / "cache", runtime=Runtime(), shard_size=50, progress=False,
    )  # fmt: skip
    assert rows.scored == 0  # every pair was cached
    out = tmp_path / "whole.parquet"
    score.assemble(pair_file.path, out, rows, *settings, batch_rows=batch_rows)
    return out.read_bytes()


def _parts(tmp_path, teacher, pair_file, settings, batch_rows, ranks) -> tuple[bytes, list[range], list[dict]]:
    fp = "fp-ensemble" if isinstance(teacher, EnsembleTeacher) else teacher.fingerprint()
    ids = pair_file.ids()
    cuts = group_cuts(*pair_file.query_rows(ids[0]), pair_file.rows(), ranks)
    ranges = [range(cuts[r], cuts[r + 1]) for r in range(ranks)]

    def rank(r: int, reduce):
        part = part_scores(
            teacher, fp, _Collection(), pair_file, ids, ranges[r], cache_root=tmp_path / "cache",
            runtime=Runtime(), reduce=reduce,
        )  # fmt: skip
        assert part is not None and part.rows == ranges[r]
        out = tmp_path / f"part-{r}.parquet"
        counts = score.assemble(pair_file.path, out, part, *settings, batch_rows=batch_rows, reduce=reduce)
        return out, counts

    done = _Group(ranks).run(rank)
    joined = tmp_path / f"joined-{ranks}.parquet"
    score.join_parts([path for path, _ in done], joined, batch_rows=batch_rows)
    return joined.read_bytes(), ranges, [counts for _, counts in done]


SETTINGS = [
    (None, None, "none", "query"),
    (0.5, None, "zscore", "query"),
    (None, 0.6, "minmax", "global"),
    (0.0, 0.9, "zscore", "global"),
    (-0.2, 0.3, "minmax", "query"),
]


@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: "-".join(map(str, s)))
@pytest.mark.parametrize("ranks", [2, 3])
def test_ranks_write_the_file_one_process_writes(tmp_path, settings, ranks):
    teacher = _Trivial(13)
    pair_file = _scored(tmp_path, teacher)
    batch_rows = 128  # row groups that cut queries and ranges in two
    want = _whole(tmp_path, teacher, pair_file, settings, batch_rows)
    got, ranges, counts = _parts(tmp_path, teacher, pair_file, settings, batch_rows, ranks)
    assert all(len(r) > 100 for r in ranges)  # each rank has a share of the rows
    assert got == want  # the same bytes
    whole_counts = score.assemble(
        pair_file.path, tmp_path / "again.parquet", file_scores(
            teacher, teacher.fingerprint(), _Collection(), pair_file, _QueryText(), None,
            cache_root=tmp_path / "cache", runtime=Runtime(), shard_size=50, progress=False,
        ), *settings,
    )  # fmt: skip
    for c in counts:  # every rank returns the counts of the whole file
        assert c == pytest.approx(whole_counts, abs=1e-9)


def test_an_ensemble_normalised_over_every_query_combines_as_in_one_process(tmp_path):
    teacher = EnsembleTeacher([_Trivial(13), _Trivial(29)], [1.0, 2.0], normalize="zscore", scope="global")
    pair_file = _scored(tmp_path, teacher)
    settings = (None, 0.5, "minmax", "query")
    want = _whole(tmp_path, teacher, pair_file, settings, 1 << 20)
    got, ranges, _ = _parts(tmp_path, teacher, pair_file, settings, 1 << 20, 3)
    assert got == want


def test_interleaved_queries_are_never_split_between_ranks(tmp_path):
    teacher = _Trivial(13)
    pair_file = _scored(tmp_path, teacher, interleaved=True)
    settings = (0.5, None, "zscore", "query")
    want = _whole(tmp_path, teacher, pair_file, settings, 1 << 20)
    got, ranges, _ = _parts(tmp_path, teacher, pair_file, settings, 1 << 20, 2)
    # the first query's rows are at both ends: the only range that splits no query is the file
    assert [len(r) for r in ranges] == [pair_file.rows(), 0]
    assert got == want


def test_a_pair_missing_from_the_cache_makes_every_rank_give_up(tmp_path):
    teacher = _Trivial(13)
    pair_file = _scored(tmp_path, teacher)
    cache = ScoreCache.for_teacher(tmp_path / "cache", teacher.fingerprint(), _Collection.fingerprint)
    shard = sorted(cache.folder.glob("shard-*.parquet"))[-1]
    shard.unlink()  # a lost shard: its pairs (of one rank's range or another's) are not cached
    ids = pair_file.ids()
    cuts = group_cuts(*pair_file.query_rows(ids[0]), pair_file.rows(), 2)

    def rank(r: int, reduce):
        return part_scores(
            teacher, teacher.fingerprint(), _Collection(), pair_file, ids, range(cuts[r], cuts[r + 1]),
            cache_root=tmp_path / "cache", runtime=Runtime(), reduce=reduce,
        )  # fmt: skip

    assert _Group(2).run(rank) == [None, None]


def test_normalise_and_denoise_split_by_query_equal_the_whole_to_the_bit(monkeypatch):
    rng = np.random.default_rng(0)
    sizes = rng.integers(1, 40, 300)
    groups = np.repeat(np.arange(300), sizes)
    scores = (rng.normal(size=len(groups)) * 3 + 1).astype(np.float32)
    labels = (rng.random(len(groups)) < 0.15).astype(np.int64)
    n_q = 300
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    cuts = group_cuts(starts, starts + sizes - 1, len(groups), 3)
    import distillrank.columns as columns

    monkeypatch.setattr(columns, "ROW_CHUNK", 257)  # slices cut as for the whole, whichever part holds them
    for method in ("zscore", "minmax"):
        for scope in ("query", "global"):
            whole = normalize.normalize(scores, groups, method, scope, n_groups=n_q)

            def part(r, reduce, method=method, scope=scope):
                rows = slice(cuts[r], cuts[r + 1])
                return normalize.normalize(
                    scores[rows], groups[rows], method, scope, n_groups=n_q, reduce=reduce, first_row=cuts[r]
                )

            np.testing.assert_array_equal(np.concatenate(_Group(3).run(part)), whole)
    full = denoise.denoise(groups, labels, scores, 0.3, 0.5, n_groups=n_q)

    def flags(r, reduce):
        rows = slice(cuts[r], cuts[r + 1])
        return denoise.denoise(groups[rows], labels[rows], scores[rows], 0.3, 0.5, n_groups=n_q, reduce=reduce)

    parts = _Group(3).run(flags)
    np.testing.assert_array_equal(np.concatenate([p.dropped for p in parts]), full.dropped)
    assert all(p.queries_without_negatives == full.queries_without_negatives for p in parts)
    assert full.dropped.any() and full.queries_without_negatives > 0


def test_join_parts_writes_the_bytes_of_one_write(tmp_path):
    rng = np.random.default_rng(2)
    table = pa.table({"qid": [f"q{i // 7}" for i in range(1000)], "x": rng.normal(size=1000).astype(np.float32)})
    pq.write_table(table, tmp_path / "whole.parquet", row_group_size=300)
    parts = []
    for i, (a, b) in enumerate([(0, 123), (123, 123), (123, 777), (777, 1000)]):  # one empty
        pq.write_table(table.slice(a, b - a), tmp_path / f"p{i}.parquet", row_group_size=50)
        parts.append(tmp_path / f"p{i}.parquet")
    score.join_parts(parts, tmp_path / "joined.parquet", batch_rows=300)
    assert (tmp_path / "joined.parquet").read_bytes() == (tmp_path / "whole.parquet").read_bytes()
    assert pq.ParquetFile(tmp_path / "joined.parquet").metadata.num_row_groups == 4
