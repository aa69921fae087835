"""From a model to its student adapter, and from a saved folder back to a student.

``as_student(model)`` wraps what ``instantiate(cfg.student)`` builds; ``load_student(path)`` reads
a folder the train stage exported (what the evaluate stage calls to re-rank with a trained student).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from torch import nn

from distillrank.errors import ConfigError
from distillrank.models.bi_encoder import BiEncoder
from distillrank.models.cross_encoder import CrossEncoderModel
from distillrank.students.base import Student
from distillrank.students.bi_encoder import BiEncoderStudent
from distillrank.students.cross_encoder import CrossEncoderStudent

KINDS = ("bi_encoder", "cross_encoder", "colbert")


def _colbert_types() -> tuple[type, type] | None:
    """(ColBERTModel, ColBERTStudent) when the ColBERT student module exists, else None."""
    if any(importlib.util.find_spec(f"distillrank.{m}.colbert") is None for m in ("models", "students")):
        return None
    from distillrank.models.colbert import ColBERTModel
    from distillrank.students.colbert import ColBERTStudent

    return ColBERTModel, ColBERTStudent


def as_student(model: nn.Module) -> Student:
    """The student adapter of a built model (a :class:`Student` is returned as is).

    Raises:
        ConfigError: for a model no adapter knows.
    """
    if isinstance(model, Student):
        return model
    if isinstance(model, BiEncoder):
        return BiEncoderStudent(model)
    if isinstance(model, CrossEncoderModel):
        return CrossEncoderStudent(model)
    colbert = _colbert_types()
    if colbert is not None and isinstance(model, colbert[0]):
        return colbert[1](model)
    raise ConfigError(
        f"the student is a {type(model).__name__}; a student config must build a BiEncoder, a "
        f"CrossEncoderModel or a ColBERTModel (student kinds: {', '.join(KINDS)})"
    )


def student_kind(path: str | Path) -> str:
    """The kind of a saved student folder: ``colbert`` (our ColBERT metadata), ``bi_encoder``
    (a sentence-transformers folder: ``modules.json``) or ``cross_encoder`` (a Hugging Face
    sequence-classification folder)."""
    path = Path(path)
    colbert = _colbert_types()
    if colbert is not None:
        from distillrank.students.colbert import is_colbert_folder

        if is_colbert_folder(path):
            return "colbert"
    if (path / "modules.json").is_file():
        return "bi_encoder"
    config = path / "config.json"
    if config.is_file():
        architectures = json.loads(config.read_text(encoding="utf-8")).get("architectures") or []
        if any(a.endswith("ForSequenceClassification") for a in architectures):
            return "cross_encoder"
    raise ConfigError(
        f"{path} is not a saved student: expected modules.json (bi-encoder), a config.json of a "
        "*ForSequenceClassification model (cross-encoder) or a ColBERT folder"
    )


def load_student(path: str | Path, max_length: int | None = None) -> Student:
    """Load a student exported by the train stage, in eval mode, on the CPU.

    Args:
        path: the ``train/model`` folder (or any folder of one of the three formats).
        max_length: cross-encoder only: the pair truncation length (default 512).

    Returns:
        A :class:`Student`; score (query, passage) pairs with ``score_pairs``.
    """
    kind = student_kind(path)
    if kind == "bi_encoder":
        return BiEncoderStudent(BiEncoder.load(path), source=path).eval()
    if kind == "cross_encoder":
        return CrossEncoderStudent(CrossEncoderModel.load(path, max_length or 512), source=path).eval()
    colbert = _colbert_types()
    assert colbert is not None
    return colbert[1](colbert[0].load(path), source=path).eval()
