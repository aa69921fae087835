"""A cross-encoder teacher (a Hugging Face sequence-classification checkpoint)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from distillrank.models.cross_encoder import CrossEncoderModel
from distillrank.models.frozen import for_inference
from distillrank.models.hub import resolve_model
from distillrank.ranking import Pairs, RankerKind
from distillrank.runtime import Runtime, check_inference_precision
from distillrank.teachers.base import DEFAULT_RUNTIME, Teacher
from distillrank.workspace import dir_fingerprint


class CrossEncoderTeacher(Teacher):
    """Scores each (query, passage) pair jointly; the strongest and slowest kind of teacher.

    Args:
        model: folder or hub id of a sequence-classification checkpoint
            (e.g. ``cross-encoder/ms-marco-MiniLM-L6-v2``).
        max_length: truncation length of the joined pair, in tokens.
        batch_size: pairs per batch (batches are formed from length-sorted pairs).

    Under an int8 runtime (CPU only) the frozen model's linear layers are quantized to int8 once,
    when it is loaded (:func:`distillrank.models.quantize.quantize_int8`); the fingerprint then
    includes the precision, so int8 scores are cached apart. Under bf16 / fp16 the frozen linear
    weights are stored in that dtype once, when it is loaded
    (:func:`distillrank.models.half_weights.cast_linear_weights`: bit-identical to autocast's
    casting, without its copies every forward); another precision loads the float weights again.
    """

    kind = RankerKind.CROSS_ENCODER
    supports_int8 = True
    supports_onnx = True

    def __init__(self, model: str, max_length: int = 512, batch_size: int = 32) -> None:
        self.model = model
        self.max_length = max_length
        self.batch_size = batch_size
        self._model: CrossEncoderModel | None = None
        self._mode: tuple[str, str] = ("torch", "fp32")  # (backend, precision) of the loaded model

    def identity(self, runtime: Runtime) -> dict:
        """Weights and settings; ``"precision": "int8"`` is added for int8 only (others score alike)."""
        extra = {"precision": "int8"} if runtime.int8 else {}
        return {
            "kind": "cross_encoder",
            "weights": dir_fingerprint(resolve_model(self.model)),
            "max_length": self.max_length,
            **extra,
        }

    def cross_encoder(self, runtime: Runtime = DEFAULT_RUNTIME) -> CrossEncoderModel:
        """The loaded model, frozen, on the runtime's device (loaded once per
        precision and backend; quantized once for int8; its linear weights in bf16 / fp16 once for
        those; in ONNX Runtime for the onnx backend).

        Raises:
            ConfigError: int8 on a device other than the CPU.
        """
        mode = (runtime.backend, check_inference_precision(runtime.precision, runtime.device))
        if self._model is not None and self._mode != mode:
            self._model = None  # asked for another precision or backend: reload the float weights
        if self._model is None:
            self._model = for_inference(CrossEncoderModel.load(self.model, self.max_length), *mode, "model", "logits")
            self._mode = mode
        return self._model.to(runtime.device)

    def score_pairs(
        self, pairs: Pairs, runtime: Runtime, *, batch_size: int | None = None, progress: bool = False
    ) -> np.ndarray:
        return self.cross_encoder(runtime).predict(
            pairs.query_texts(), pairs.passage_texts(), batch_size or self.batch_size, runtime, progress, "teacher: pairs"
        )

    def module(self, runtime: Runtime) -> CrossEncoderModel:
        return self.cross_encoder(runtime)

    def weights_folder(self) -> Path:
        return resolve_model(self.model)
