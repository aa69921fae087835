"""InfoNCE, optionally with teacher-denoised negatives."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from distillrank.losses._common import check_positive, check_scores


@dataclass
class InBatch:
    """The in-batch scores a training loop gives a loss whose ``uses_in_batch`` is true.

    scores: [B, P] student scores of each query against every distinct passage of the batch.
    index: [B, L] long — row b's own list (column 0 its positive) as columns of ``scores``.
    exclude: [B, P] bool — passages that must not count as negatives of query b: its other known
        positives (a positive of query b met as another query's passage). Row b's own list is
        handled through ``index`` and need not be marked.
    """

    scores: torch.Tensor
    index: torch.Tensor
    exclude: torch.Tensor


class InfoNCELoss(nn.Module):
    """Cross-entropy of the positive (column 0) against the row's negatives, on student scores / τ.

    Per row: ``−s_0/τ + log Σ_j exp(s_j/τ)``, averaged over the batch. With ``false_negative_margin =
    m`` set, negatives the teacher scores close to or above the positive — ``t_j ≥ t_0 − m`` — are
    treated as likely false negatives and left out of the sum (their logits are set to −inf); the
    positive is always kept, so a row whose negatives are all removed contributes 0. Adding a
    constant to a row of student or teacher scores changes nothing.

    Originally proposed in van den Oord et al., "Representation Learning with Contrastive Predictive
    Coding" (2018), and for dense retrieval in Karpukhin et al., "Dense Passage Retrieval for
    Open-Domain Question Answering" (2020); the teacher-based removal of false negatives follows the
    de-noising of hard negatives with a cross-encoder (e.g. RocketQA, Qu et al. 2021).

    With ``in_batch_negatives`` (the default) and a training loop that passes ``in_batch``
    (:class:`InBatch`, for students that score every query against every passage of the batch:
    bi-encoders, ColBERT), the softmax of row b runs over every distinct passage of the batch —
    its own positive and hard negatives plus the other queries' positives and negatives (DPR's
    in-batch negatives) — except passages known to be positives of query b and its own negatives
    removed by the false-negative margin. Without ``in_batch`` (e.g. a cross-encoder student) the
    loss falls back to the row's own list.

    Args:
        temperature: τ, divides the student scores (> 0).
        false_negative_margin: m; ``None`` keeps every negative.
        in_batch_negatives: ask the loop for in-batch scores (``uses_in_batch``).

    Shapes:
        student: [B, 1 + n] scores, column 0 the positive.
        teacher: [B, 1 + n] scores, same layout (only used with ``false_negative_margin``).
        in_batch: optional :class:`InBatch` ([B, P] scores, [B, L] index, [B, P] exclusions).
    """

    def __init__(
        self,
        temperature: float = 0.05,
        false_negative_margin: float | None = None,
        in_batch_negatives: bool = True,
    ) -> None:
        super().__init__()
        self.temperature = check_positive("temperature", temperature)
        self.false_negative_margin = None if false_negative_margin is None else float(false_negative_margin)
        self.in_batch_negatives = bool(in_batch_negatives)

    @property
    def uses_in_batch(self) -> bool:
        """Whether the training loop should pass ``in_batch`` scores."""
        return self.in_batch_negatives

    def forward(
        self,
        student: torch.Tensor,
        teacher: torch.Tensor,
        in_batch: InBatch | None = None,
    ) -> torch.Tensor:
        teacher = check_scores(student, teacher)
        drop = None
        if self.false_negative_margin is not None:
            drop = teacher >= teacher[:, :1] - self.false_negative_margin
            drop[:, 0] = False
        if in_batch is None or not self.in_batch_negatives:
            logits = student / self.temperature
            if drop is not None:
                logits = logits.masked_fill(drop, float("-inf"))
            target = torch.zeros(student.shape[0], dtype=torch.long, device=student.device)
            return F.cross_entropy(logits, target)
        scores, index = in_batch.scores, in_batch.index.to(in_batch.scores.device)
        if scores.shape[0] != student.shape[0] or index.shape != student.shape:
            raise ValueError(
                f"in_batch: expected scores [B={student.shape[0]}, P] and index {tuple(student.shape)}; "
                f"got {tuple(scores.shape)} and {tuple(index.shape)}"
            )
        exclude = in_batch.exclude.to(scores.device).clone()
        if drop is not None:
            exclude |= torch.zeros_like(exclude).scatter(1, index, drop.to(scores.device))
        target = index[:, 0]
        exclude[torch.arange(len(target), device=scores.device), target] = False
        logits = (scores / self.temperature).masked_fill(exclude, float("-inf"))
        return F.cross_entropy(logits, target)
