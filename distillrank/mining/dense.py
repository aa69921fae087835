"""Dense first-stage retrieval for mining: a bi-encoder over corpus embeddings cached in the workspace.

The model is ``mining.model``: a folder or hub id, or the student checkpoint of an earlier run
(re-mining with a trained student, ANCE-style); :mod:`distillrank.builders.mining` reads it, and
the rest of the mining config, and calls the two functions here with plain arguments. The corpus
embeddings are cached under ``<workspace>/_cache/embeddings/`` (see
:func:`distillrank.evaluation.dense.cached_corpus_embeddings`), so a second mining run with the same
model and settings does not re-encode the corpus. Under ``torchrun`` every rank calls
:func:`embed_corpus` with its :class:`~distillrank.sharding.Share` and encodes its part of the
corpus; the mine stage's rank 0 then searches over them alone (:func:`dense_search`).
Search is exact, by corpus blocks and query batches on the runtime's device, by default;
``index="faiss"`` (``mining.index=faiss``) uses a FAISS index instead
(:mod:`distillrank.mining.faiss_index`, ``mining.faiss_factory``), searched on the GPU when
faiss-gpu is installed and the device is CUDA.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from distillrank.errors import ConfigError
from distillrank.evaluation.dense import cached_corpus_embeddings, search
from distillrank.mining import faiss_index
from distillrank.models.bi_encoder import BiEncoder
from distillrank.models.frozen import for_inference
from distillrank.runtime import Runtime
from distillrank.sharding import WHOLE, Share

log = logging.getLogger(__name__)

_CHUNK = 65536  # corpus rows per encoding block and per block of the top-k product (memory bound)
INDEXES = ("exact", "faiss")


@dataclass(frozen=True)
class MiningEmbeddings:
    """The mining encoder, the runtime it encodes under and its corpus embeddings (cached)."""

    encoder: BiEncoder
    runtime: Runtime
    matrix: np.ndarray
    rate: float | None  # passages per second of this process's encoding; None: from the cache
    folder: Path


def embed_corpus(
    encoder: BiEncoder,
    runtime: Runtime,
    coll,
    cache_root: Path,
    model_key: str,
    batch_size: int,
    *,
    progress: bool = True,
    share: Share = WHOLE,
) -> MiningEmbeddings:
    """``encoder``'s corpus embeddings of ``coll``, from the workspace cache (``cache_root``, keyed by
    ``model_key``: :func:`~distillrank.evaluation.dense.model_key`) or encoded into it.

    The encoder is frozen for ``runtime`` first (:func:`~distillrank.models.frozen.for_inference`),
    never in int8: ``hardware.precision=int8`` quantizes teachers only, the mining encoder then
    encodes in fp32 (ONNX Runtime fp32 under the onnx backend; bf16 / fp16 linear weights stored
    once under those). With ``share`` a rank of a ``torchrun`` group, each rank encodes its part of
    the corpus on its own device (every rank of the group must call this).
    """
    precision = "fp32" if runtime.int8 else runtime.precision
    encoder = for_inference(encoder, runtime.backend, precision, "backbone", "last_hidden_state")
    runtime = runtime.on(share.device(runtime.device))  # a torchrun rank's GPU
    matrix, rate, folder = cached_corpus_embeddings(
        encoder, coll, cache_root, model_key, batch_size, _CHUNK, runtime, name="mine", progress=progress, share=share
    )
    return MiningEmbeddings(encoder, runtime, matrix, rate, folder)


def dense_search(
    embeddings: MiningEmbeddings,
    query_texts: Sequence[str],
    depth: int,
    batch_size: int,
    *,
    index: str = "exact",
    faiss_factory: str = "Flat",
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Top-``depth`` corpus rows and dense scores per query, [Q, k] each, best first, over
    ``embeddings`` (:func:`embed_corpus`): exact (``index="exact"``) or through a FAISS index built
    with ``faiss_factory`` and ``seed`` (``"faiss"``, cached beside the embeddings).

    Returns:
        rows, scores and info (``embeddings_cached``: whether the corpus matrix came from the cache,
        ``passages_per_s``: the encoding rate when it did not; ``embeddings``: its folder; ``index``).

    Raises:
        ConfigError: an ``index`` other than exact or faiss.
    """
    encoder, runtime, matrix = embeddings.encoder, embeddings.runtime, embeddings.matrix
    if index == "faiss":
        built = faiss_index.load_or_build(matrix, embeddings.folder, str(faiss_factory), seed=int(seed))
        q_emb = encoder.to(runtime.device).eval().encode(list(query_texts), "query", batch_size, runtime, progress=False)
        rows_np, scores_np = faiss_index.search(built, q_emb.float().cpu().numpy(), depth, runtime.device)
    elif index == "exact":
        scores, rows = search(encoder, matrix, query_texts, depth, batch_size, _CHUNK, runtime)
        rows_np, scores_np = rows.numpy().astype(np.int64), scores.numpy().astype(np.float32)
    else:
        raise ConfigError(f"mining.index={index!r}; expected one of {', '.join(INDEXES)}")
    info = {
        "embeddings_cached": embeddings.rate is None,
        "passages_per_s": embeddings.rate,
        "embeddings": str(embeddings.folder),
        "index": index,
    }
    return rows_np, scores_np, info
