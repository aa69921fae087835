"""Students: the small, fast models being trained (config group ``student/``)."""

from distillrank.students.bi_encoder import bi_encoder

__all__ = ["bi_encoder"]
