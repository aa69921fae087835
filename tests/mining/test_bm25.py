"""BM25Index on the tiny BEIR collection: ranking quality, filler rows, the on-disk cache."""

from __future__ import annotations

import re
from pathlib import Path

import bm25s
import numpy as np
import pytest
from omegaconf import OmegaConf

from distillrank.data.collection import Collection, load_collection
from distillrank.mining.bm25 import BM25Index


def _data_cfg(tiny_beir: Path):
    return OmegaConf.create(
        {
            "name": "tiny",
            "source": "beir",
            "path": str(tiny_beir),
            "irds_id": None,
            "root": None,
            "train_split": "train",
            "dev_split": None,
            "test_split": "test",
            "max_train_queries": None,
            "max_test_queries": None,
            "max_docs": None,
        }
    )


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bm25_cache")


@pytest.fixture(scope="module")
def collection(tiny_beir: Path, cache_root: Path) -> Collection:
    return load_collection(_data_cfg(tiny_beir), cache_root)


@pytest.fixture(scope="module")
def index(collection: Collection, cache_root: Path) -> BM25Index:
    return BM25Index.build_or_load(collection, cache_root, progress=False)


def test_relevant_doc_ranks_first_for_most_test_queries(collection: Collection, index: BM25Index) -> None:
    queries = collection.split_queries("test")
    assert len(queries) >= 5
    rows, scores = index.search([t for _, t in queries], k=10, progress=False)
    assert rows.shape == scores.shape == (len(queries), 10)
    assert rows.dtype == np.int64 and scores.dtype == np.float32
    doc_ids = collection.doc_ids()
    qrels = collection.qrels["test"]
    hits = 0
    for i, (qid, _) in enumerate(queries):
        relevant = {d for d, rel in qrels[qid].items() if rel > 0}
        hits += rows[i, 0] >= 0 and doc_ids[rows[i, 0]] in relevant
    assert hits >= 0.75 * len(queries)


def test_scores_descend_and_filler_rows_are_minus_one(collection: Collection, index: BM25Index) -> None:
    texts = [t for _, t in collection.split_queries("train")]
    rows, scores = index.search(texts, k=20, progress=False)
    assert np.all(np.diff(scores, axis=1) <= 1e-6)
    assert np.array_equal(rows == -1, scores <= 0)
    matched = rows[rows >= 0]
    assert matched.max() < len(collection.corpus)
    for row in rows:  # a document appears at most once among the matching rows
        real = row[row >= 0]
        assert len(set(real.tolist())) == len(real)


def test_query_without_known_terms_gives_only_minus_one(index: BM25Index) -> None:
    rows, scores = index.search(["zzzqqq xylophonist", ""], k=5, progress=False)
    assert rows.shape == (2, 5)
    assert np.all(rows == -1)
    assert np.all(scores <= 0)


def test_matching_rows_are_few_for_a_one_term_query(collection: Collection, index: BM25Index) -> None:
    # A topic word only occurs in a handful of documents: beyond them the rows are -1.
    texts = collection.passage_texts(range(len(collection.corpus)))
    word = texts[0].split()[1].lower()  # the title is "<Specific> <Topicword>"
    rows, _ = index.search([word], k=len(collection.corpus), progress=False)
    containing = {i for i, t in enumerate(texts) if re.search(rf"\b{word}\b", t.lower())}
    assert 0 in containing and len(containing) < len(texts) // 2
    assert set(rows[0][rows[0] >= 0].tolist()) == containing


def test_k_is_clipped_to_corpus_size(collection: Collection, index: BM25Index) -> None:
    rows, scores = index.search(["glacier"], k=10_000, progress=False)
    assert rows.shape == scores.shape == (1, len(collection.corpus))


def test_second_build_loads_from_cache(
    collection: Collection, cache_root: Path, index: BM25Index, monkeypatch: pytest.MonkeyPatch
) -> None:
    folders = list((cache_root / "bm25").iterdir())
    assert len(folders) == 1  # no temporary folder left next to it
    assert folders[0].name.startswith(f"tiny-{collection.fingerprint[:16]}-")
    assert (folders[0] / "params.index.json").is_file()

    def no_index(*args, **kwargs):
        raise AssertionError("BM25.index called: the cached index was not used")

    monkeypatch.setattr(bm25s.BM25, "index", no_index)
    loaded = BM25Index.build_or_load(collection, cache_root, progress=False)
    texts = [t for _, t in collection.split_queries("test")]
    rows_a, scores_a = index.search(texts, k=10, progress=False)
    rows_b, scores_b = loaded.search(texts, k=10, progress=False)
    np.testing.assert_array_equal(rows_b, rows_a)
    np.testing.assert_allclose(scores_b, scores_a, rtol=1e-6)

    # Other parameters key another cache entry: building it calls index (which now raises).
    with pytest.raises(AssertionError, match="cached index was not used"):
        BM25Index.build_or_load(collection, cache_root, k1=1.2, progress=False)
    assert len(list((cache_root / "bm25").iterdir())) == 1  # the failed build left nothing
