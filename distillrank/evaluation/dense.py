"""Dense retrieval over a whole corpus with a bi-encoder.

Two pieces, shared by evaluation and mining:

* :func:`encode_corpus` encodes the corpus block by block into a memory-mapped ``.npy`` matrix;
  :func:`cached_corpus_embeddings` keeps such a matrix in the workspace cache, keyed by the model's
  weights, the collection and the encoding settings, so it is encoded once.
* :func:`search` encodes queries and runs the exact chunked top-k over a (memory-mapped) matrix.

:func:`scratch_index` holds such a matrix in a scratch folder, removed afterwards, while it is searched
(evaluation); :func:`dense_retrieve` is one query set retrieved over it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from distillrank.evaluation.retrieval import exact_topk
from distillrank.models.bi_encoder import BiEncoder
from distillrank.runtime import Runtime
from distillrank.workspace import atomic_dir, cache_entry, drop_unreadable, fingerprint, seal

log = logging.getLogger(__name__)

EMBEDDINGS_FILE = "corpus.npy"
EMBEDDINGS_META = "meta.json"
EMBEDDINGS_VERSION = 1  # bumped when the stored layout or the encoding changes
CORPUS_CHUNK = 65536  # passages per block when corpus embeddings are encoded
RATE_SAMPLE = 1024  # passages timed for the encoding rate of embeddings that came from the cache


def encode_corpus(
    encoder: BiEncoder,
    collection,
    path: Path,
    batch_size: int,
    chunk_size: int,
    runtime: Runtime,
    name: str = "dense",
    progress: bool = True,
) -> tuple[np.memmap, float]:
    """Encode every passage of ``collection`` into a float32 ``.npy`` memmap at ``path``.

    Peak memory is one block of ``chunk_size`` texts and their embeddings, not the corpus.

    Returns:
        the matrix [N, dim] (opened read-write, flushed) and the encoding rate in passages per second.
    """
    encoder = encoder.to(runtime.device).eval()
    n_docs = len(collection.corpus)
    matrix = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n_docs, encoder.dim))
    encode_time = 0.0
    bar = tqdm(total=n_docs, desc=f"{name}: encode corpus", unit="p", disable=not progress)
    for start in range(0, n_docs, chunk_size):
        end = min(start + chunk_size, n_docs)
        texts = collection.passage_texts(range(start, end))
        t0 = time.perf_counter()
        matrix[start:end] = encoder.encode(texts, "passage", batch_size, runtime, progress=False).numpy()
        encode_time += time.perf_counter() - t0
        bar.update(end - start)
    bar.close()
    matrix.flush()
    return matrix, n_docs / max(encode_time, 1e-9)


def encoding_rate(
    encoder: BiEncoder,
    collection,
    batch_size: int,
    runtime: Runtime,
    sample: int = RATE_SAMPLE,
    seed: int = 0,
) -> float:
    """Passages per second of ``encoder`` on a random sample of ``collection`` (all of it when
    smaller), batched as :func:`encode_corpus` batches; for corpus embeddings reused from the cache,
    whose speed must still be reported."""
    n_docs = len(collection.corpus)
    rows = np.sort(np.random.default_rng(seed).permutation(n_docs)[: min(sample, n_docs)])
    texts = collection.passage_texts(rows.tolist())
    encoder = encoder.to(runtime.device).eval()
    start = time.perf_counter()
    encoder.encode(texts, "passage", batch_size, runtime, progress=False)
    return len(texts) / max(time.perf_counter() - start, 1e-9)


def embedding_settings(encoder: BiEncoder, precision: str) -> dict:
    """What, besides the weights, decides the corpus embeddings of ``encoder``."""
    settings = encoder.settings()
    return {
        "pooling": settings["pooling"],
        "similarity": settings["similarity"],
        "passage_max_length": settings["passage_max_length"],
        "passage_prefix": settings["passage_prefix"],
        "precision": precision,
        "version": EMBEDDINGS_VERSION,
    }


def embeddings_dir(cache_root: Path, model_fp: str, collection_fp: str, settings: dict) -> Path:
    """``<cache_root>/embeddings/<model fp[:16]>-<collection fp[:16]>-<settings fp[:8]>``."""
    return (
        Path(cache_root) / "embeddings" / f"{model_fp[:16]}-{collection_fp[:16]}-{fingerprint(settings)[:8]}"
    )


def cached_corpus_embeddings(
    encoder: BiEncoder,
    collection,
    cache_root: Path,
    model_fp: str,
    batch_size: int,
    chunk_size: int,
    runtime: Runtime,
    name: str = "dense",
    progress: bool = True,
) -> tuple[np.memmap, float | None, Path]:
    """The corpus embeddings of ``encoder`` from the workspace cache, encoded and cached on a miss.

    Args:
        model_fp: fingerprint of the encoder's weights (``dir_fingerprint`` of its folder).
        cache_root: the workspace's ``_cache`` folder.

    Returns:
        the read-only memmapped matrix [N, dim], the encoding rate (None when it came from the cache)
        and the cache folder.
    """
    settings = embedding_settings(encoder, runtime.precision)
    folder = embeddings_dir(cache_root, model_fp, collection.fingerprint, settings)
    n_docs = len(collection.corpus)
    # locked while checked and encoded (a second process waits, then reuses them); embeddings that do
    # not match their checksums (truncated, zeroed) or cannot be opened are dropped and encoded again
    with cache_entry(folder, f"{name}: cached corpus embeddings") as present:
        if present:
            try:
                matrix = np.load(folder / EMBEDDINGS_FILE, mmap_mode="r")
                if matrix.shape == (n_docs, encoder.dim):
                    log.info("%s: corpus embeddings reused from %s", name, folder)
                    return matrix, None, folder
                log.warning("%s: cached embeddings in %s have shape %s, re-encoding", name, folder, matrix.shape)
            except (OSError, ValueError) as err:
                drop_unreadable(folder, f"{name}: cached corpus embeddings", err)
        with atomic_dir(folder) as tmp:
            matrix, rate = encode_corpus(
                encoder,
                collection,
                tmp / EMBEDDINGS_FILE,
                batch_size,
                chunk_size,
                runtime,
                name,
                progress,
            )
            del matrix  # close the memmap before the folder is renamed
            meta = {
                "model": model_fp,
                "collection": collection.fingerprint,
                "settings": settings,
                "shape": [n_docs, encoder.dim],
            }
            (tmp / EMBEDDINGS_META).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
            seal(tmp)
        log.info("%s: corpus embeddings of %d passages cached in %s", name, n_docs, folder)
        return np.load(folder / EMBEDDINGS_FILE, mmap_mode="r"), rate, folder


def search(
    encoder: BiEncoder,
    matrix: np.ndarray,
    query_texts: Sequence[str],
    top_k: int,
    batch_size: int,
    chunk_size: int,
    runtime: Runtime,
    resident: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode the queries and take the exact top-k of their dot products with ``matrix``'s rows,
    on the runtime's device (:func:`~distillrank.evaluation.retrieval.exact_topk`: by corpus
    blocks and query batches).

    Args:
        resident: ``matrix`` already on the runtime's device (:func:`device_copy`), read instead
            of the memory map.

    Returns:
        scores [Q, k] (descending) and corpus rows [Q, k] (int64), k = min(top_k, N), on the CPU.
    """
    encoder = encoder.to(runtime.device).eval()
    q_emb = encoder.encode(list(query_texts), "query", batch_size, runtime, progress=False)

    def doc_block(start: int, end: int) -> torch.Tensor:
        if resident is not None:
            return resident[start:end]
        return torch.from_numpy(np.array(matrix[start:end]))  # a writable copy of one block

    return exact_topk(q_emb, matrix.shape[0], doc_block, top_k, chunk_size, device=runtime.device)


def device_copy(
    matrix: np.ndarray, device: torch.device, chunk_size: int, share: float = 0.5
) -> torch.Tensor | None:
    """``matrix`` copied block by block onto a CUDA ``device`` when it takes at most ``share`` of
    the device's free memory, so that searches (one query at a time, for the latency) do not
    stream the corpus over PCIe each time; None on the CPU or when it does not fit."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    free, _ = torch.cuda.mem_get_info(device)
    if matrix.nbytes > share * free:
        return None
    out = torch.empty(tuple(matrix.shape), dtype=torch.float32, device=device)
    for start in range(0, matrix.shape[0], chunk_size):
        end = min(start + chunk_size, matrix.shape[0])
        out[start:end] = torch.from_numpy(np.array(matrix[start:end], dtype=np.float32)).to(device)
    return out


def latency_ms(answer_one, texts: Sequence[str], n: int) -> dict[str, float] | None:
    """Median and 95th-percentile wall time (ms) of ``answer_one(text)`` over the first ``n`` texts,
    one query at a time (what a search service sees), after one untimed warm-up call."""
    sample = list(texts)[:n]
    if not sample:
        return None
    answer_one(sample[0])
    times = []
    for text in sample:
        start = time.perf_counter()
        answer_one(text)
        times.append((time.perf_counter() - start) * 1000.0)
    return {
        "median_ms": float(np.median(times)),
        "p95_ms": float(np.percentile(times, 95)),
        "queries": len(times),
    }


class ScratchIndex:
    """A bi-encoder's corpus matrix in a scratch folder, searched exactly, while it is open.

    Made by :func:`scratch_index`; lets one corpus encoding serve several query sets (the test
    queries, dev queries, single-query latency) before the matrix is removed.
    """

    def __init__(
        self,
        encoder: BiEncoder,
        collection,
        matrix: np.ndarray,
        rate: float,
        batch_size: int,
        chunk_size: int,
        runtime: Runtime,
    ) -> None:
        self.encoder, self.collection, self.matrix, self.rate = encoder, collection, matrix, rate
        self.batch_size, self.chunk_size = batch_size, chunk_size
        self.runtime = runtime
        self._resident: torch.Tensor | None = None
        self._placed = False

    def resident(self) -> torch.Tensor | None:
        """The matrix on the runtime's GPU (copied once, when it fits; :func:`device_copy`)."""
        if not self._placed:
            self._resident = device_copy(self.matrix, self.runtime.device, self.chunk_size)
            self._placed = True
        return self._resident

    def search(
        self, texts: Sequence[str], top_k: int, batch_size: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores [Q, k] and corpus rows [Q, k] of the exact top-k of ``texts`` (see :func:`search`)."""
        return search(
            self.encoder,
            self.matrix,
            texts,
            top_k,
            batch_size or self.batch_size,
            self.chunk_size,
            self.runtime,
            self.resident(),
        )

    def retrieve(self, queries: Sequence[tuple[str, str]], top_k: int) -> dict[str, dict[str, float]]:
        """The run ``{qid: {docid: score}}`` of ``(qid, text)`` queries, top ``top_k`` each."""
        scores, rows = self.search([t for _, t in queries], top_k)
        doc_ids = self.collection.doc_ids()
        return {
            qid: {doc_ids[r]: float(s) for s, r in zip(scores[i].tolist(), rows[i].tolist(), strict=True)}
            for i, (qid, _) in enumerate(queries)
        }

    def search_one(self, text: str, top_k: int) -> dict[str, float]:
        """One query encoded and searched alone (what a search service does): ``{docid: score}``."""
        scores, rows = self.search([text], top_k, batch_size=1)
        doc_ids = self.collection.doc_ids()
        return {doc_ids[r]: float(s) for s, r in zip(scores[0].tolist(), rows[0].tolist(), strict=True)}


@contextlib.contextmanager
def scratch_index(
    encoder: BiEncoder,
    collection,
    batch_size: int,
    chunk_size: int,
    runtime: Runtime,
    scratch: Path,
    name: str = "dense",
) -> Iterator[ScratchIndex]:
    """Encode the corpus block by block into a memory-mapped matrix in ``scratch``, removed on exit.

    Peak memory is one block of texts and embeddings, not the corpus. The index's ``rate`` is the
    corpus encoding rate in passages per second.
    """
    scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=scratch) as tmp:
        matrix, rate = encode_corpus(
            encoder, collection, Path(tmp) / EMBEDDINGS_FILE, batch_size, chunk_size, runtime, name
        )
        index = ScratchIndex(encoder, collection, matrix, rate, batch_size, chunk_size, runtime)
        try:
            yield index
        finally:
            index.matrix = index._resident = None
            del matrix  # close the memmap before its folder is removed


def dense_retrieve(
    encoder: BiEncoder,
    collection,
    queries: list[tuple[str, str]],
    top_k: int,
    batch_size: int,
    chunk_size: int,
    runtime: Runtime,
    scratch: Path,
    name: str = "dense",
    latency_queries: int = 0,
) -> tuple[dict[str, dict[str, float]], float, dict[str, float] | None]:
    """Encode the corpus block by block into a memory-mapped matrix, then exact top-k by blocks.

    Peak memory is one block of texts and embeddings, not the corpus: the matrix lives on disk in
    ``scratch`` (removed afterwards; :func:`scratch_index`).

    Returns:
        the run (qid -> docid -> score), the corpus encoding rate in passages per second, and the
        single-query latency (encode + exact search) over ``latency_queries`` queries, or None.
    """
    with scratch_index(encoder, collection, batch_size, chunk_size, runtime, scratch, name) as index:
        run = index.retrieve(queries, top_k)
        texts = [t for _, t in queries]
        latency = latency_ms(lambda text: index.search([text], top_k, 1), texts, latency_queries)
        return run, index.rate, latency
