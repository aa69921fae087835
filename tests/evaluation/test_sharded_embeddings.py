"""Corpus embeddings encoded by ranks (torchrun): each rank a contiguous share of the blocks into
one memory-mapped matrix, sealed by rank 0; the matrix equals the single-process one to the bit,
and an interrupted encoding resumes with the blocks that are missing."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from omegaconf import OmegaConf

from distillrank.data.collection import load_collection
from distillrank.evaluation import dense
from distillrank.evaluation.dense import (
    EMBEDDINGS_FILE,
    EMBEDDINGS_META,
    cached_corpus_embeddings,
    encode_corpus,
    partial_dir,
)
from distillrank.models.bi_encoder import BiEncoder
from distillrank.runtime import Runtime
from distillrank.sharding import WHOLE, Share, from_env
from distillrank.workspace import SEAL, usable_entry

CHUNK, BATCH = 7, 4  # 60 passages: 9 blocks, the last of 4


def _collection(tiny_beir: Path, cache: Path):
    cfg = OmegaConf.create(
        {
            "name": "tiny", "source": "beir", "path": str(tiny_beir), "irds_id": None, "root": None,
            "train_split": "train", "dev_split": None, "test_split": "test", "max_train_queries": None,
            "max_test_queries": None, "max_docs": None,
        }
    )  # fmt: skip
    return load_collection(cfg, cache)


def _embed(tiny_beir: Path, model: Path, cache: Path, share: Share = WHOLE):
    torch.set_num_threads(1)
    coll = _collection(tiny_beir, cache)
    return cached_corpus_embeddings(
        BiEncoder.load(model), coll, cache, "model-fp", BATCH, CHUNK, Runtime(), progress=False, share=share
    )


def _worker(rank: int, world: int, tiny_beir: Path, model: Path, cache: Path, grouped: bool) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))  # as torchrun sets them
    if grouped:
        dist.init_process_group(
            "gloo", init_method=f"file://{cache / 'rendezvous'}", rank=rank, world_size=world
        )
    try:
        share = from_env()
        assert share.grouped == grouped
        matrix, rate, folder = _embed(tiny_beir, model, cache, share)
        np.save(cache / f"rank{rank}.npy", np.asarray(matrix))
        (cache / f"rank{rank}.json").write_text(json.dumps({"rate": rate, "folder": str(folder)}))
    finally:
        if grouped:
            dist.destroy_process_group()


@pytest.fixture(scope="module")
def single(tiny_beir: Path, tiny_bi_encoder: Path, tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    """The single-process matrix, checked against a plain encode_corpus of the whole corpus (the
    encoding as it was before blocks were marked and shared)."""
    cache = tmp_path_factory.mktemp("single")
    matrix, rate, folder = _embed(tiny_beir, tiny_bi_encoder, cache)
    assert rate is not None
    assert sorted(p.name for p in folder.iterdir()) == sorted([EMBEDDINGS_FILE, EMBEDDINGS_META, SEAL])
    assert not partial_dir(folder, CHUNK, BATCH).exists()
    plain, _ = encode_corpus(
        BiEncoder.load(tiny_bi_encoder), _collection(tiny_beir, cache), cache / "plain.npy", BATCH, CHUNK, Runtime(),
        progress=False,
    )  # fmt: skip
    assert np.array_equal(np.asarray(matrix), np.asarray(plain))
    again, rate, _ = _embed(tiny_beir, tiny_bi_encoder, cache)  # reused
    assert rate is None and np.array_equal(np.asarray(again), np.asarray(matrix))
    return np.array(matrix)


@pytest.mark.parametrize("grouped", [True, False], ids=["gloo group", "files, no group"])
def test_two_ranks_encode_the_single_process_matrix(
    tiny_beir: Path, tiny_bi_encoder: Path, tmp_path: Path, single: np.ndarray, grouped: bool
) -> None:
    mp.spawn(_worker, args=(2, tiny_beir, tiny_bi_encoder, tmp_path, grouped), nprocs=2, join=True)
    folders = set()
    for rank in (0, 1):
        assert np.array_equal(np.load(tmp_path / f"rank{rank}.npy"), single), f"rank {rank}"
        info = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert info["rate"] is not None  # each rank encoded its share
        folders.add(info["folder"])
    (folder,) = folders
    assert usable_entry(folder)  # sealed by rank 0, its checksums intact
    assert not partial_dir(Path(folder), CHUNK, BATCH).exists()
    assert np.array_equal(np.load(Path(folder) / EMBEDDINGS_FILE), single)


def test_a_rerun_after_a_killed_rank_encodes_only_the_missing_blocks(
    tiny_beir: Path,
    tiny_bi_encoder: Path,
    tmp_path: Path,
    single: np.ndarray,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    encoded: list[int] = []
    original = BiEncoder.encode

    def counted(self, texts, *args, **kwargs):
        if len(encoded) == 2 and kill[0]:
            raise KeyboardInterrupt("rank killed")
        encoded.append(len(texts))
        return original(self, texts, *args, **kwargs)

    kill = [True]
    monkeypatch.setattr(BiEncoder, "encode", counted)
    # rank 1 of 2, without a group: its share is blocks 4..8 (rows 28..59); killed after two blocks
    with pytest.raises(KeyboardInterrupt):
        _embed(tiny_beir, tiny_bi_encoder, tmp_path, Share.rank_of(1, 2))
    assert encoded == [7, 7]
    kill[0] = False
    encoded.clear()
    matrix, rate, folder = _embed(tiny_beir, tiny_bi_encoder, tmp_path)  # the rerun, here one process
    assert sum(encoded) == 60 - 14 and rate is not None  # the two marked blocks were kept
    assert np.array_equal(np.asarray(matrix), single)
    assert usable_entry(folder) and not partial_dir(folder, CHUNK, BATCH).exists()


def test_partial_matrix_of_another_shape_is_refused(tmp_path: Path) -> None:
    partial = tmp_path / ".entry.partial-7-4"
    dense._open_partial(partial, (5, 3))
    with pytest.raises(Exception, match="remove it"):
        dense._open_partial(partial, (6, 3))
