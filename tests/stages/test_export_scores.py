"""export-scores on the tiny pipeline: every format reads back as teacher=precomputed with the same scores."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from distillrank.errors import ArtifactError, ConfigError, DataError
from distillrank.stages import export_scores, mine, score
from distillrank.teachers.score_files import read_scores
from distillrank.validation import compose
from distillrank.workspace import stage_dir


def _scores(cfg):
    return pq.read_table(stage_dir(cfg, "score") / score.OUTPUT).to_pandas()


@pytest.fixture
def scored(make_cfg):
    """The tiny experiment mined and scored by the (tiny bi-encoder) teacher model."""
    cfg = make_cfg("experiment=model")
    mine.run(cfg)
    score.run(cfg)
    return cfg


def _precomputed(tiny_args, path, *extra):
    """The tiny config with teacher=precomputed reading ``path`` (the model teacher's keys left out)."""
    args = [a for a in tiny_args if not a.startswith("teacher.")]
    return compose([*args, "teacher=precomputed", f"teacher.path={path}", *extra])


@pytest.mark.parametrize("fmt, ext", [("trec", "trec"), ("jsonl", "jsonl"), ("triples_tsv", "tsv")])
def test_exported_scores_reimport_as_the_same_teacher_scores(scored, tiny_args, fmt, ext):
    path = export_scores.run(scored, fmt, None)
    assert path == stage_dir(scored, "score") / f"teacher_scores.{ext}" and path.is_file()
    original = _scores(scored)
    back = read_scores(path)
    assert back.format == fmt and len(back) == len(original)  # every query has positives and negatives

    cfg = _precomputed(tiny_args, path, f"experiment=from_{fmt}")
    mine.run(cfg)
    manifest = score.run(cfg)
    assert manifest.counts["pairs_scored"] == len(original)
    reimported = _scores(cfg)
    assert list(zip(reimported.qid, reimported.docid, strict=True)) == list(
        zip(original.qid, original.docid, strict=True)
    )
    np.testing.assert_array_equal(reimported["teacher"].to_numpy(), original["teacher"].to_numpy())


def test_export_to_a_named_path_and_format_from_its_extension(scored, tmp_path):
    out = export_scores.run(scored, "auto", tmp_path / "out" / "scores.jsonl")
    assert out == tmp_path / "out" / "scores.jsonl" and read_scores(out).format == "jsonl"
    assert export_scores.run(scored, "tsv", tmp_path / "t.txt") == tmp_path / "t.txt"
    assert read_scores(tmp_path / "t.txt").format == "triples_tsv"
    with pytest.raises(ConfigError, match="cannot tell the format"):
        export_scores.run(scored, "auto", tmp_path / "scores.parquet")
    with pytest.raises(ConfigError, match="unknown score-file format"):
        export_scores.run(scored, "csv", None)


def test_export_needs_a_current_score_stage(make_cfg):
    cfg = make_cfg("experiment=unscored")
    with pytest.raises(ArtifactError, match="distillrank score"):
        export_scores.run(cfg, "trec", None)


def test_triples_leave_out_dropped_negatives(make_cfg, tmp_path):
    cfg = make_cfg("experiment=denoised", "score.denoise_relative=0.95")
    mine.run(cfg)
    score.run(cfg)
    table = _scores(cfg)
    dropped = table[table.dropped]
    assert len(dropped) > 0  # the tiny random teacher scores candidates close together
    back = read_scores(export_scores.run(cfg, "triples_tsv", tmp_path / "t.tsv"))
    assert not any((q, d) in back for q, d in zip(dropped.qid, dropped.docid, strict=True))
    # TREC keeps every pair, dropped ones included
    assert len(read_scores(export_scores.run(cfg, "trec", tmp_path / "r.trec"))) == len(table)


def test_raw_scores_are_exported_when_scores_are_normalised(make_cfg, tiny_args, tmp_path):
    cfg = make_cfg("experiment=normalised", "score.normalize=zscore")
    if "teacher_raw" not in (mine.run(cfg), score.run(cfg), _scores(cfg))[2]:
        pytest.skip("this score stage keeps no teacher_raw column")
    table = _scores(cfg)
    raw = read_scores(export_scores.run(cfg, "trec", tmp_path / "raw.trec"))
    normalised = read_scores(export_scores.run(cfg, "trec", tmp_path / "norm.trec", normalized=True))
    for row in table.itertuples():
        assert np.float32(raw.get(row.qid, row.docid)) == row.teacher_raw
        assert np.float32(normalised.get(row.qid, row.docid)) == row.teacher
    # the raw scores re-imported with the same normalisation give the same teacher column
    again = _precomputed(
        tiny_args, tmp_path / "raw.trec", "experiment=renormalised", "score.normalize=zscore"
    )
    mine.run(again)
    score.run(again)
    np.testing.assert_array_equal(_scores(again)["teacher"].to_numpy(), table["teacher"].to_numpy())


def test_a_file_from_another_collection_fails_on_its_first_unknown_id(make_cfg, tiny_args, tmp_path):
    path = tmp_path / "other.trec"
    path.write_text("q-other Q0 d-other 1 3.5 x\n", encoding="utf-8")
    cfg = _precomputed(tiny_args, path, "experiment=other")
    mine.run(cfg)
    with pytest.raises(DataError, match=rf"{path}:1: unknown query id 'q-other'"):
        score.run(cfg)


def test_pairs_missing_from_the_file_fail_with_the_hint(scored, tiny_args, tmp_path):
    full = export_scores.run(scored, "trec", tmp_path / "full.trec")
    lines = full.read_text().splitlines()
    path = tmp_path / "partial.trec"
    path.write_text("\n".join(lines[: len(lines) // 2]) + "\n", encoding="utf-8")
    cfg = _precomputed(tiny_args, path, "experiment=partial")
    mine.run(cfg)
    with pytest.raises(DataError, match=r"pairs to score are not in the score file .*mine the candidates"):
        score.run(cfg)
