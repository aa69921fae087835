"""Teachers: the rankers whose scores students learn from (config group ``teacher/``)."""

from distillrank.teachers.base import Teacher
from distillrank.teachers.bi_encoder import BiEncoderTeacher
from distillrank.teachers.cross_encoder import CrossEncoderTeacher
from distillrank.teachers.ensemble import EnsembleTeacher
from distillrank.teachers.late_interaction import ColBERTTeacher
from distillrank.teachers.lexical import BM25Teacher
from distillrank.teachers.precomputed import PrecomputedTeacher
from distillrank.teachers.seq2seq import MonoT5Teacher

__all__ = ["BM25Teacher", "BiEncoderTeacher", "ColBERTTeacher", "CrossEncoderTeacher", "EnsembleTeacher", "MonoT5Teacher", "PrecomputedTeacher", "Teacher"]
