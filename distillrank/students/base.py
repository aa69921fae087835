"""The student protocol: what the training loop, the dev evaluation and the evaluate stage need.

A :class:`Student` wraps one model (a :class:`~distillrank.models.bi_encoder.BiEncoder`, a
:class:`~distillrank.models.cross_encoder.CrossEncoderModel`, a ColBERT model) as an ``nn.Module``
(``self.model``), so ``train()``, ``eval()``, ``to()``, ``parameters()`` and ``state_dict()`` reach
the wrapped weights. Its ``forward`` is the training-time scoring of a batch:

* ``queries``: B query texts;
* ``passages``: the P distinct passage texts of the batch (each encoded once);
* ``index``: a LongTensor [B, L] — row b's list (1 positive + n negatives) as positions in
  ``passages``;
* ``in_batch``: also return the [B, P] matrix of every query against every distinct passage of the
  batch (only for students with ``supports_in_batch``: bi-encoders and late interaction; a
  cross-encoder would have to score B × P pairs).

It returns :class:`BatchScores`: ``groups`` [B, L] and ``matrix`` [B, P] or None, differentiable.
A student with ``supports_gather`` (the bi-encoder) also takes ``gather``: a function from the
embeddings of ``passages`` (this rank's share) to those of the whole global batch (the data-parallel
``train.gather_negatives``), which ``index`` and the matrix's columns then refer to.
Making this the ``forward`` keeps every student usable under ``torch.nn.parallel`` wrappers.

:meth:`Student.score_pairs` scores arbitrary (query, passage) pairs without gradients: a student is
a :class:`~distillrank.ranking.Ranker` like every teacher, and the dev evaluation, the evaluate stage
and the report re-rank candidates through that interface.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from distillrank.ranking import Pairs, RankerKind
from distillrank.runtime import Runtime
from distillrank.workspace import dir_fingerprint, fingerprint


@dataclass
class BatchScores:
    """Student scores of a training batch.

    groups: [B, L] — row b's scores of its own list (column 0 the positive).
    matrix: [B, P] — every query against every distinct passage of the batch, or None.
    """

    groups: torch.Tensor
    matrix: torch.Tensor | None = None


@dataclass(frozen=True)
class Description:
    """How a student kind describes its exported folder (the model card, error messages)."""

    title: str  # what the model is: "a distilled bi-encoder"
    library: str  # the library that loads the folder (the model card's library_name)
    usage: str  # how to load it, in Python; PATH stands for the folder
    folder: str  # what marks a saved folder of this kind: "modules.json (bi-encoder)"


class Student(nn.Module):
    """Base class of the student adapters (see the module docstring for the protocol).

    A subclass is one student kind: it declares its ``kind``, the model class its configs build
    (``model_type``) and its :class:`Description`, and says how to recognise (:meth:`detect`) and
    :meth:`load` a folder it saved. :mod:`distillrank.students.factory` iterates over the kinds.

    ``source``: the folder the student was loaded from (None for a model built in memory).
    """

    kind: RankerKind  # also the folder format of ``save``: bi_encoder | cross_encoder | colbert
    model_type: type[nn.Module]  # what a student config of this kind builds (``_target_``)
    description: Description
    retrieves: bool = False  # a bi-encoder: encoder(runtime) embeds a corpus once
    batch_size: int = 64  # texts (or pairs) per inference batch when score_pairs is given none
    supports_in_batch: bool = False
    supports_gather: bool = False  # forward(..., gather=f): in-batch passages gathered over the ranks
    supports_features: bool = False  # has one embedding per text (feature distillation)

    def __init__(self, model: nn.Module, source: str | Path | None = None) -> None:
        super().__init__()
        self.model = model
        self.source = None if source is None else Path(source)

    # ------------------------------------------------------------------ the kind
    @classmethod
    def detect(cls, folder: Path) -> bool:
        """Whether ``folder`` is a student of this kind, saved by :meth:`save`."""
        raise NotImplementedError

    @classmethod
    def load(cls, folder: Path, max_length: int | None = None) -> Student:
        """The student saved in ``folder``, on the CPU, in eval mode (``max_length``: a pair's
        truncation length, for kinds that read pairs jointly)."""
        raise NotImplementedError

    @classmethod
    def describe(cls) -> Description:
        """What the exported folder is and how to load it."""
        return cls.description

    @classmethod
    def builds(cls, built: type) -> bool:
        """Whether a student config that builds ``built`` (a class) is of this kind."""
        return issubclass(built, (cls, cls.model_type))

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def forward(
        self, queries: Sequence[str], passages: Sequence[str], index: torch.Tensor, in_batch: bool = False
    ) -> BatchScores:
        raise NotImplementedError

    @property
    def embedding_dim(self) -> int:
        """The width of :meth:`embed`'s vectors."""
        raise NotImplementedError

    def embed(self, texts: Sequence[str], kind: str) -> torch.Tensor:
        """One differentiable embedding [len(texts), embedding_dim] per text (``kind``: ``query`` or
        ``passage``), the vector feature distillation regresses onto the teacher's. Only students with
        ``supports_features``."""
        raise NotImplementedError

    # ------------------------------------------------------------------ the Ranker interface
    def score_pairs(
        self, pairs: Pairs, runtime: Runtime, *, batch_size: int | None = None, progress: bool = False
    ) -> np.ndarray:
        """Scores [len(pairs)] (float32) of the pairs, ``batch_size`` texts or pairs per batch (None:
        :attr:`batch_size`). Inference only (no gradients); the train/eval mode is restored afterwards."""
        raise NotImplementedError

    def fingerprint(self, runtime: Runtime | None = None) -> str:
        """The kind and the weights: a loaded student's folder, else its tensors (the runtime does
        not change a student's identity)."""
        return fingerprint({"kind": self.kind.value, "weights": self._weights_fingerprint()})

    def _weights_fingerprint(self) -> str:
        if self.source is not None:
            return dir_fingerprint(self.source)
        digest = hashlib.sha256()
        for name, tensor in sorted(self.model.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()

    def module(self, runtime: Runtime | None = None) -> nn.Module:
        """The student itself (its parameters are the model's)."""
        return self

    def weights_folder(self) -> Path | None:
        """The folder the student was loaded from (None: built in memory)."""
        return self.source

    def save(self, path: str | Path, model_card: str | None = None) -> Path:
        """Export the trained model (format per ``kind``), atomically."""
        return self.model.save(path, model_card=model_card)


def check_in_batch(student: Student, in_batch: bool) -> None:
    """Fail clearly when a loss asks for in-batch scores a student cannot give."""
    if in_batch and not student.supports_in_batch:
        from distillrank.errors import ConfigError

        raise ConfigError(
            f"the loss needs in-batch negatives, which a {student.kind} student cannot score "
            "(it would have to score every query with every passage of the batch); "
            "use a loss without in-batch negatives (e.g. loss.in_batch_negatives=false for infonce)"
        )
