"""A weighted sum of losses, built from a config by Hydra's recursive instantiation."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn


class WeightedSum(nn.Module):
    """``Σ_name weight_name · loss_name(student, teacher)`` over named loss terms.

    Meant to be built by ``hydra.utils.instantiate`` from a config such as (the recipe of Tamber et
    al. 2025, listwise KL plus a small InfoNCE term)::

        _target_: distillrank.losses.WeightedSum
        terms:
          kl: {weight: 1.0, loss: {_target_: distillrank.losses.KLDivergenceLoss, ...}}
          infonce: {weight: 0.1, loss: {_target_: distillrank.losses.InfoNCELoss, ...}}

    Hydra instantiates the inner ``loss`` nodes first (recursive instantiation), so each term arrives
    as a mapping (a ``dict`` or an OmegaConf ``DictConfig``) holding a built ``nn.Module`` and a weight.

    Args:
        terms: name → ``{"loss": nn.Module, "weight": float}``; ``weight`` defaults to 1.0, and a bare
            ``nn.Module`` counts as weight 1.0.

    Shapes:
        student: [B, L] scores, laid out as the terms' losses expect.
        teacher: [B, L] scores, same layout.

    Raises:
        ValueError: when ``terms`` is empty, a term has no built loss, or a weight is not finite.
    """

    def __init__(self, terms: Mapping[str, Any]) -> None:
        super().__init__()
        if not terms:
            raise ValueError("WeightedSum needs at least one term")
        losses: dict[str, nn.Module] = {}
        self.weights: dict[str, float] = {}
        for name, term in terms.items():
            if isinstance(term, nn.Module):
                loss, weight = term, 1.0
            elif isinstance(term, Mapping) and "loss" in term:
                loss, weight = term["loss"], term.get("weight", 1.0)
            else:
                raise ValueError(f"term {name!r} must be a loss module or a mapping with 'loss' and 'weight'")
            if not isinstance(loss, nn.Module):
                raise ValueError(
                    f"term {name!r}: 'loss' must be a built nn.Module, got {type(loss).__name__} "
                    "(instantiate the config recursively)"
                )
            weight = float(weight)
            if weight != weight or weight in (float("inf"), float("-inf")):
                raise ValueError(f"term {name!r}: weight must be finite; got {weight}")
            losses[str(name)] = loss
            self.weights[str(name)] = weight
        self.terms = nn.ModuleDict(losses)

    @property
    def uses_in_batch(self) -> bool:
        """True when a term asks for in-batch scores (e.g. InfoNCE with in-batch negatives)."""
        return any(getattr(loss, "uses_in_batch", False) for loss in self.terms.values())

    @property
    def uses_features(self) -> bool:
        """True when a term learns from embeddings (:class:`~distillrank.losses.feature.Features`)."""
        return any(getattr(loss, "uses_features", False) for loss in self.terms.values())

    @property
    def uses_scores(self) -> bool:
        """True when a term learns from teacher scores (a ranking loss): only then does training
        need mined and scored candidates."""
        return any(uses_scores(loss) for loss in self.terms.values())

    def setup(self, student_dim: int, teacher_dim: int) -> None:
        """Pass the embedding widths to every feature term (their projections are created here)."""
        for loss in self.terms.values():
            if hasattr(loss, "setup"):
                loss.setup(student_dim, teacher_dim)

    def forward(
        self,
        student: torch.Tensor | None,
        teacher: torch.Tensor | None,
        in_batch: Any = None,
        features: Any = None,
    ) -> torch.Tensor:
        """The weighted sum; ``in_batch`` (see :class:`distillrank.losses.infonce.InBatch`) goes
        only to the terms whose ``uses_in_batch`` is true, ``features`` (see
        :class:`distillrank.losses.feature.Features`) only to those whose ``uses_features`` is true.
        With ``student`` None (a step with embeddings only: label-free training), the score terms
        are skipped."""
        total = None
        for name, loss in self.terms.items():
            if getattr(loss, "uses_features", False):
                if features is None:
                    continue
                value = self.weights[name] * loss(student, teacher, features=features)
            elif student is None:
                continue
            elif in_batch is not None and getattr(loss, "uses_in_batch", False):
                value = self.weights[name] * loss(student, teacher, in_batch=in_batch)
            else:
                value = self.weights[name] * loss(student, teacher)
            total = value if total is None else total + value
        if total is None:
            raise ValueError("WeightedSum got neither scores for its ranking terms nor features for its feature terms")
        return total


def uses_scores(loss: nn.Module) -> bool:
    """Whether ``loss`` learns from teacher scores (every loss but a pure feature loss does)."""
    if isinstance(loss, WeightedSum):
        return loss.uses_scores
    return not getattr(loss, "uses_features", False)
