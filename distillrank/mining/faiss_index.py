"""An optional FAISS index over cached corpus embeddings (``mining.index=faiss``).

The default search is exact and chunked (:func:`distillrank.evaluation.retrieval.exact_topk`). At a
larger scale, users choose FAISS (Johnson et al. 2019) when ``faiss-cpu`` / ``faiss-gpu`` is
installed: ``mining.faiss_factory`` is a ``faiss.index_factory`` string, e.g. ``Flat`` (exact inner
product), ``HNSW32`` (graph, approximate) or ``IVF4096,PQ64`` (trained, compressed). The index is
built once per embedding cache and factory, written atomically beside the embeddings, and reused.
Inner product is the metric: the cached embeddings are normalised when the model uses cosine.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from distillrank.errors import ConfigError
from distillrank.workspace import atomic_path, cache_entry, drop_unreadable, seal

log = logging.getLogger(__name__)


def _faiss():
    try:
        import faiss
    except ImportError as err:
        raise ConfigError(
            "mining.index=faiss needs FAISS: pip install faiss-cpu (or faiss-gpu), or keep mining.index=exact"
        ) from err
    return faiss


def index_path(embeddings_folder: Path, factory: str) -> Path:
    safe = "".join(c if c.isalnum() else "_" for c in factory)
    return Path(embeddings_folder) / f"faiss-{safe}.index"


def load_or_build(matrix: np.ndarray, embeddings_folder: Path, factory: str, train_sample: int = 100_000, seed: int = 0):
    """The FAISS index of ``matrix`` [N, d] for ``factory`` (read from disk when built before)."""
    faiss = _faiss()
    path = index_path(embeddings_folder, factory)
    with cache_entry(path, "FAISS index") as present:  # locked while checked and built; damaged: rebuilt
        if present:
            try:
                return faiss.read_index(str(path))
            except RuntimeError as err:
                drop_unreadable(path, "FAISS index", err)
        try:
            index = faiss.index_factory(int(matrix.shape[1]), factory, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as err:
            raise ConfigError(f"mining.faiss_factory={factory!r} is not a FAISS index factory string: {err}") from err
        if not index.is_trained:
            rng = np.random.default_rng(seed)
            rows = np.sort(rng.choice(len(matrix), size=min(train_sample, len(matrix)), replace=False))
            index.train(np.ascontiguousarray(matrix[rows], dtype=np.float32))
        block = 65536
        for start in range(0, len(matrix), block):
            index.add(np.ascontiguousarray(matrix[start : start + block], dtype=np.float32))
        with atomic_path(path) as tmp:
            faiss.write_index(index, str(tmp))
        seal(path)
        log.info("mine: FAISS %s index of %d vectors written to %s", factory, len(matrix), path)
        return index


def on_device(index, device):
    """``index`` copied to the CUDA ``device`` when this FAISS is built with GPU support
    (faiss-gpu) and supports the index type there; otherwise ``index`` itself, searched on the CPU.

    The index is built (and trained) on the CPU and cached as such, so that a cached index is the
    same whichever machine built it; only searches move to the GPU.
    """
    import torch

    device = torch.device(device) if device is not None else torch.device("cpu")
    faiss = _faiss()
    if device.type != "cuda" or not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() < 1:
        if device.type == "cuda":
            log.info("mine: this FAISS has no GPU support (faiss-cpu); searching on the CPU")
        return index
    try:
        return faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), device.index or 0, index)
    except RuntimeError as err:  # index types FAISS cannot run on a GPU (HNSW, ...)
        log.info("mine: FAISS cannot search this index on %s (%s); searching on the CPU", device, err)
        return index


def search(index, queries: np.ndarray, depth: int, device=None) -> tuple[np.ndarray, np.ndarray]:
    """Rows [Q, k] (int64; -1 where fewer hits) and scores [Q, k] (float32), best first; on a
    CUDA ``device`` when FAISS can (:func:`on_device`). FAISS bounds its own memory in the number
    of queries (it scores them in blocks)."""
    index = on_device(index, device)
    scores, rows = index.search(np.ascontiguousarray(queries, dtype=np.float32), int(depth))
    return rows.astype(np.int64), scores.astype(np.float32)
