"""A cross-encoder teacher (a Hugging Face sequence-classification checkpoint)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from distillrank.models.cross_encoder import CrossEncoderModel
from distillrank.models.hub import resolve_model
from distillrank.runtime import autocast
from distillrank.workspace import dir_fingerprint, fingerprint


class CrossEncoderTeacher:
    """Scores each (query, passage) pair jointly; the strongest and slowest kind of teacher.

    Args:
        model: folder or hub id of a sequence-classification checkpoint
            (e.g. ``cross-encoder/ms-marco-MiniLM-L6-v2``).
        max_length: truncation length of the joined pair, in tokens.
        batch_size: pairs per batch (batches are formed from length-sorted pairs).
    """

    kind = "cross_encoder"

    def __init__(self, model: str, max_length: int = 512, batch_size: int = 32) -> None:
        self.model = model
        self.max_length = max_length
        self.batch_size = batch_size
        self._model: CrossEncoderModel | None = None

    def fingerprint(self) -> str:
        return fingerprint(
            {"kind": self.kind, "weights": dir_fingerprint(resolve_model(self.model)), "max_length": self.max_length}
        )

    def cross_encoder(self, device: torch.device) -> CrossEncoderModel:
        """The loaded model, frozen, on ``device`` (loaded once)."""
        if self._model is None:
            self._model = CrossEncoderModel.load(self.model, self.max_length).eval()
            self._model.requires_grad_(False)
        return self._model.to(device)

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
        model = self.cross_encoder(device)
        return model.predict(
            [queries[i] for i in pair_q],
            [passages[i] for i in pair_p],
            batch_size=self.batch_size,
            autocast=lambda: autocast(device, precision),
            progress=progress,
            desc="teacher: pairs",
        )
