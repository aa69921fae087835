"""Sharded scoring: workers of a torchrun job or of a SLURM array each score their share of the
missing pairs into the shared cache; the assembled scores.parquet is byte-identical to one process's,
and a killed or missing worker's share is scored again by its rerun, or by the final single run."""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch.multiprocessing as mp

from distillrank.builders import components
from distillrank.stages import mine, score
from distillrank.teachers import cache as teacher_cache
from distillrank.teachers.cache import ScoreCache
from distillrank.validation import compose
from distillrank.workspace import cache_dir, read_manifest, stage_dir

SHARDS = "score.shard_size=16"  # 87 candidate pairs: 6 blocks, 3 per worker of two


def _output(cfg) -> bytes:
    return (stage_dir(cfg, "score") / score.OUTPUT).read_bytes()


def _shards(cfg) -> list[Path]:
    return sorted((cache_dir(cfg) / "scores").glob("*/shard-*.parquet"))


@pytest.fixture
def single(make_cfg, tmp_path):
    """scores.parquet of one process, in a workspace of its own (pair by pair, 16 pairs a shard)."""

    def run(*extra: str) -> bytes:
        cfg = make_cfg(SHARDS, *extra, "workspace=" + str(tmp_path / "single"))
        mine.run(cfg)
        score.run(cfg)
        return _output(cfg)

    return run


def _array_task(monkeypatch, task: int, tasks: int) -> None:
    monkeypatch.setenv("DISTILLRANK_SHARD_ARRAY", "1")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", str(task))
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", str(tasks))


def _no_array(monkeypatch) -> None:
    monkeypatch.delenv("DISTILLRANK_SHARD_ARRAY", raising=False)
    monkeypatch.delenv("SLURM_ARRAY_TASK_ID", raising=False)
    monkeypatch.delenv("SLURM_ARRAY_TASK_COUNT", raising=False)


@pytest.mark.parametrize("cover", [2.0, 0.5], ids=["pair-by-pair", "corpus-embeddings"])
def test_slurm_array_tasks_then_one_run_equal_one_process(make_cfg, single, monkeypatch, cover):
    monkeypatch.setattr(teacher_cache, "COVER", cover)
    want = single()
    cfg = make_cfg(SHARDS)
    mine.run(cfg)
    for task in (1, 0):
        _array_task(monkeypatch, task, 2)
        assert score.run(cfg) is None  # an array task scores its share and writes no output
    assert not (stage_dir(cfg, "score") / score.OUTPUT).exists()
    assert read_manifest(stage_dir(cfg, "score")) is None
    names = [p.name for p in _shards(cfg)]
    # each worker's shards carry its index, so two workers never write the same name
    assert sum("-w0." in n for n in names) == 3 and sum("-w1." in n for n in names) == 3
    _no_array(monkeypatch)
    manifest = score.run(cfg)
    assert (
        manifest.counts["pairs_scored"] == 0 and manifest.counts["pairs_reused"] == manifest.counts["pairs"]
    )
    assert _output(cfg) == want


def test_a_killed_array_task_resumes_and_a_missing_share_is_scored_by_the_final_run(
    make_cfg, single, monkeypatch
):
    monkeypatch.setattr(teacher_cache, "COVER", 2.0)
    want = single()
    cfg = make_cfg(SHARDS)
    mine.run(cfg)
    teacher_cls = type(components.teacher(cfg))
    original = teacher_cls.score_pairs
    calls = {"n": 0}

    def dies_on_second_shard(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("killed")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(teacher_cls, "score_pairs", dies_on_second_shard)
    _array_task(monkeypatch, 0, 3)
    with pytest.raises(KeyboardInterrupt):
        score.run(cfg)
    assert len(_shards(cfg)) == 1  # its first shard is complete; nothing of the second was kept
    monkeypatch.setattr(teacher_cls, "score_pairs", original)
    scored: list[int] = []
    real_score_share = score.score_share

    def counted(*args, **kwargs):
        scored.append(real_score_share(*args, **kwargs)[0])
        return scored[-1], 0.0

    monkeypatch.setattr(score, "score_share", counted)
    assert score.run(cfg) is None  # the rerun of task 0 scores only its remaining block
    assert scored == [16]
    _array_task(monkeypatch, 2, 3)  # task 1 never runs
    score.run(cfg)
    _no_array(monkeypatch)
    manifest = score.run(cfg)
    assert manifest.counts["pairs_scored"] == 32  # task 1's blocks (6 blocks, 1 and 4), by the final run
    assert _output(cfg) == want


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun_worker(rank: int, world: int, overrides: list[str], port: int, out: Path) -> None:
    """One rank, with the variables torchrun sets; writes the key of the manifest it returned."""
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    import torch.distributed as dist

    try:
        manifest = score.run(compose(overrides))
        (out / f"rank{rank}").write_text(manifest.key)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


@pytest.mark.skipif(sys.platform != "linux", reason="gloo on a Linux CPU")
def test_two_torchrun_ranks_equal_one_process(tiny_args, single, tiny_cross_encoder, tmp_path):
    teacher = ["teacher=cross_encoder", f"teacher.model={tiny_cross_encoder}", "teacher.max_length=96"]
    want = single(*teacher)
    overrides = [*tiny_args, SHARDS, *teacher]
    cfg = compose(overrides)
    mine.run(cfg)
    out = tmp_path / "ranks"
    out.mkdir()
    mp.spawn(_torchrun_worker, args=(2, overrides, _free_port(), out), nprocs=2, join=True)
    manifest = read_manifest(stage_dir(cfg, "score"))
    assert (out / "rank0").read_text() == (out / "rank1").read_text() == manifest.key  # rank 1 returns it too
    # the pairs the ranks scored, summed over them (each was scored once, by one rank)
    assert manifest.counts["pairs_scored"] == manifest.counts["pairs"] == 87
    assert manifest.counts["pairs_reused"] == 0
    assert not list(stage_dir(cfg, "score").glob(".parts-*"))  # the ranks' parts are joined and gone
    names = [p.name for p in _shards(cfg)]
    assert sum("-w0." in n for n in names) == 3 and sum("-w1." in n for n in names) == 3
    assert _output(cfg) == want
    table = pq.read_table(stage_dir(cfg, "score") / score.OUTPUT)
    cached = ScoreCache(next((cache_dir(cfg) / "scores").iterdir())).load()
    lookup = dict(
        zip(
            zip(cached["qid"].to_pylist(), cached["docid"].to_pylist(), strict=True),
            cached["score"].to_pylist(),
            strict=True,
        )
    )
    got = [lookup[p] for p in zip(table["qid"].to_pylist(), table["docid"].to_pylist(), strict=True)]
    np.testing.assert_array_equal(np.asarray(got, np.float32), table["teacher"].to_numpy())


def _counting_worker(rank: int, world: int, overrides: list[str], port: int, out: Path) -> None:
    """A rank that records, while it scores its share, how many pairs it held at once and whether it
    indexed every pair (``PairIndex.of``), and in the final pass how many rows it coded."""
    held: list[int] = []
    whole_index: list[int] = []
    final: list[int] = []
    real_keys, real_of = teacher_cache.PairFile.keys, teacher_cache.PairIndex.of
    real_codes = teacher_cache.PairFile.codes
    real_share = score.score_share
    scoring = {"now": False}

    def codes(self, *args, **kwargs):
        got = real_codes(self, *args, **kwargs)
        if not scoring["now"]:  # the final pass: the rows this rank writes
            final.append(len(got))
        return got

    def keys(self, *args, **kwargs):
        got = real_keys(self, *args, **kwargs)
        if scoring["now"]:  # not rank 0's final assembly, which reads every pair's key
            held.append(len(got))
        return got

    def of(*args, **kwargs):
        if scoring["now"]:
            whole_index.append(1)
        return real_of(*args, **kwargs)

    def share_only(*args, **kwargs):
        scoring["now"] = True
        try:
            return real_share(*args, **kwargs)
        finally:
            scoring["now"] = False

    teacher_cache.PairFile.keys = keys
    teacher_cache.PairFile.codes = codes
    teacher_cache.PairIndex.of = staticmethod(of)
    score.score_share = share_only
    _torchrun_worker(rank, world, overrides, port, out)
    (out / f"held{rank}.json").write_text(
        json.dumps({"held": held, "whole_index": len(whole_index), "final": final})
    )


@pytest.mark.skipif(sys.platform != "linux", reason="gloo on a Linux CPU")
@pytest.mark.parametrize("teacher_kind", ["cross-encoder", "bi-encoder"])
def test_each_torchrun_rank_reads_only_its_share_of_the_candidates(
    tiny_args, single, tiny_cross_encoder, tmp_path, teacher_kind
):
    # the bi-encoder (the default teacher) scores through the corpus embeddings (its pairs cover
    # more than COVER of the corpus): the ranks encode the queries of every missing pair alike,
    # found from their shares (each query's first missing key, reduced over the ranks)
    teacher = []
    if teacher_kind == "cross-encoder":
        teacher = ["teacher=cross_encoder", f"teacher.model={tiny_cross_encoder}", "teacher.max_length=96"]
    want = single(*teacher)
    overrides = [*tiny_args, SHARDS, *teacher]
    cfg = compose(overrides)
    mine.run(cfg)
    pairs = pq.read_table(stage_dir(cfg, "mine") / mine.OUTPUT).num_rows  # 87, all distinct
    out = tmp_path / "ranks"
    out.mkdir()
    mp.spawn(_counting_worker, args=(2, overrides, _free_port(), out), nprocs=2, join=True)
    held = [json.loads((out / f"held{r}.json").read_text()) for r in range(2)]
    assert [h["whole_index"] for h in held] == [0, 0]  # no rank indexed every pair to score its share
    # first its queries' pairs (every pair on exactly one rank), then its blocks' passages' pairs
    assert sum(h["held"][0] for h in held) == pairs
    assert all(len(h["held"]) == 2 and max(h["held"]) < pairs for h in held)
    # the final pass: each rank coded the rows of its range only, the ranges covering the file
    assert all(len(h["final"]) == 1 and 0 < h["final"][0] < pairs for h in held)
    assert sum(h["final"][0] for h in held) == pairs
    names = [p.name for p in _shards(cfg)]
    assert sum("-w0." in n for n in names) == 3 and sum("-w1." in n for n in names) == 3
    embeddings = list((cache_dir(cfg) / "embeddings").glob("*/corpus.npy"))
    assert len(embeddings) == (teacher_kind == "bi-encoder")
    assert _output(cfg) == want


def _member(model, passage_max_length: int) -> str:
    return (
        "{_target_: distillrank.teachers.BiEncoderTeacher, "
        f"model: '{model}', passage_max_length: {passage_max_length}}}"
    )


@pytest.mark.skipif(sys.platform != "linux", reason="gloo on a Linux CPU")
def test_two_torchrun_ranks_denoise_normalise_and_combine_an_ensemble_as_one_process(
    tiny_args, tiny_bi_encoder, tmp_path
):
    # every statistic over all the queries (global z-scores of the members and of the output, the
    # relative de-noising's per-query top) is reduced over the ranks, each holding its rows only
    args = [a for a in tiny_args if not a.startswith("teacher.")]
    overrides = [
        *args,
        SHARDS,
        "teacher=ensemble",
        f"teacher.members=[{_member(tiny_bi_encoder, 64)},{_member(tiny_bi_encoder, 32)}]",
        "teacher.scope=global",
        "score.denoise_relative=0.9",
        "score.normalize=zscore",
        "score.normalize_scope=global",
    ]
    one = compose([*overrides, f"workspace={tmp_path / 'single'}"])
    mine.run(one)
    want_manifest = score.run(one)
    assert want_manifest.counts["negatives_dropped"] > 0
    cfg = compose(overrides)
    mine.run(cfg)
    out = tmp_path / "ranks"
    out.mkdir()
    mp.spawn(_torchrun_worker, args=(2, overrides, _free_port(), out), nprocs=2, join=True)
    assert _output(cfg) == _output(one)
    counts = read_manifest(stage_dir(cfg, "score")).counts
    for name in ("negatives_dropped", "queries_without_negatives_after_denoise", "pairs", "members"):
        assert counts[name] == want_manifest.counts[name]
    assert counts["pairs_scored"] == want_manifest.counts["pairs_scored"] == 2 * 87  # two members
