"""Students: the small, fast models being trained (config group ``student/``).

``bi_encoder``: a dense retriever initialised from a backbone, optionally keeping only some of its
layers (see :meth:`distillrank.models.BiEncoder.from_backbone` for the arguments).
"""

from distillrank.models.bi_encoder import BiEncoder

bi_encoder = BiEncoder.from_backbone

__all__ = ["bi_encoder"]
