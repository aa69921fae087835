"""Dense retrieval over a whole corpus with a bi-encoder."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from distillrank.evaluation.retrieval import exact_topk
from distillrank.models.bi_encoder import BiEncoder
from distillrank.runtime import autocast


def dense_retrieve(
    encoder: BiEncoder,
    collection,
    queries: list[tuple[str, str]],
    top_k: int,
    batch_size: int,
    chunk_size: int,
    device: torch.device,
    precision: str,
    scratch: Path,
    name: str = "dense",
) -> tuple[dict[str, dict[str, float]], float]:
    """Encode the corpus block by block into a memory-mapped matrix, then exact top-k by blocks.

    Peak memory is one block of texts and embeddings, not the corpus: the matrix lives on disk in
    ``scratch`` (removed afterwards).

    Returns:
        the run (qid -> docid -> score) and the corpus encoding rate in passages per second.
    """
    encoder = encoder.to(device).eval()
    amp = lambda: autocast(device, precision)  # noqa: E731
    n_docs = len(collection.corpus)
    scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=scratch) as tmp:
        matrix = np.lib.format.open_memmap(Path(tmp) / "corpus.npy", mode="w+", dtype=np.float32, shape=(n_docs, encoder.dim))
        encode_time = 0.0
        bar = tqdm(total=n_docs, desc=f"{name}: encode corpus", unit="p")
        for start in range(0, n_docs, chunk_size):
            end = min(start + chunk_size, n_docs)
            texts = collection.passage_texts(range(start, end))
            t0 = time.perf_counter()
            matrix[start:end] = encoder.encode(texts, "passage", batch_size, amp, progress=False).numpy()
            encode_time += time.perf_counter() - t0
            bar.update(end - start)
        bar.close()
        matrix.flush()
        q_emb = encoder.encode([t for _, t in queries], "query", batch_size, amp, progress=False)

        def doc_block(start: int, end: int) -> torch.Tensor:
            return torch.from_numpy(np.asarray(matrix[start:end]))

        scores, rows = exact_topk(q_emb, n_docs, doc_block, top_k, chunk_size)
    doc_ids = collection.doc_ids()
    run = {
        qid: {doc_ids[r]: float(s) for s, r in zip(scores[i].tolist(), rows[i].tolist(), strict=True)}
        for i, (qid, _) in enumerate(queries)
    }
    return run, n_docs / max(encode_time, 1e-9)
