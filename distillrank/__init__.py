"""distillrank: distil a strong, slow ranker (the teacher) into a small, fast one (the student)."""

__version__ = "0.1.0"
