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
import errno
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from distillrank.errors import ArtifactError
from distillrank.evaluation.retrieval import exact_topk
from distillrank.models.bi_encoder import BiEncoder
from distillrank.runtime import Runtime
from distillrank.sharding import WHOLE, Share, barrier, broadcast, wait_until
from distillrank.workspace import (
    MUTABLE_OUTPUTS,
    atomic_write_text,
    dir_fingerprint,
    drop_unreadable,
    fingerprint,
    locked,
    remove_stale_temps,
    replace_dir,
    seal,
    usable_entry,
)

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


def model_key(folder: Path, backend: str = "torch") -> str:
    """The model part of a corpus-embedding cache key: the files of the model ``folder`` but its
    model card (which evaluate rewrites), and the backend when not PyTorch. The dense miner keys
    ``mining.model`` and evaluate a saved student by it, so the two share one encoding."""
    weights = dir_fingerprint(folder, skip=MUTABLE_OUTPUTS)
    return weights if backend == "torch" else fingerprint({"weights": weights, "backend": backend})


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
    share: Share = WHOLE,
) -> tuple[np.memmap, float | None, Path]:
    """The corpus embeddings of ``encoder`` from the workspace cache, encoded and cached on a miss.

    A miss is encoded block by block (``chunk_size`` passages) into a partial matrix beside the
    entry (:func:`partial_dir`), each block marked done once written, so an interrupted encoding
    resumes with the blocks that are not. With a ``share`` in a ``torchrun`` group of several ranks
    (:func:`distillrank.sharding.from_env`; every rank must call this), each rank encodes a contiguous share of the
    blocks into the same memory-mapped matrix, on its own GPU, and rank 0 seals the entry once
    every block is done: after a barrier when a ``torch.distributed`` group is initialised, else
    by watching the block markers (the other ranks then wait for the sealed entry). Each block is
    encoded as a single process encodes it, so the matrix is the same to the bit.

    Args:
        model_fp: fingerprint of the encoder's weights (``dir_fingerprint`` of its folder).
        cache_root: the workspace's ``_cache`` folder.
        share: this process among the job's workers (its ``torchrun`` rank and group decide;
            SLURM array tasks encode as single processes, one after the other through the lock).

    Returns:
        the read-only memmapped matrix [N, dim], the encoding rate of this process (None when it
        encoded nothing: the embeddings came from the cache) and the cache folder.
    """
    rank, world, grouped = share.rank, share.group, share.grouped
    runtime = runtime.on(share.device(runtime.device))
    settings = embedding_settings(encoder, runtime.precision)
    folder = embeddings_dir(cache_root, model_fp, collection.fingerprint, settings)
    n_docs = len(collection.corpus)
    what = f"{name}: cached corpus embeddings"
    # locked while checked and encoded (a second job waits, then reuses them; ranks other than 0
    # take no lock: rank 0 holds it for the job, and with a group decides for every rank);
    # embeddings that do not match their checksums (truncated, zeroed) or cannot be opened are
    # dropped and encoded again
    with locked(folder, what) if rank == 0 else contextlib.nullcontext():
        present = usable_entry(folder, what) if rank == 0 or not grouped else None
        present = broadcast(share, present)
        if present:
            try:
                matrix = np.load(folder / EMBEDDINGS_FILE, mmap_mode="r")
                if matrix.shape == (n_docs, encoder.dim):
                    log.info("%s: corpus embeddings reused from %s", name, folder)
                    return matrix, None, folder
                log.warning(
                    "%s: cached embeddings in %s have shape %s, re-encoding", name, folder, matrix.shape
                )
            except (OSError, ValueError) as err:
                drop_unreadable(folder, what, err)
            if world > 1:
                raise ArtifactError(f"{what} in {folder} cannot be read; remove it and run again")
        remove_stale_temps(folder)
        partial = partial_dir(folder, chunk_size, batch_size)
        chunks = [(s, min(s + chunk_size, n_docs)) for s in range(0, n_docs, chunk_size)]
        matrix = _open_partial(partial, (n_docs, encoder.dim))
        todo = [c for c in chunks if not _done(partial, c)]
        if grouped:  # rank 0's list, split evenly: a resumed job shares out what is missing
            todo = broadcast(share, todo if rank == 0 else None)
            mine = [todo[i] for i in share.span(len(todo))]
        else:  # without a group each rank keeps its own blocks (ranks may start at different times)
            mine = [c for i, c in enumerate(chunks) if i in share.span(len(chunks)) and c in todo]
        rate = _encode_chunks(
            encoder, collection, matrix, partial, mine, batch_size, runtime, name, share, progress
        )
        del matrix  # close the memmap before the folder is renamed
        barrier(share)  # with a group: every rank's blocks are written
        if rank == 0:
            if not grouped:
                wait_until(
                    lambda: all(_done(partial, c) for c in chunks), f"{what}: the blocks of the other ranks"
                )
            if missing := [c for c in chunks if not _done(partial, c)]:
                raise ArtifactError(f"{what}: blocks {missing[:3]} of {partial} were not encoded")
            meta = {
                "model": model_fp,
                "collection": collection.fingerprint,
                "settings": settings,
                "shape": [n_docs, encoder.dim],
            }
            (partial / EMBEDDINGS_META).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
            shutil.rmtree(partial / _CHUNKS)
            seal(partial)
            replace_dir(partial, folder)  # sealed, then renamed into place whole
            log.info("%s: corpus embeddings of %d passages cached in %s", name, n_docs, folder)
        if grouped:
            barrier(share)  # rank 0 has sealed the entry
        elif rank != 0:
            wait_until(lambda: (folder / EMBEDDINGS_META).is_file(), f"{what}: rank 0 sealing {folder}")
        return np.load(folder / EMBEDDINGS_FILE, mmap_mode="r"), rate, folder


_CHUNKS = "chunks"  # the partial matrix's block markers: <start>-<end>.done


def partial_dir(folder: Path, chunk_size: int, batch_size: int) -> Path:
    """Where the embeddings of cache entry ``folder`` are encoded before it is sealed: a hidden
    sibling named by the block and batch sizes, which decide the floats of a block (a run with
    other sizes starts its own)."""
    return folder.with_name(f".{folder.name}.partial-{int(chunk_size)}-{int(batch_size)}")


def _open_partial(partial: Path, shape: tuple[int, int]) -> np.memmap:
    """The partial matrix, opened read-write; created (sparse, with its marker folder) by whichever
    rank comes first: a complete folder is renamed into place, and a rank that loses the race
    drops its own."""
    if not partial.is_dir():
        partial.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(partial)
        tmp = Path(
            tempfile.mkdtemp(prefix=f".{partial.name}.{os.getpid()}.", suffix=".tmp", dir=partial.parent)
        )
        try:
            created = np.lib.format.open_memmap(
                tmp / EMBEDDINGS_FILE, mode="w+", dtype=np.float32, shape=shape
            )
            del created
            (tmp / _CHUNKS).mkdir()
            try:
                os.rename(tmp, partial)
            except OSError as err:
                if err.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    matrix = np.lib.format.open_memmap(partial / EMBEDDINGS_FILE, mode="r+")
    if matrix.shape != shape or matrix.dtype != np.float32:
        raise ArtifactError(
            f"{partial} holds a {matrix.dtype} matrix of shape {matrix.shape}, not {shape}: remove it"
        )
    return matrix


def _done(partial: Path, chunk: tuple[int, int]) -> bool:
    return (partial / _CHUNKS / f"{chunk[0]}-{chunk[1]}.done").is_file()


def _encode_chunks(
    encoder: BiEncoder,
    collection,
    matrix: np.memmap,
    partial: Path,
    chunks: list[tuple[int, int]],
    batch_size: int,
    runtime: Runtime,
    name: str,
    share: Share,
    progress: bool,
) -> float | None:
    """Encode ``chunks`` into ``matrix``, each flushed to disk before its marker is written; the
    rate in passages per second (None when there was nothing to encode)."""
    if not chunks:
        return None
    encoder = encoder.to(runtime.device).eval()
    total = sum(end - start for start, end in chunks)
    desc = f"{name}: encode corpus" + (f" (rank {share.rank}/{share.group})" if share.group > 1 else "")
    bar = tqdm(total=total, desc=desc, unit="p", disable=not progress)
    encode_time = 0.0
    for start, end in chunks:
        if _done(partial, (start, end)):  # another rank of a resumed job did it meanwhile
            bar.update(end - start)
            continue
        texts = collection.passage_texts(range(start, end))
        t0 = time.perf_counter()
        matrix[start:end] = encoder.encode(texts, "passage", batch_size, runtime, progress=False).numpy()
        encode_time += time.perf_counter() - t0
        matrix.flush()
        atomic_write_text(partial / _CHUNKS / f"{start}-{end}.done", f"{share.rank}\n")
        bar.update(end - start)
    bar.close()
    return total / max(encode_time, 1e-9)


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
