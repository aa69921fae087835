"""Teachers: the rankers whose scores students learn from (config group ``teacher/``)."""

from distillrank.teachers.base import Teacher
from distillrank.teachers.bi_encoder import BiEncoderTeacher
from distillrank.teachers.cross_encoder import CrossEncoderTeacher

__all__ = ["BiEncoderTeacher", "CrossEncoderTeacher", "Teacher"]
