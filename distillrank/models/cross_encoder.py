"""A cross-encoder: [query; passage] through a sequence-classification model, one score per pair."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from distillrank.models.batching import prepared, row_batches
from distillrank.models.hub import resolve_model
from distillrank.models.layers import keep_layers, set_dropout
from distillrank.models.masking import backbone_inputs
from distillrank.models.tokenization import BatchTokenizer
from distillrank.runtime import Runtime
from distillrank.workspace import atomic_dir

log = logging.getLogger(__name__)


class CrossEncoderModel(nn.Module):
    """Scores a (query, passage) pair jointly.

    A checkpoint with one output is used as is (the MS MARCO cross-encoders); with two outputs the
    score is the log-probability of the second ("relevant") class, as in monoBERT.
    """

    def __init__(self, model: nn.Module, tokenizer, max_length: int = 512) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.batch_tokenizer = BatchTokenizer(tokenizer)
        self.max_length = max_length

    @classmethod
    def load(cls, model: str | Path, max_length: int = 512) -> CrossEncoderModel:
        path = resolve_model(str(model))
        return cls(
            AutoModelForSequenceClassification.from_pretrained(path),
            AutoTokenizer.from_pretrained(path),
            max_length,
        )

    @classmethod
    def from_backbone(
        cls,
        model: str,
        num_layers: int | None = None,
        layer_selection: str = "first",
        max_length: int = 256,
        dropout: float | None = None,
    ) -> CrossEncoderModel:
        """A cross-encoder student: a sequence-classification head with one output over ``model``.

        Args:
            model: a backbone (folder or hub id): a plain encoder or a bi-encoder (a new, randomly
                initialised one-logit head goes on top), or a cross-encoder (its head is kept when it
                has one output, re-initialised otherwise).
            num_layers: keep only this many transformer layers (None keeps all), chosen by
                ``layer_selection``: ``first``, ``every_other`` or ``uniform``
                (:func:`distillrank.models.layers.select_layers`).
            max_length: truncation length of the [query; passage] pair in tokens.
            dropout: every dropout probability of the model (hidden, attention, classifier head)
                for training; None keeps the model's own (:func:`distillrank.models.layers.set_dropout`).
        """
        path = resolve_model(str(model))
        classifier = AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=1, ignore_mismatched_sizes=True
        )
        if num_layers is not None:
            kept = keep_layers(classifier.base_model, num_layers, layer_selection)
            log.info("cross-encoder student keeps layers %s of %s", kept, model)
        if dropout is not None:
            set_dropout(classifier, dropout)
        return cls(classifier, AutoTokenizer.from_pretrained(path), max_length)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def tokenize_cpu(self, queries: Sequence[str], passages: Sequence[str]) -> dict[str, torch.Tensor]:
        """[query; passage] pairs tokenised, padded to the longest in the batch, on the CPU."""
        return self.batch_tokenizer(queries, passages, max_length=self.max_length, truncation="longest_first")

    def token_lengths(self, queries: Sequence[str], passages: Sequence[str]) -> np.ndarray:
        """Tokens of each pair as :meth:`tokenize_cpu` truncates it (special tokens included), unpadded."""
        return self.batch_tokenizer.lengths(queries, passages, max_length=self.max_length, truncation="longest_first")

    def scores(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Scores of a tokenised batch of pairs (on the model's device)."""
        logits = self.model(**backbone_inputs(batch)).logits
        if logits.shape[-1] == 1:
            return logits[:, 0]
        return torch.log_softmax(logits.float(), dim=-1)[:, -1]

    def forward(self, queries: Sequence[str], passages: Sequence[str]) -> torch.Tensor:
        """Scores [len(queries)] of aligned (query, passage) pairs."""
        return self.scores({k: v.to(self.device) for k, v in self.tokenize_cpu(queries, passages).items()})

    @torch.inference_mode()
    def predict(
        self,
        queries: Sequence[str],
        passages: Sequence[str],
        batch_size: int = 32,
        runtime: Runtime | None = None,
        progress: bool = False,
        desc: str = "cross-encoder",
    ) -> np.ndarray:
        """Scores of aligned pairs as float32, batched by length so padding is minimal; ``runtime``
        (default ``Runtime()``) gives each forward's autocast, caps its size (``max_forward_texts``),
        may size batches by a token budget instead of ``batch_size`` (``max_batch_tokens``) and
        tokenizes the next batch while this one runs (``prefetches``; :mod:`distillrank.models.batching`)."""
        runtime = runtime or Runtime()
        self.eval()
        order = np.argsort([-(len(q) + len(p)) for q, p in zip(queries, passages, strict=True)], kind="stable")
        out = np.empty(len(queries), dtype=np.float32)
        bar = tqdm(total=len(order), desc=desc, unit="pair", disable=not progress)
        step = runtime.forward_texts(batch_size)  # hardware.max_forward_texts caps one forward
        batches = row_batches(
            order, step, max_tokens=runtime.max_batch_tokens, max_rows=runtime.max_forward_texts,
            token_lengths=lambda rows: self.token_lengths([queries[i] for i in rows], [passages[i] for i in rows]),
        )  # fmt: skip
        tokenize = lambda rows: self.tokenize_cpu([queries[i] for i in rows], [passages[i] for i in rows])  # noqa: E731
        device = self.device
        for idx, inputs in prepared(
            batches, tokenize, device, runtime.prefetches(device), runtime.max_forward_tokens,
            self.batch_tokenizer.pad_values(),
        ):
            with runtime.autocast():
                scores = self.scores(inputs)
            out[idx] = scores.float().cpu().numpy()
            bar.update(len(idx))
        bar.close()
        return out

    def save(self, path: str | Path, model_card: str | None = None) -> Path:
        """Save as a Hugging Face folder (``sentence_transformers.CrossEncoder(path)`` loads it)."""
        with atomic_dir(path) as tmp:
            self.model.save_pretrained(tmp, safe_serialization=True)
            self.tokenizer.save_pretrained(tmp)
            if model_card:
                (tmp / "README.md").write_text(model_card, encoding="utf-8")
        return Path(path)
