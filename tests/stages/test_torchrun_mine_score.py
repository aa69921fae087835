"""mine then score under torchrun (two gloo ranks on the CPU) with a dense first stage and a
bi-encoder teacher: the ranks encode each corpus once between them (each a part), rank 0 alone
writes the stages' outputs, and candidates.parquet and scores.parquet are byte-identical to one
process's."""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

import pytest
import torch.multiprocessing as mp

from distillrank.mining import dense as mining_dense
from distillrank.models.bi_encoder import BiEncoder
from distillrank.stages import mine, score
from distillrank.teachers import cache as teacher_cache
from distillrank.validation import compose
from distillrank.workspace import read_manifest, stage_dir

CHUNK = 16  # corpus rows per encoding block: the 60 passages are 4 blocks, 2 a rank
DENSE = [
    "mining=dense",
    "mining.depth=30",
    "mining.window_start=2",
    "mining.window_end=30",
    "score.shard_size=16",
]


def _patch(monkeypatch_setattr, counts: dict[str, int]) -> None:
    """Small blocks, the teacher through its corpus embeddings, and a count of the passages each
    model encodes (the corpus encoding is the only passage encoding of these two stages)."""
    monkeypatch_setattr(teacher_cache, "COVER", 0.0)
    monkeypatch_setattr(teacher_cache, "CORPUS_CHUNK", CHUNK)
    monkeypatch_setattr(mining_dense, "_CHUNK", CHUNK)
    original = BiEncoder.encode

    def counted(self, texts, kind="passage", *args, **kwargs):
        if kind == "passage":
            counts["passages"] = counts.get("passages", 0) + len(texts)
        return original(self, texts, kind, *args, **kwargs)

    monkeypatch_setattr(BiEncoder, "encode", counted)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, overrides: list[str], port: int, out: Path) -> None:
    """One rank, with the variables torchrun sets: mine, then score; writes what it returned and
    how many passages it encoded."""
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    counts: dict[str, int] = {}
    _patch(setattr, counts)
    try:
        cfg = compose(overrides)
        mined = mine.run(cfg)
        scored = score.run(cfg)
        result = {"mine": mined.key, "score": scored.key, **counts}
        (out / f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


@pytest.mark.skipif(sys.platform != "linux", reason="gloo on a Linux CPU")
def test_two_torchrun_ranks_mine_and_score_as_one_process_encoding_each_corpus_once(
    tiny_args, tmp_path, monkeypatch
):
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the ranks run
    single_counts: dict[str, int] = {}
    try:
        with monkeypatch.context() as patch:
            _patch(patch.setattr, single_counts)
            single = compose([*tiny_args, *DENSE, f"workspace={tmp_path / 'single'}"])
            mine.run(single)
            score.run(single)
    finally:
        torch.set_num_threads(threads)
    n_docs = 60
    assert single_counts["passages"] == 2 * n_docs  # the mining model's corpus, then the teacher's

    overrides = [*tiny_args, *DENSE]
    out = tmp_path / "ranks"
    out.mkdir()
    mp.spawn(_worker, args=(2, overrides, _free_port(), out), nprocs=2, join=True)
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    cfg = compose(overrides)
    for stage, output in (("mine", mine.OUTPUT), ("score", score.OUTPUT)):
        manifest = read_manifest(stage_dir(cfg, stage))
        assert [r[stage] for r in ranks] == [manifest.key] * 2  # rank 1 returns rank 0's manifest
        assert (stage_dir(cfg, stage) / output).read_bytes() == (
            stage_dir(single, stage) / output
        ).read_bytes()
    # each corpus encoded once in all, two of its four blocks by each rank: rows 0-31 and 32-59
    assert [r.get("passages", 0) for r in ranks] == [2 * 32, 2 * 28]
    assert not read_manifest(stage_dir(cfg, "mine")).counts["embeddings_cached"]  # rank 0 encoded its part


@pytest.mark.skipif(sys.platform != "linux", reason="gloo on a Linux CPU")
def test_two_torchrun_ranks_mine_under_hardware_auto(tiny_args, tmp_path):
    """hardware=auto (the default) under torchrun: every rank encodes its part of the corpus with
    the runtime rank 0's calibration chose for the mining encoder, not the unresolved ``auto``."""
    overrides = [*tiny_args, *DENSE, "hardware=auto", "hardware.max_forward_texts=null"]
    out = tmp_path / "ranks"
    out.mkdir()
    mp.spawn(_worker, args=(2, overrides, _free_port(), out), nprocs=2, join=True)
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    cfg = compose(overrides)
    mined = read_manifest(stage_dir(cfg, "mine"))
    assert [r["mine"] for r in ranks] == [mined.key] * 2
    # rank 1 encoded its two blocks of each corpus (the mining encoder's, then the teacher's) and
    # calibrated nothing; rank 0 its blocks and the calibrations' batches
    assert ranks[1]["passages"] == 2 * 28 and ranks[0]["passages"] > 2 * 32
    assert mined.counts["rows"] > 0 and not mined.counts["embeddings_cached"]
