"""What every teacher provides."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import torch


class Teacher(Protocol):
    """A ranker whose scores the student learns from.

    Pairs are given as indices into de-duplicated query and passage lists, so a teacher that encodes
    texts independently (a bi-encoder) encodes each distinct text once.
    ``progress`` enables the teacher's own per-call progress bars (the score stage also shows one bar
    over all pairs of the run, with pairs/s and ETA).
    """

    def fingerprint(self) -> str:
        """Identifies the scores this teacher produces (weights + settings); keys the score cache."""
        ...

    def score(
        self,
        queries: Sequence[str],
        passages: Sequence[str],
        pair_q: np.ndarray,
        pair_p: np.ndarray,
        device: torch.device,
        precision: str,
        progress: bool = True,
        *,
        qids: Sequence[str] | None = None,
        docids: Sequence[str] | None = None,
    ) -> np.ndarray:
        """Scores [len(pair_q)] of the pairs (queries[pair_q[i]], passages[pair_p[i]]), float32.

        ``qids`` / ``docids`` name the entries of ``queries`` / ``passages`` (same order). Models
        ignore them; a teacher that looks scores up (``PrecomputedTeacher``) needs them.
        """
        ...


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
    it is a bi-encoder, else the first bi-encoder member of an ensemble.

    Raises:
        ConfigError: no member embeds texts (a cross-encoder, BM25, a score file, ...).
    """
    from distillrank.errors import ConfigError

    for member in [teacher, *getattr(teacher, "members", [])]:
        if getattr(member, "kind", None) == "bi_encoder" and hasattr(member, "encoder"):
            return member
    raise ConfigError(
        f"feature distillation regresses the teacher's embeddings, and a {getattr(teacher, 'kind', type(teacher).__name__)} "
        "teacher has none: use teacher=bi_encoder, or an ensemble with a bi-encoder member"
    )
