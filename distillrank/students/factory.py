"""From a model to its student adapter, and from a saved folder back to a student.

The student kinds are the :class:`~distillrank.students.base.Student` subclasses listed in
:data:`KINDS`; each declares the model class it wraps, how to recognise and load a folder it saved
and how it describes itself. ``as_student(model)`` wraps what ``instantiate(cfg.student)`` builds;
``load_student(path)`` reads a folder the train stage exported (what the evaluate stage and the
report call); ``kind_of_builder(target)`` says which kind a student config builds without building it.

Adding a student kind: its module (the Student subclass, and its model), its ``conf/student`` YAML,
and its entry in :data:`KINDS`.
"""

from __future__ import annotations

import inspect
import typing
from pathlib import Path

from torch import nn

from distillrank.errors import ConfigError
from distillrank.ranking import RankerKind
from distillrank.students.base import Student
from distillrank.students.bi_encoder import BiEncoderStudent
from distillrank.students.colbert import ColBERTStudent
from distillrank.students.cross_encoder import CrossEncoderStudent

KINDS: tuple[type[Student], ...] = (ColBERTStudent, BiEncoderStudent, CrossEncoderStudent)
"""The student kinds, in the order a saved folder is matched (ColBERT first: its folder may also
hold a ``modules.json``)."""


def _one_of(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def as_student(model: nn.Module) -> Student:
    """The student adapter of a built model (a :class:`Student` is returned as is).

    Raises:
        ConfigError: for a model no student kind wraps.
    """
    if isinstance(model, Student):
        return model
    for kind in KINDS:
        if isinstance(model, kind.model_type):
            return kind(model)
    raise ConfigError(
        f"the student is a {type(model).__name__}; a student config must build "
        f"{_one_of([f'a {k.model_type.__name__}' for k in KINDS])} "
        f"(student kinds: {', '.join(str(k.kind) for k in KINDS)})"
    )


def kind_of_builder(target: object) -> type[Student]:
    """The student kind a student config builds, from its ``_target_`` (the imported object: a
    model class, a classmethod of one such as ``BiEncoder.from_backbone``, or a function annotated
    with the class it returns), without building it.

    Raises:
        ConfigError: the target builds no known student kind.
    """
    built = target if isinstance(target, type) else target.__self__ if inspect.ismethod(target) else None
    if not isinstance(built, type) and callable(target):
        try:
            built = typing.get_type_hints(target).get("return")
        except (NameError, TypeError):
            built = None
    for kind in KINDS:
        if isinstance(built, type) and kind.builds(built):
            return kind
    raise ConfigError(
        f"the student config builds {getattr(target, '__qualname__', target)!r}, which is no student kind's "
        f"model ({_one_of([k.model_type.__name__ for k in KINDS])})"
    )


def detect(path: str | Path) -> type[Student]:
    """The kind of a saved student folder: the first of :data:`KINDS` that recognises it.

    Raises:
        ConfigError: no kind recognises the folder.
    """
    path = Path(path)
    for kind in KINDS:
        if kind.detect(path):
            return kind
    raise ConfigError(
        f"{path} is not a saved student: expected {_one_of([k.describe().folder for k in KINDS])}"
    )


def student_kind(path: str | Path) -> RankerKind:
    """The kind of a saved student folder (``colbert``, ``bi_encoder``, ``cross_encoder``)."""
    return detect(path).kind


def load_student(path: str | Path, max_length: int | None = None) -> Student:
    """Load a student exported by the train stage, in eval mode, on the CPU.

    Args:
        path: the ``train/model`` folder (or any folder one of :data:`KINDS` recognises).
        max_length: cross-encoder only: the pair truncation length (default 512).

    Returns:
        A :class:`Student`; score (query, passage) pairs with ``score_pairs``.
    """
    return detect(path).load(Path(path), max_length)
