"""Dense first-stage retrieval for mining: a bi-encoder over corpus embeddings cached in the workspace.

The model is ``mining.model``: a folder or hub id, or the student checkpoint of an earlier run
(re-mining with a trained student, ANCE-style). The corpus embeddings are cached under
``<workspace>/_cache/embeddings/`` (see :func:`distillrank.evaluation.dense.cached_corpus_embeddings`),
so a second mining run with the same model and settings does not re-encode the corpus. Under
``torchrun`` every rank calls :func:`corpus_embeddings` with its :class:`~distillrank.sharding.Share`
and encodes its part of the corpus; the mine stage's rank 0 then searches over them alone
(:func:`dense_search` with ``embeddings=``).
Search is exact, by corpus blocks and query batches on the runtime's device, by default;
``mining.index=faiss`` uses a FAISS index instead (:mod:`distillrank.mining.faiss_index`,
``mining.faiss_factory``), searched on the GPU when faiss-gpu is installed and the device is CUDA.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from distillrank.errors import ConfigError
from distillrank.evaluation.dense import cached_corpus_embeddings, model_key, search
from distillrank.mining import faiss_index
from distillrank.models.bi_encoder import BiEncoder
from distillrank.models.half_weights import cast_linear_weights
from distillrank.models.hub import resolve_model
from distillrank.models.onnx_runtime import OnnxBackbone
from distillrank.runtime import Runtime, configure, configured_backend
from distillrank.sharding import WHOLE, Share
from distillrank.workspace import cache_dir, dir_fingerprint

log = logging.getLogger(__name__)

_CHUNK = 65536  # corpus rows per encoding block and per block of the top-k product (memory bound)


def mining_model_path(cfg: DictConfig) -> Path:
    """The local folder of ``mining.model`` (a ConfigError when it is unset)."""
    if not cfg.mining.model:
        raise ConfigError(
            f"mining.method={cfg.mining.method} needs mining.model: a bi-encoder folder or hub id, "
            "e.g. mining.model=runs/<experiment>/train/model"
        )
    return resolve_model(str(cfg.mining.model))


def mining_model_fingerprint(cfg: DictConfig) -> str:
    """``dir_fingerprint`` of the mining model's folder (file hashes are memoised per size and mtime)."""
    return dir_fingerprint(mining_model_path(cfg))


def dense_key(cfg: DictConfig) -> dict:
    """What, besides the mining config itself, decides the dense candidates: weights, precision and,
    when not PyTorch, the backend (``hardware.backend=onnx`` encodes with ONNX Runtime)."""
    key = {"weights": mining_model_fingerprint(cfg), "precision": cfg.hardware.precision}
    if (backend := configured_backend(cfg.hardware)) != "torch":
        key["backend"] = backend
    return key


def _embeddings_model_key(cfg: DictConfig) -> str:
    """The model part of the corpus-embedding cache key (:func:`~distillrank.evaluation.dense.model_key`:
    the weights, and the backend when not PyTorch), the same as evaluate's for a saved student."""
    return model_key(mining_model_path(cfg), configured_backend(cfg.hardware))


def load_mining_encoder(cfg: DictConfig) -> BiEncoder:
    """The mining bi-encoder, with ``mining.query_max_length`` / ``passage_max_length`` when set."""
    m = cfg.mining
    return BiEncoder.load(
        mining_model_path(cfg), query_max_length=m.query_max_length, passage_max_length=m.passage_max_length
    )


@dataclass(frozen=True)
class MiningEmbeddings:
    """The mining encoder, the runtime it encodes under and its corpus embeddings (cached)."""

    encoder: BiEncoder
    runtime: Runtime
    matrix: np.ndarray
    rate: float | None  # passages per second of this process's encoding; None: from the cache
    folder: Path


def corpus_embeddings(cfg: DictConfig, coll, progress: bool = True, share: Share = WHOLE) -> MiningEmbeddings:
    """The mining model and its corpus embeddings, from the workspace cache or encoded into it.

    With ``share`` a rank of a ``torchrun`` group, each rank encodes its part of the corpus
    (:func:`~distillrank.evaluation.dense.cached_corpus_embeddings`): every rank of the group must call
    this.
    """
    encoder = load_mining_encoder(cfg)
    m = cfg.mining
    runtime = configure(
        cfg.hardware
    )  # the stage's hardware (this function is called with the stage's config)
    encoder.eval().requires_grad_(False)  # frozen: it only encodes
    if runtime.backend == "onnx":  # the frozen mining encoder, run by ONNX Runtime (fp32)
        encoder.backbone = OnnxBackbone.build(encoder.backbone, "last_hidden_state")
    else:  # bf16 / fp16: its linear weights in that dtype once (bit-identical to autocast's casts)
        cast_linear_weights(encoder, runtime.precision)
    runtime = runtime.on(share.device(runtime.device))  # a torchrun rank's GPU
    matrix, rate, folder = cached_corpus_embeddings(
        encoder,
        coll,
        cache_dir(cfg),
        _embeddings_model_key(cfg),
        m.batch_size,
        _CHUNK,
        runtime,
        name="mine",
        progress=progress,
        share=share,
    )
    return MiningEmbeddings(encoder, runtime, matrix, rate, folder)


def dense_search(
    cfg: DictConfig,
    coll,
    query_texts: Sequence[str],
    depth: int,
    progress: bool = True,
    share: Share = WHOLE,
    embeddings: MiningEmbeddings | None = None,
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Top-``depth`` corpus rows and dense scores per query, [Q, k] each, best first.

    Args:
        share: this process among the job's workers (:func:`corpus_embeddings`; every rank of a
            ``torchrun`` group must then call this).
        embeddings: the corpus embeddings of :func:`corpus_embeddings`, when made already (``share``
            is then unused).

    Returns:
        rows, scores and info (``embeddings_cached``: whether the corpus matrix came from the cache,
        ``passages_per_s``: the encoding rate when it did not).
    """
    got = embeddings or corpus_embeddings(cfg, coll, progress, share)
    encoder, runtime, matrix, rate, folder = got.encoder, got.runtime, got.matrix, got.rate, got.folder
    m = cfg.mining
    backend = m.index
    if backend == "faiss":
        index = faiss_index.load_or_build(matrix, folder, str(m.faiss_factory), seed=int(cfg.seed))
        q_emb = (
            encoder.to(runtime.device)
            .eval()
            .encode(list(query_texts), "query", m.batch_size, runtime, progress=False)
        )
        rows_np, scores_np = faiss_index.search(index, q_emb.float().cpu().numpy(), depth, runtime.device)
    elif backend == "exact":
        scores, rows = search(encoder, matrix, query_texts, depth, m.batch_size, _CHUNK, runtime)
        rows_np, scores_np = rows.numpy().astype(np.int64), scores.numpy().astype(np.float32)
    else:
        raise ConfigError(f"mining.index={backend!r}; expected exact or faiss")
    info = {
        "embeddings_cached": rate is None,
        "passages_per_s": rate,
        "embeddings": str(folder),
        "index": backend,
    }
    return rows_np, scores_np, info
