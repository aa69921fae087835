"""Model wrappers shared by teachers and students: bi-encoder, cross-encoder, hub resolution."""

from distillrank.models.bi_encoder import BiEncoder
from distillrank.models.cross_encoder import CrossEncoderModel
from distillrank.models.hub import resolve_model

__all__ = ["BiEncoder", "CrossEncoderModel", "resolve_model"]
