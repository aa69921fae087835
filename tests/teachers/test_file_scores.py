"""The score stage's final pass without the pairs' strings: ``file_scores`` (the cache joined to a
candidates file read in batches) gives the scores ``teacher_scores`` gives for the table in memory,
bit for bit, and ``score.assemble`` writes the table the in-memory path wrote (de-noised, normalised)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from distillrank.errors import DistillrankError
from distillrank.mining import denoise
from distillrank.ranking import RankerKind
from distillrank.runtime import Runtime
from distillrank.stages import score
from distillrank.teachers import normalize
from distillrank.teachers.cache import PairFile, PairIndex, file_scores, teacher_scores
from distillrank.teachers.ensemble import EnsembleTeacher


class _Trivial:
    """A teacher scoring a pair from its texts' hashes: no model, deterministic."""

    kind = RankerKind.CROSS_ENCODER
    retrieves = False

    def __init__(self, salt: int) -> None:
        self.salt = salt

    def fingerprint(self, runtime=None) -> str:
        return f"trivial-teacher-{self.salt:04d}"

    def score_pairs(self, pairs, runtime, *, batch_size=None, progress=False):
        q = np.array([sum(map(ord, t)) for t in pairs.queries])[pairs.pair_q]
        p = np.array([sum(map(ord, t)) for t in pairs.passages])[pairs.pair_p]
        return (((q * 31 + p * self.salt) % 997) / 97.0 - 4.0).astype(np.float32)


class _Collection:
    fingerprint = "test-collection"


def _candidates(path, rng, row_group: int = 53) -> pa.Table:
    """120 queries of 1-15 passages among 300 (a few rows twice), in query order, with labels."""
    rows = {"qid": [], "docid": [], "label": [], "rank": []}
    for q in range(120):
        for r, d in enumerate(rng.choice(300, size=rng.integers(1, 16), replace=False)):
            rows["qid"].append(f"q{q:03d}")
            rows["docid"].append(f"d{d}")
            rows["label"].append(int(r == 0 and q % 7 != 0))  # some queries without a positive
            rows["rank"].append(r)
    for key in rows:  # a pair listed twice, as a fused mining can
        rows[key] += rows[key][:9]
    table = pa.table({**rows, "label": pa.array(rows["label"], pa.int64())})
    table = table.replace_schema_metadata({b"made_by": b"test"})
    pq.write_table(table, path, row_group_size=row_group)
    return table


def _score(teacher, pairs, cache_root, shard_size=40):
    """``file_scores`` of a :class:`PairFile`, else ``teacher_scores`` of a table."""
    common = dict(cache_root=cache_root, runtime=Runtime(), shard_size=shard_size, progress=False)
    args = (teacher, "fp", _Collection(), pairs, _QueryText(), lambda ids: [f"passage {d}" for d in ids])
    return (file_scores if isinstance(pairs, PairFile) else teacher_scores)(*args, **common)


class _QueryText(dict):
    def __missing__(self, key: str) -> str:
        return f"query {key}"


@pytest.mark.parametrize("kind", ["single", "ensemble-query", "ensemble-global"])
def test_file_scores_equal_the_in_memory_scores(tmp_path, kind):
    rng = np.random.default_rng(3)
    table = _candidates(tmp_path / "candidates.parquet", rng)
    if kind == "single":
        teacher = _Trivial(7)
    else:
        scope = kind.split("-")[1]
        teacher = EnsembleTeacher([_Trivial(7), _Trivial(11)], weights=[2, 1], scope=scope)
    # half the pairs cached by an earlier run (of the first member): a resumed or re-used cache
    first = teacher.members[0] if kind != "single" else teacher
    half = table.slice(0, table.num_rows // 2)
    _score(first, half.select(["qid", "docid"]), tmp_path / "cache-a")
    _score(first, half.select(["qid", "docid"]), tmp_path / "cache-b")

    want, want_scored, _, want_caches = _score(teacher, table.select(["qid", "docid"]), tmp_path / "cache-a")
    got = _score(teacher, PairFile(tmp_path / "candidates.parquet", batch_rows=37), tmp_path / "cache-b")
    assert got.scores.dtype == np.float32 and got.query_codes.dtype == np.int32
    np.testing.assert_array_equal(got.scores, want)  # bit for bit
    assert got.scored == want_scored > 0
    assert len(got.caches) == len(want_caches)
    # the query codes group the rows as the qids do
    qids = np.asarray(table["qid"].to_pylist())
    _, by_string = np.unique(qids, return_inverse=True)
    np.testing.assert_array_equal(got.query_codes, by_string)

    # a rerun reads every score from the cache, scores nothing and gives the same
    again = _score(teacher, PairFile(tmp_path / "candidates.parquet", batch_rows=1000), tmp_path / "cache-b")
    assert again.scored == 0
    np.testing.assert_array_equal(again.scores, want)


def test_codes_are_the_keys_of_every_row_in_file_order(tmp_path):
    table = _candidates(tmp_path / "candidates.parquet", np.random.default_rng(0))
    file = PairFile(tmp_path / "candidates.parquet", batch_rows=50)
    qids, docids = file.ids()
    index, position = PairIndex.of(table["qid"], table["docid"])
    assert qids.equals(index.qids) and docids.equals(index.docids)
    np.testing.assert_array_equal(file.codes(qids, docids), index.keys[position])
    fewer = qids.slice(1)  # a qid not among them: -1
    codes = file.codes(fewer, docids)
    assert (codes[np.asarray(table["qid"].to_pylist()) == qids[0].as_py()] == -1).all()
    assert (codes >= 0).sum() == sum(q != qids[0].as_py() for q in table["qid"].to_pylist())


def _reference(table: pa.Table, raw: np.ndarray, margin, relative, method, scope) -> pa.Table:
    """The table as the score stage built it in memory before: teacher appended, de-noised by the
    qid strings, the teacher column normalised per query (codes by first appearance) or globally."""
    out = table.append_column("teacher", pa.array(raw, pa.float32()))
    out, _ = denoise.denoise_table(out, margin, relative)
    if method != "none":
        import pyarrow.compute as pc

        groups = pc.index_in(table["qid"], value_set=pc.unique(table["qid"])).to_numpy()
        normalised = normalize.normalize(raw, groups, method, scope)
        column = out.schema.get_field_index("teacher")
        out = out.set_column(column, "teacher", pa.array(normalised, pa.float32()))
        out = out.append_column("teacher_raw", pa.array(raw, pa.float32()))
    return out


@pytest.mark.parametrize(
    ("margin", "relative", "method", "scope"),
    [
        (None, None, "none", "query"),
        (0.5, None, "zscore", "query"),
        (None, 0.6, "minmax", "global"),
        (0.0, 0.9, "zscore", "global"),
    ],
)
def test_assemble_writes_the_table_the_in_memory_path_wrote(tmp_path, margin, relative, method, scope):
    table = _candidates(tmp_path / "candidates.parquet", np.random.default_rng(5))
    rows = _score(_Trivial(13), PairFile(tmp_path / "candidates.parquet"), tmp_path / "cache")
    counts = score.assemble(
        tmp_path / "candidates.parquet",
        tmp_path / "scores.parquet",
        rows,
        margin,
        relative,
        method,
        scope,
        batch_rows=41,  # batches that cut queries in two
    )
    got = pq.read_table(tmp_path / "scores.parquet")
    want = _reference(table, rows.scores, margin, relative, method, scope)
    assert got.schema.names == want.schema.names
    assert got.schema.metadata == table.schema.metadata
    assert got.equals(want.cast(got.schema))
    denoised = denoise.denoise(
        table["qid"].to_pylist(), table["label"].to_numpy(), rows.scores, margin, relative
    )
    assert counts["negatives_dropped"] == int(denoised.dropped.sum())
    assert counts["queries_without_negatives_after_denoise"] == denoised.queries_without_negatives
    if margin is not None or relative is not None:
        assert counts["negatives_dropped"] > 0
    assert counts["teacher_score_mean"] == pytest.approx(float(np.mean(want["teacher"].to_numpy())), abs=1e-6)


def test_assemble_refuses_candidates_that_changed_under_it(tmp_path):
    _candidates(tmp_path / "candidates.parquet", np.random.default_rng(5))
    rows = _score(_Trivial(13), PairFile(tmp_path / "candidates.parquet"), tmp_path / "cache")
    short = pq.read_table(tmp_path / "candidates.parquet").slice(0, 10)
    pq.write_table(short, tmp_path / "other.parquet")
    with pytest.raises(DistillrankError, match="has 10 rows, scored"):
        score.assemble(
            tmp_path / "other.parquet", tmp_path / "out.parquet", rows, None, None, "none", "query"
        )


def test_denoise_groups_by_integer_codes_as_by_strings():
    rng = np.random.default_rng(1)
    codes = rng.integers(0, 30, 500)
    labels = (rng.random(500) < 0.1).astype(int)
    scores = rng.normal(size=500).astype(np.float32)
    by_codes = denoise.denoise(codes, labels, scores, margin=0.2, relative=0.5)
    by_strings = denoise.denoise([f"q{c}" for c in codes], labels, scores, margin=0.2, relative=0.5)
    np.testing.assert_array_equal(by_codes.dropped, by_strings.dropped)
    assert by_codes.dropped.any() and by_codes.counts() == by_strings.counts()
