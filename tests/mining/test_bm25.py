"""BM25Index on the tiny BEIR collection: ranking quality, filler rows, the on-disk cache."""

from __future__ import annotations

import os
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


# --------------------------------------------------------------------------- at scale: threads, batches, numba
def _single_thread_numpy(
    folder: Path, index: BM25Index, texts: list[str], k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The search written out plainly: a freshly loaded index with bm25s' own numpy scorer scores
    each query over the whole corpus on the calling thread, and a full sort by (score descending,
    row ascending) keeps the k best that match (score > 0); the rest is row -1, score 0."""
    plain = bm25s.BM25.load(str(folder), mmap=True)
    assert plain.backend == "numpy"
    rows = np.full((len(texts), k), -1, dtype=np.int64)
    scores = np.zeros((len(texts), k), dtype=np.float32)
    for i, ids in enumerate(index.query_ids(texts)):
        if not ids:
            continue
        full = np.asarray(plain.get_scores_from_ids(ids), dtype=np.float32)
        order = [r for r in sorted(range(len(full)), key=lambda r: (-full[r], r)) if full[r] > 0][:k]
        rows[i, : len(order)] = order
        scores[i, : len(order)] = full[order]
    return rows, scores


def test_same_scores_as_bm25s_retrieve_with_ties_ordered_by_row(
    collection: Collection, cache_root: Path, index: BM25Index
) -> None:
    """bm25s' own retrieve gives the same top-k scores; only the order of equal scores (left to
    numpy's partition there) is fixed here, by row ascending."""
    texts = [t for split in ("train", "test") for _, t in collection.split_queries(split)]
    texts = texts + [t.split()[0] for t in texts]
    (folder,) = (cache_root / "bm25").iterdir()
    plain = bm25s.BM25.load(str(folder), mmap=True)
    for k in (3, 10, len(collection.corpus)):
        found, found_scores = plain.retrieve(index.query_ids(texts), k=k, show_progress=False, n_threads=0)
        found_scores = np.asarray(found_scores, dtype=np.float32)
        rows, scores = index.search(texts, k, progress=False)
        np.testing.assert_array_equal(scores, found_scores)  # both best first: the same numbers
        for i, ids in enumerate(index.query_ids(texts)):
            full = np.asarray(plain.get_scores_from_ids(ids), dtype=np.float32) if ids else None
            for j in np.flatnonzero(found_scores[i] > 0):  # a score no other passage has: the same row
                if (full == found_scores[i, j]).sum() == 1:
                    assert rows[i, j] == found[i, j]
            tied = (scores[i][:-1] == scores[i][1:]) & (rows[i][1:] >= 0)
            assert np.all(rows[i][:-1][tied] < rows[i][1:][tied])  # equal scores: rows ascending


def test_top_k_selects_matching_rows_ties_by_row() -> None:
    from distillrank.mining.bm25 import top_k

    scores = np.array([0.0, 2.0, 1.0, 2.0, 0.0, 3.0, 1.0, 1.0], dtype=np.float32)
    rows, out = top_k(scores, 4)
    assert rows.tolist() == [5, 1, 3, 2]  # 3, then the 2s by row, then the first of the three 1s
    assert out.tolist() == [3.0, 2.0, 2.0, 1.0]
    rows, out = top_k(scores, 8)
    assert rows.tolist() == [5, 1, 3, 2, 6, 7, -1, -1] and out.tolist()[-2:] == [0.0, 0.0]
    rows, out = top_k(np.zeros(5, dtype=np.float32), 2)
    assert rows.tolist() == [-1, -1] and out.tolist() == [0.0, 0.0]


@pytest.mark.parametrize(("threads", "batch_size"), [(1, 3), (2, 5), (4, 1000)])
def test_threads_and_batches_give_the_single_thread_results(
    collection: Collection, cache_root: Path, index: BM25Index, threads: int, batch_size: int
) -> None:
    # every split's queries, twice over and with unknown words: many equal scores (ties) at every
    # depth, and queries that match nothing; k = the whole corpus, so every tie is ordered
    texts = [t for split in ("train", "test") for _, t in collection.split_queries(split)]
    texts = texts + [t.split()[0] for t in texts] + ["zzzqqq", "the", "glacier zzzqqq"]
    k = len(collection.corpus)
    (folder,) = (cache_root / "bm25").iterdir()
    want_rows, want_scores = _single_thread_numpy(folder, index, texts, k)
    index.threads = threads
    try:
        rows, scores = index.search(texts, k, progress=False, batch_size=batch_size)
    finally:
        index.threads = None
    np.testing.assert_array_equal(rows, want_rows)
    np.testing.assert_array_equal(scores, want_scores)  # bit for bit, tie order included
    assert (np.diff(scores, axis=1) == 0).any()  # ties were there to order


def test_threads_follow_the_affinity_mask(index: BM25Index) -> None:
    from distillrank.mining.bm25 import available_threads

    assert available_threads() == len(os.sched_getaffinity(0))


def test_numba_scorer_gives_the_numpy_scores(collection: Collection, cache_root: Path, monkeypatch) -> None:
    pytest.importorskip("numba")  # installed with the [scale] and [dev] extras
    from distillrank.mining import bm25 as bm25_module

    numba_index = BM25Index.build_or_load(collection, cache_root, progress=False, threads=2)
    numba_index.search(["a"], 1, progress=False)
    assert numba_index.scorer == "numpy"  # a search too small to repay numba's compilation
    monkeypatch.setattr(bm25_module, "NUMBA_MIN_WORK", 0)
    numpy_index = BM25Index.build_or_load(collection, cache_root, progress=False)
    numpy_index.retriever._compute_relevance_from_scores = bm25s.BM25._compute_relevance_from_scores
    texts = [t for _, t in collection.split_queries("train")] + ["zzzqqq"]
    k = len(collection.corpus)
    (folder,) = (cache_root / "bm25").iterdir()
    want_rows, want_scores = _single_thread_numpy(folder, numpy_index, texts, k)
    rows, scores = numba_index.search(texts, k, progress=False, batch_size=4)
    assert numba_index.scorer == "numba"
    np.testing.assert_array_equal(rows, want_rows)
    np.testing.assert_array_equal(scores, want_scores)
    ids = numba_index.query_ids(texts[:3])
    for q in ids:
        np.testing.assert_array_equal(
            numba_index.scores_of_rows(q, np.arange(k)), numpy_index.scores_of_rows(q, np.arange(k))
        )


@pytest.mark.parametrize("blocks", [1, 4])
@pytest.mark.parametrize("stemmer", ["english", None])
def test_processes_tokenize_the_corpus_as_one_process(
    collection: Collection, tmp_path: Path, monkeypatch, stemmer, blocks
) -> None:
    # chunks of 7 passages in blocks (3 chunks a block, or 1), tokenised by 3 forked processes and
    # merged in corpus order: the same ids and the same vocabulary dictionaries, entry for entry and
    # in the same order, as one process
    import distillrank.mining.bm25 as bm25

    monkeypatch.setattr(bm25, "_CHUNK", 7)
    monkeypatch.setattr(bm25, "BLOCKS_PER_PROCESS", blocks)
    one = BM25Index._tokenizer(stemmer, "en")
    want = BM25Index._tokenize_corpus(collection, one, True, False, workers=1)
    many = BM25Index._tokenizer(stemmer, "en")
    got = BM25Index._tokenize_corpus(collection, many, True, False, workers=3)
    assert len(want) == len(collection.corpus) > 3 * 7
    assert got == want
    for name in ("word_to_stem", "stem_to_sid", "word_to_id"):
        assert list(getattr(many, name).items()) == list(getattr(one, name).items()), name
    assert len(one.word_to_id) > 100


class _Passages:
    """What corpus tokenization reads of a collection: its size and passage texts by row."""

    def __init__(self, texts: list[str]) -> None:
        self.corpus = texts

    def passage_texts(self, rows) -> list[str]:
        return [self.corpus[i] for i in rows]


def test_processes_share_the_vocabularys_int_objects(monkeypatch) -> None:
    # a vocabulary past 256 ids (CPython keeps one object of each smaller int): the ids merged from
    # the processes are the vocabulary's own int objects, as one process's are, not a new int a
    # token (which held 1.1 GiB more at 1M passages)
    import distillrank.mining.bm25 as bm25

    rng = np.random.default_rng(0)
    words = [f"w{i}q" for i in range(2000)]
    passages = _Passages([" ".join(rng.choice(words, 40)) for _ in range(60)])
    monkeypatch.setattr(bm25, "_CHUNK", 7)
    one, many = BM25Index._tokenizer(None, None), BM25Index._tokenizer(None, None)
    want = BM25Index._tokenize_corpus(passages, one, True, False, workers=1)
    got = BM25Index._tokenize_corpus(passages, many, True, False, workers=2)
    assert got == want
    large = [token for doc in got for token in doc if token > 256]
    assert len(large) > 1000
    shared = {id(v) for v in many.word_to_id.values()}
    assert all(id(token) in shared for token in large)


def test_an_index_built_by_processes_is_the_one_built_by_one(collection: Collection, tmp_path: Path, monkeypatch) -> None:
    import distillrank.mining.bm25 as bm25

    monkeypatch.setattr(bm25, "_CHUNK", 9)
    built = {
        n: BM25Index.build_or_load(collection, tmp_path / f"t{n}", progress=False, threads=n) for n in (1, 2)
    }
    files = {n: sorted((tmp_path / f"t{n}").rglob("*")) for n in built}
    names = [[p.relative_to(tmp_path / f"t{n}") for p in files[n] if p.is_file()] for n in (1, 2)]
    assert names[0] == names[1] and names[0]
    for rel in names[0]:
        assert (tmp_path / "t1" / rel).read_bytes() == (tmp_path / "t2" / rel).read_bytes(), rel
