"""Dense and hybrid mining: RRF arithmetic, ``sampling=all``, the embedding cache, re-mining with a student."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from distillrank import pipeline
from distillrank.builders import components
from distillrank.errors import ConfigError
from distillrank.mining.fusion import rrf_fuse
from distillrank.mining.sampling import sample_negatives
from distillrank.models.bi_encoder import BiEncoder
from distillrank.stages import mine, train
from distillrank.workspace import cache_dir, read_manifest, stage_dir

DENSE = (
    "mining=dense",
    "mining.depth=30",
    "mining.window_start=2",
    "mining.window_end=30",
    "mining.num_negatives=4",
)


# --------------------------------------------------------------------------- pure functions
def test_rrf_hand_example() -> None:
    # k = 60. List A: a, b, c. List B: c, a, d.
    # a: 1/(60+1) + 1/(60+2) = 0.016393 + 0.016129 = 0.032522
    # c: 1/(60+3) + 1/(60+1) = 0.015873 + 0.016393 = 0.032266
    # b: 1/(60+2)            = 0.016129
    # d: 1/(60+3)            = 0.015873
    fused = rrf_fuse([["a", "b", "c"], ["c", "a", "d"]], k=60)
    assert [d for d, _ in fused] == ["a", "c", "b", "d"]
    expected = {"a": 1 / 61 + 1 / 62, "c": 1 / 63 + 1 / 61, "b": 1 / 62, "d": 1 / 63}
    for doc, score in fused:
        assert score == pytest.approx(expected[doc])
    assert rrf_fuse([["a", "b", "c"], ["c", "a", "d"]], k=60, depth=2) == fused[:2]


def test_rrf_small_k_and_ties() -> None:
    # k = 0: x = 1/1 + 1/2 = 1.5, y = 1/2 + 1/1 = 1.5 (tie, first appearance wins), z = 1/3.
    fused = rrf_fuse([["x", "y", "z"], ["y", "x"]], k=0)
    assert fused == [("x", 1.5), ("y", 1.5), ("z", pytest.approx(1 / 3))]
    with pytest.raises(ConfigError, match="rrf_k"):
        rrf_fuse([["x"]], k=-1)


def test_sampling_all_keeps_every_non_positive_of_the_window() -> None:
    ranked = [f"d{i}" for i in range(1, 21)]  # d<i> at rank i
    positives = {"d3", "d7"}
    picked = sample_negatives(ranked, positives, 2, "all", 2, 10, np.random.default_rng(0))
    assert picked == [(f"d{r}", r) for r in (2, 4, 5, 6, 8, 9, 10)]  # num_negatives=2 ignored
    again = sample_negatives(ranked, positives, 99, "all", 2, 10, np.random.default_rng(5))
    assert again == picked


# --------------------------------------------------------------------------- the mine stage
def _candidates(cfg):
    return pq.read_table(stage_dir(cfg, "mine") / mine.OUTPUT).to_pandas()


def _direct_dense_topk(cfg, model: Path, k: int) -> dict[str, list[tuple[str, float]]]:
    """Top-k (docid, score) by a direct BiEncoder encode and dot product over the whole tiny collection."""
    coll = components.collection(cfg)
    encoder = BiEncoder.load(model)
    queries = coll.split_queries(cfg.data.train_split)
    docs = encoder.encode(coll.passage_texts(range(len(coll.corpus))), "passage")
    q = encoder.encode([t for _, t in queries], "query")
    top = torch.topk(q @ docs.T, k, dim=1)
    doc_ids = coll.doc_ids()
    return {
        qid: [(doc_ids[r], s) for r, s in zip(top.indices[i].tolist(), top.values[i].tolist(), strict=True)]
        for i, (qid, _) in enumerate(queries)
    }


def test_dense_mining_follows_the_bi_encoder_ranking(make_cfg, tiny_bi_encoder) -> None:
    cfg = make_cfg(*DENSE, f"mining.model={tiny_bi_encoder}", "mining.sampling=all")
    manifest = mine.run(cfg)
    assert manifest.config["method"] == "dense" and manifest.counts["embeddings_cached"] is False
    assert "mining_model" in manifest.inputs
    got = _candidates(cfg)
    want = _direct_dense_topk(cfg, tiny_bi_encoder, 30)
    negatives = got[got.label == 0]
    assert len(negatives) > 0
    for qid, rows in negatives.groupby("qid"):
        ranked = [d for d, _ in want[qid]]
        positives = set(got[(got.qid == qid) & (got.label > 0)].docid)
        # sampling=all: every non-positive at ranks 2..30 of the dense ranking, at its dense rank
        expected = [(d, r) for r, d in enumerate(ranked, start=1) if r >= 2 and d not in positives]
        assert list(zip(rows.docid, rows["rank"], strict=True)) == expected
        direct = dict(want[qid])
        np.testing.assert_allclose(
            rows.first_stage_score, [direct[d] for d in rows.docid], rtol=1e-5, atol=1e-5
        )
    folders = list((cache_dir(cfg) / "embeddings").iterdir())
    assert len(folders) == 1 and (folders[0] / "corpus.npy").is_file()


def test_embedding_cache_is_reused(make_cfg, tiny_bi_encoder, monkeypatch) -> None:
    first = make_cfg(*DENSE, f"mining.model={tiny_bi_encoder}", "experiment=a")
    mine.run(first)
    original = BiEncoder.encode

    def queries_only(self, texts, kind="passage", *args, **kwargs):
        if kind == "passage":
            raise AssertionError("the corpus was re-encoded")
        return original(self, texts, kind, *args, **kwargs)

    monkeypatch.setattr(BiEncoder, "encode", queries_only)
    second = make_cfg(*DENSE, f"mining.model={tiny_bi_encoder}", "experiment=b", "mining.num_negatives=6")
    manifest = mine.run(second)
    assert manifest.counts["embeddings_cached"] is True
    a, b = _candidates(first), _candidates(second)
    assert set(a[a.label > 0].qid) == set(b[b.label > 0].qid)
    # a different passage length is a different matrix: it must be encoded
    with pytest.raises(AssertionError, match="re-encoded"):
        mine.run(
            make_cfg(
                *DENSE, f"mining.model={tiny_bi_encoder}", "experiment=c", "mining.passage_max_length=16"
            )
        )


def test_hybrid_fuses_bm25_and_dense(make_cfg, tiny_bi_encoder) -> None:
    cfg = make_cfg(
        "mining=hybrid", f"mining.model={tiny_bi_encoder}", "mining.depth=10", "mining.window_start=1",
        "mining.window_end=10", "mining.sampling=all", "mining.rrf_k=60",
    )  # fmt: skip
    manifest = mine.run(cfg)
    assert manifest.config["method"] == "hybrid"
    coll = components.collection(cfg)
    queries = coll.split_queries(cfg.data.train_split)
    bm_rows, _ = components.bm25_index(cfg, coll).search([t for _, t in queries], 10)
    dense = _direct_dense_topk(cfg, tiny_bi_encoder, 10)
    doc_ids = coll.doc_ids()
    got = _candidates(cfg)
    for i, (qid, _) in enumerate(queries):
        lexical = [doc_ids[r] for r in bm_rows[i] if r >= 0]
        fused = rrf_fuse([lexical, [d for d, _ in dense[qid]]], k=60, depth=10)
        rows = got[(got.qid == qid)]
        retrieved = rows[rows["rank"] > 0].sort_values("rank")
        want = [(d, r, s) for r, (d, s) in enumerate(fused, start=1)]
        assert [(d, r) for d, r, _ in want if d in set(retrieved.docid)] == list(
            zip(retrieved.docid, retrieved["rank"], strict=True)
        )
        np.testing.assert_allclose(
            retrieved.first_stage_score, [s for d, _, s in want if d in set(retrieved.docid)], rtol=1e-5
        )
        # every fused candidate is there: as a negative, or as a positive
        assert {d for d, _ in fused} == set(retrieved.docid)
    # both retrievers contribute: some fused candidates come from one list only
    assert (got.first_stage_score < 2 / 61 - 1e-7).any() and (got.first_stage_score > 1 / 61 + 1e-7).any()


def test_bad_methods_and_retrievers_fail(make_cfg, tiny_bi_encoder) -> None:
    with pytest.raises(ConfigError, match="mining.method"):
        mine.run(make_cfg("mining.method=splade"))
    with pytest.raises(ConfigError, match="mining.retrievers"):
        mine.run(
            make_cfg("mining=hybrid", f"mining.model={tiny_bi_encoder}", "mining.retrievers=[bm25,colbert]")
        )
    with pytest.raises(ConfigError, match="expected distinct retrievers"):  # names are valid, one is twice
        mine.run(make_cfg("mining=hybrid", f"mining.model={tiny_bi_encoder}", "mining.retrievers=[bm25,bm25]"))
    with pytest.raises(ConfigError, match="mining.model"):
        mine.run(make_cfg("mining.method=dense"))


def test_remining_with_a_trained_student(make_cfg, tiny_bi_encoder, tmp_path) -> None:
    base = make_cfg("evaluate.systems=[bm25]", "train.max_steps=2")
    pipeline.run(base)
    student = stage_dir(base, "train") / train.MODEL
    initial = make_cfg(*DENSE, f"mining.model={tiny_bi_encoder}", "experiment=init")
    remine = make_cfg(*DENSE, f"mining.model={student}", "experiment=ance")
    assert mine.stage_key(initial) != mine.stage_key(remine)
    manifest = mine.run(remine)
    assert manifest.counts["queries"] == 16 and manifest.counts["negatives"] > 0
    assert read_manifest(stage_dir(remine, "mine")).key == mine.stage_key(remine)
    # same checkpoint elsewhere: same key; a changed checkpoint: a new key
    copy = tmp_path / "copy"
    shutil.copytree(student, copy)
    assert mine.stage_key(make_cfg(*DENSE, f"mining.model={copy}", "experiment=ance")) == mine.stage_key(
        remine
    )
    (copy / "distillrank.json").write_text((copy / "distillrank.json").read_text().replace("64", "48"))
    assert mine.stage_key(make_cfg(*DENSE, f"mining.model={copy}", "experiment=ance")) != mine.stage_key(
        remine
    )


def test_faiss_flat_index_gives_the_exact_candidates(make_cfg, tiny_bi_encoder) -> None:
    pytest.importorskip("faiss")
    exact = make_cfg(*DENSE, f"mining.model={tiny_bi_encoder}", "mining.sampling=all")
    flat = make_cfg(*DENSE, f"mining.model={tiny_bi_encoder}", "mining.sampling=all", "mining.index=faiss",
                    "experiment=faiss")
    assert mine.stage_key(flat) != mine.stage_key(exact)
    mine.run(exact)
    manifest = mine.run(flat)
    assert manifest.counts["index"] == "faiss"
    a, b = _candidates(exact), _candidates(flat)
    assert list(a.docid) == list(b.docid) and list(a["rank"]) == list(b["rank"])
    np.testing.assert_allclose(a.first_stage_score, b.first_stage_score, rtol=1e-5, atol=1e-5)
    folder = next((cache_dir(flat) / "embeddings").iterdir())
    assert (folder / "faiss-Flat.index").is_file()  # built once, reused by the next run
    hnsw = make_cfg(*DENSE, f"mining.model={tiny_bi_encoder}", "mining.index=faiss", "mining.faiss_factory=HNSW8",
                    "experiment=hnsw")
    assert mine.run(hnsw).counts["rows"] > 0
    with pytest.raises(ConfigError, match="mining.index"):
        mine.run(make_cfg(*DENSE, f"mining.model={tiny_bi_encoder}", "mining.index=annoy", "experiment=bad"))


def test_dense_mining_under_int8_encodes_in_fp32(make_cfg, tiny_bi_encoder) -> None:
    """hardware=cpu_int8 quantizes teachers only: the mining encoder's candidates are fp32's."""
    fp32 = make_cfg(*DENSE, f"mining.model={tiny_bi_encoder}", "experiment=fp32", "hardware=cpu")
    int8 = make_cfg(*DENSE, f"mining.model={tiny_bi_encoder}", "experiment=int8", "hardware=cpu_int8")
    mine.run(fp32)
    mine.run(int8)
    a, b = _candidates(fp32), _candidates(int8)
    assert len(a) > 0 and list(a.docid) == list(b.docid)
    np.testing.assert_array_equal(a.first_stage_score.to_numpy(), b.first_stage_score.to_numpy())
