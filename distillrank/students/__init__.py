"""Students: the small, fast models being trained (config group ``student/``).

The config targets build models; :func:`as_student` wraps one behind the student protocol
(:class:`distillrank.students.base.Student`) the training loop uses, and :func:`load_student`
reads an exported student back for re-ranking.

``bi_encoder``: a dense retriever initialised from a backbone, optionally keeping only some of its
layers (see :meth:`distillrank.models.BiEncoder.from_backbone` for the arguments).
``cross_encoder``: a one-logit sequence-classification re-ranker over [query; passage]
(:meth:`distillrank.models.cross_encoder.CrossEncoderModel.from_backbone`).
"""

from distillrank.models.bi_encoder import BiEncoder
from distillrank.models.cross_encoder import CrossEncoderModel
from distillrank.students.base import BatchScores, Student
from distillrank.students.factory import as_student, load_student, student_kind

bi_encoder = BiEncoder.from_backbone
cross_encoder = CrossEncoderModel.from_backbone

__all__ = [
    "BatchScores",
    "Student",
    "as_student",
    "bi_encoder",
    "cross_encoder",
    "load_student",
    "student_kind",
]
