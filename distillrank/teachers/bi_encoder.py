"""A bi-encoder teacher (a sentence-transformers folder or hub id)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from distillrank.models.bi_encoder import BiEncoder
from distillrank.models.frozen import for_inference
from distillrank.models.hub import resolve_model
from distillrank.ranking import Pairs, RankerKind
from distillrank.runtime import Runtime, check_inference_precision
from distillrank.teachers.base import DEFAULT_RUNTIME, Teacher
from distillrank.workspace import dir_fingerprint


class BiEncoderTeacher(Teacher):
    """Scores pairs by the similarity of independently encoded query and passage.

    Args:
        model: folder or hub id (sentence-transformers format, or a plain HF encoder).
        query_max_length / passage_max_length: truncation lengths in tokens.
        batch_size: texts per encoding batch.
        pooling / similarity: override what the model folder says (None keeps it).

    Under an int8 runtime (CPU only) the frozen encoder's linear layers are quantized to int8 once,
    when it is loaded (:func:`distillrank.models.quantize.quantize_int8`); the fingerprint then
    includes the precision, so int8 scores are cached apart. Under bf16 / fp16 the frozen linear
    weights are stored in that dtype once, when it is loaded
    (:func:`distillrank.models.half_weights.cast_linear_weights`: bit-identical to autocast's
    casting, without its copies every forward); another precision loads the float weights again.
    """

    kind = RankerKind.BI_ENCODER
    retrieves = True  # encoder(runtime) embeds a corpus once; batch_size texts per batch
    supports_int8 = True
    supports_onnx = True

    def __init__(
        self,
        model: str,
        query_max_length: int = 64,
        passage_max_length: int = 256,
        batch_size: int = 64,
        pooling: str | None = None,
        similarity: str | None = None,
    ) -> None:
        self.model = model
        self.query_max_length = query_max_length
        self.passage_max_length = passage_max_length
        self.batch_size = batch_size
        self.pooling = pooling
        self.similarity = similarity
        self._encoder: BiEncoder | None = None
        self._mode: tuple[str, str] = ("torch", "fp32")  # (backend, precision) of the loaded encoder

    def identity(self, runtime: Runtime) -> dict:
        """Weights and settings; ``"precision": "int8"`` is added for int8 only (others score alike)."""
        extra = {"precision": "int8"} if runtime.int8 else {}
        return {
            "kind": "bi_encoder",
            "weights": dir_fingerprint(resolve_model(self.model)),
            "query_max_length": self.query_max_length,
            "passage_max_length": self.passage_max_length,
            "pooling": self.pooling,
            "similarity": self.similarity,
            **extra,
        }

    def encoder(self, runtime: Runtime = DEFAULT_RUNTIME) -> BiEncoder:
        """The loaded bi-encoder, frozen, on the runtime's device (loaded once per
        precision and backend; quantized once for int8; its linear weights in bf16 / fp16 once for
        those; in ONNX Runtime for the onnx backend).

        Raises:
            ConfigError: int8 on a device other than the CPU.
        """
        mode = (runtime.backend, check_inference_precision(runtime.precision, runtime.device))
        if self._encoder is not None and self._mode != mode:
            self._encoder = None  # asked for another precision or backend: reload the float weights
        if self._encoder is None:
            encoder = BiEncoder.load(
                self.model,
                pooling=self.pooling,
                similarity=self.similarity,
                query_max_length=self.query_max_length,
                passage_max_length=self.passage_max_length,
            )
            self._encoder = for_inference(encoder, *mode, "backbone", "last_hidden_state")
            self._mode = mode
        return self._encoder.to(runtime.device)

    def score_pairs(
        self, pairs: Pairs, runtime: Runtime, *, batch_size: int | None = None, progress: bool = False
    ) -> np.ndarray:
        return self.encoder(runtime).pair_scores(pairs, batch_size or self.batch_size, runtime, progress, "teacher")

    def module(self, runtime: Runtime) -> BiEncoder:
        return self.encoder(runtime)

    def weights_folder(self) -> Path:
        return resolve_model(self.model)
