"""The dense mining encoder built from the config (``mining.*``, ``hardware``): its folder, the key of
its candidates, its corpus embeddings and its search, through :mod:`distillrank.mining.dense`, which
takes plain arguments.

Used by the mine stage, the stage keys, ``hardware=auto``'s calibration of the mining encoder and
evaluate's dense first stage (``evaluate.first_stage=dense``), which all read the same settings.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from distillrank.errors import ConfigError
from distillrank.evaluation.dense import model_key
from distillrank.mining.dense import MiningEmbeddings, dense_search, embed_corpus
from distillrank.models.bi_encoder import BiEncoder
from distillrank.models.hub import resolve_model
from distillrank.runtime import configure, configured_backend
from distillrank.sharding import WHOLE, Share
from distillrank.workspace import cache_dir, dir_fingerprint


def mining_model_path(cfg: DictConfig) -> Path:
    """The local folder of ``mining.model`` (a ConfigError when it is unset)."""
    if not cfg.mining.model:
        raise ConfigError(
            f"mining.method={cfg.mining.method} needs mining.model: a bi-encoder folder or hub id, "
            "e.g. mining.model=runs/<experiment>/train/model"
        )
    return resolve_model(str(cfg.mining.model))


def dense_key(cfg: DictConfig) -> dict:
    """What, besides the mining config itself, decides the dense candidates: weights (``dir_fingerprint``
    of the mining model's folder, memoised per size and mtime), precision and, when not PyTorch, the
    backend (``hardware.backend=onnx`` encodes with ONNX Runtime)."""
    key = {"weights": dir_fingerprint(mining_model_path(cfg)), "precision": cfg.hardware.precision}
    if (backend := configured_backend(cfg.hardware)) != "torch":
        key["backend"] = backend
    return key


def mining_encoder(cfg: DictConfig) -> BiEncoder:
    """The mining bi-encoder, with ``mining.query_max_length`` / ``passage_max_length`` when set."""
    m = cfg.mining
    return BiEncoder.load(
        mining_model_path(cfg), query_max_length=m.query_max_length, passage_max_length=m.passage_max_length
    )


def mining_embeddings(cfg: DictConfig, coll, progress: bool = True, share: Share = WHOLE) -> MiningEmbeddings:
    """The mining encoder and its corpus embeddings of ``coll``, from the workspace cache or encoded
    into it, under ``cfg.hardware`` (the stage's, resolved for the mining role). With ``share`` a rank
    of a ``torchrun`` group, every rank of the group must call this
    (:func:`~distillrank.mining.dense.embed_corpus`).

    The cache key's model part is :func:`~distillrank.evaluation.dense.model_key`: the weights, and
    the backend when not PyTorch, the same as evaluate's for a saved student.
    """
    key = model_key(mining_model_path(cfg), configured_backend(cfg.hardware))
    return embed_corpus(
        mining_encoder(cfg), configure(cfg.hardware), coll, cache_dir(cfg), key, int(cfg.mining.batch_size),
        progress=progress, share=share,
    )  # fmt: skip


def dense_candidates(
    cfg: DictConfig,
    coll,
    query_texts: Sequence[str],
    depth: int,
    progress: bool = True,
    share: Share = WHOLE,
    embeddings: MiningEmbeddings | None = None,
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Top-``depth`` corpus rows and dense scores per query (:func:`~distillrank.mining.dense.dense_search`
    with ``mining.index``, ``mining.faiss_factory`` and ``seed``) over ``embeddings`` when given (the
    mine stage's ranks encoded them together), else over :func:`mining_embeddings` (``share``: every
    rank of a ``torchrun`` group must then call this)."""
    got = embeddings or mining_embeddings(cfg, coll, progress, share)
    m = cfg.mining
    return dense_search(
        got, query_texts, depth, int(m.batch_size), index=str(m.index), faiss_factory=str(m.faiss_factory),
        seed=int(cfg.seed),
    )  # fmt: skip
