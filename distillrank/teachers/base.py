"""What every teacher provides: the :class:`~distillrank.ranking.Ranker` interface, with the
defaults and the fingerprint of :class:`Teacher`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from torch import nn

from distillrank.errors import ConfigError
from distillrank.ranking import Pairs, RankerKind
from distillrank.runtime import Runtime
from distillrank.workspace import fingerprint

DEFAULT_RUNTIME = Runtime()  # the CPU in fp32 on PyTorch: the fingerprint caches written before runtimes


class Teacher:
    """A ranker whose scores the student learns from (a :class:`~distillrank.ranking.Ranker`).

    A subclass declares its ``kind`` (and ``retrieves = True`` when it is a bi-encoder, with
    ``encoder(runtime)`` and ``batch_size``), gives :meth:`identity` (what decides its scores) and
    :meth:`score_pairs`, and, when it has weights, :meth:`module` and :meth:`weights`.

    It also declares what it supports: ``supports_int8`` (it can be quantized, or has no weights)
    and ``supports_onnx`` (it runs in ONNX Runtime, or has no weights); :meth:`fingerprint` refuses
    a runtime it does not support.

    Pairs come as indices into de-duplicated query and passage lists (:class:`Pairs`), so a teacher
    that encodes texts independently (a bi-encoder) encodes each distinct text once. ``progress``
    enables the teacher's own per-call progress bars (the score stage also shows one bar over all
    pairs of the run, with pairs/s and ETA).
    """

    kind: RankerKind
    retrieves: bool = False
    supports_int8: bool = False
    supports_onnx: bool = False

    def identity(self, runtime: Runtime) -> dict:
        """What decides this teacher's scores under ``runtime`` (weights, settings): what
        :meth:`fingerprint` hashes. Changing it changes every cached score of the teacher."""
        raise NotImplementedError

    def fingerprint(self, runtime: Runtime = DEFAULT_RUNTIME) -> str:
        """Identifies the scores this teacher produces under ``runtime``; keys the score cache.

        Teachers that quantize (``supports_int8``) take the precision into their identity when it
        is int8 (int8 scores differ from fp32 ones); every other precision leaves the fingerprint
        unchanged, so caches written before int8 existed stay valid. ``backend="onnx"`` wraps the
        fingerprint with the backend, so ONNX Runtime scores are cached apart from PyTorch ones;
        ``torch`` leaves it unchanged.

        Raises:
            ConfigError: int8 with a teacher that cannot be quantized, or onnx with a teacher that
                cannot run in ONNX Runtime.
        """
        check_runtime(self, runtime)
        base = fingerprint(self.identity(runtime))
        return base if runtime.backend == "torch" else fingerprint({"teacher": base, "backend": runtime.backend})

    def score_pairs(
        self, pairs: Pairs, runtime: Runtime, *, batch_size: int | None = None, progress: bool = False
    ) -> np.ndarray:
        """Scores [len(pairs)] of the pairs, float32 (``batch_size``: None for the teacher's own)."""
        raise NotImplementedError

    def module(self, runtime: Runtime) -> nn.Module | None:
        """The loaded torch module that scores (None: this teacher has no weights)."""
        return None

    def weights_folder(self) -> Path | None:
        """The folder of the teacher's weights (None: it has none)."""
        return None


def members(teacher) -> list:
    """The teachers scored one by one: an ensemble's members, else the teacher itself."""
    return list(teacher.members) if teacher.kind is RankerKind.ENSEMBLE else [teacher]


def check_runtime(teacher, runtime: Runtime) -> None:
    """Refuse a runtime ``teacher`` does not support (what its ``supports_int8`` / ``supports_onnx`` say).

    Raises:
        ConfigError: int8 with a teacher that cannot be quantized, or onnx with a teacher that
            cannot run in ONNX Runtime.
    """
    if runtime.int8 and not teacher.supports_int8:
        raise ConfigError(
            f"hardware.precision=int8 is supported by the bi_encoder and cross_encoder teachers, "
            f"not by {teacher.kind}; use hardware.precision=fp32"
        )
    if runtime.backend != "torch" and not teacher.supports_onnx:
        raise ConfigError(
            f"hardware.backend=onnx is supported by the bi_encoder and cross_encoder teachers (and "
            f"ensembles of them), not by {teacher.kind}; use hardware.backend=torch"
        )


def describe(config) -> str:
    """One line naming the teacher of a ``teacher`` config (a mapping, ``_target_`` included), for
    model cards and reports: its model, BM25's parameters, a score file, or an ensemble's members."""
    config = dict(config or {})
    target = str(config.get("_target_", "")).rsplit(".", 1)[-1]
    if config.get("members"):
        members = " + ".join(describe(m) for m in config["members"])
        weights = config.get("weights")
        scope = "per query" if config.get("scope", "query") == "query" else "global"
        return f"ensemble of {members} ({config.get('normalize', 'zscore')} {scope}" + (
            f", weights {list(weights)})" if weights else ")"
        )
    if target == "BM25Teacher":
        return f"BM25 (k1={config.get('k1', 0.9)}, b={config.get('b', 0.4)})"
    if config.get("model"):
        return str(config["model"])
    if config.get("path"):
        return f"scores from {config['path']}"
    return target or "unknown teacher"


def embedding_source(teacher):
    """The part of ``teacher`` that embeds texts, for feature distillation: the teacher itself when
    it retrieves (a bi-encoder), else the first retrieving member of an ensemble.

    Raises:
        ConfigError: no member embeds texts (a cross-encoder, BM25, a score file, ...).
    """
    for member in [teacher, *(members(teacher) if teacher.kind is RankerKind.ENSEMBLE else [])]:
        if member.retrieves:
            return member
    raise ConfigError(
        f"feature distillation regresses the teacher's embeddings, and a {teacher.kind} "
        "teacher has none: use teacher=bi_encoder, or an ensemble with a bi-encoder member"
    )
