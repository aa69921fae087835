"""A monoT5-style teacher: a seq2seq model asked whether a passage is relevant ("true" / "false").

Nogueira et al. 2020, "Document Ranking with a Pretrained Sequence-to-Sequence Model". The input is
``Query: {query} Document: {passage} Relevant:``; the score of a pair is the log-probability of the
"true" token at the first decoder step after a softmax over the two logits of "true" and "false"
only (as pygaggle's ``MonoT5`` and rank_llm / rerankers do), so every score lies in (-inf, 0].
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import AutoConfig, AutoModelForSeq2SeqLM, AutoTokenizer

from distillrank.errors import ConfigError
from distillrank.models.half_weights import frozen
from distillrank.models.hub import resolve_model
from distillrank.ranking import Pairs, RankerKind
from distillrank.runtime import Runtime
from distillrank.teachers.base import DEFAULT_RUNTIME, Teacher
from distillrank.workspace import dir_fingerprint

DEFAULT_PROMPT = "Query: {query} Document: {passage} Relevant:"


def resolve_token_id(tokenizer: Any, token: str, what: str) -> int:
    """The id of ``token`` as the model would write it as a whole word.

    ``token`` is first encoded without special tokens (so a SentencePiece model maps ``true`` to
    its word piece ``▁true``, as monoT5 was trained); when that is not one known token, an exact
    vocabulary entry (e.g. ``▁true`` given literally) is taken.

    Raises:
        ConfigError: when ``token`` is neither one known token nor a vocabulary entry.
    """
    ids = tokenizer(token, add_special_tokens=False)["input_ids"]
    unk = tokenizer.unk_token_id
    if len(ids) == 1 and (unk is None or ids[0] != unk):
        return int(ids[0])
    vocab = tokenizer.get_vocab()
    if token in vocab:
        return int(vocab[token])
    pieces = tokenizer.convert_ids_to_tokens(ids)
    raise ConfigError(
        f"teacher.{what}={token!r} is not a single token of this model's tokenizer "
        f"(it encodes to {len(ids)} tokens: {pieces}); give a word the tokenizer keeps whole"
    )


class MonoT5Teacher(Teacher):
    """Scores each (query, passage) pair with a monoT5-style seq2seq re-ranker.

    Args:
        model: folder or hub id of a seq2seq checkpoint (e.g. ``castorini/monot5-base-msmarco``).
        max_length: truncation length of the prompt in tokens (the whole prompt is truncated, as in
            pygaggle: a passage long enough loses its end and the ``Relevant:`` suffix).
        batch_size: pairs per batch (batches are formed from length-sorted pairs).
        prompt: input template with ``{query}`` and ``{passage}``.
        true_token: the answer word for relevant (must be one token of the tokenizer).
        false_token: the answer word for not relevant (must be one token, not ``true_token``).
    """

    kind = RankerKind.SEQ2SEQ

    def __init__(
        self,
        model: str,
        max_length: int = 512,
        batch_size: int = 16,
        prompt: str = DEFAULT_PROMPT,
        true_token: str = "true",
        false_token: str = "false",
    ) -> None:
        for field in ("{query}", "{passage}"):
            if field not in prompt:
                raise ConfigError(f"teacher.prompt={prompt!r} has no {field} field")
        if int(max_length) < 1 or int(batch_size) < 1:
            raise ConfigError(
                f"teacher.max_length and teacher.batch_size must be >= 1, got {max_length}, {batch_size}"
            )
        self.model = model
        self.max_length = int(max_length)
        self.batch_size = int(batch_size)
        self.prompt = prompt
        self.true_token = true_token
        self.false_token = false_token
        self._model: torch.nn.Module | None = None
        self._precision: str | None = None  # the precision the loaded model's weights are stored for
        self._tokenizer: Any = None
        self._token_ids: tuple[int, int] | None = None

    def identity(self, runtime: Runtime) -> dict:
        return {
            "kind": "monot5",
            "weights": dir_fingerprint(resolve_model(self.model)),
            "max_length": self.max_length,
            "prompt": self.prompt,
            "true_token": self.true_token,
            "false_token": self.false_token,
        }

    # ------------------------------------------------------------------ loading
    @property
    def tokenizer(self) -> Any:
        """The tokenizer (loaded once, without the model)."""
        if self._tokenizer is None:
            self._tokenizer = AutoTokenizer.from_pretrained(resolve_model(self.model))
        return self._tokenizer

    @property
    def token_ids(self) -> tuple[int, int]:
        """``(true_id, false_id)`` resolved from the tokenizer.

        Raises:
            ConfigError: either word is not a single token, or both are the same token.
        """
        if self._token_ids is None:
            true_id = resolve_token_id(self.tokenizer, self.true_token, "true_token")
            false_id = resolve_token_id(self.tokenizer, self.false_token, "false_token")
            if true_id == false_id:
                raise ConfigError(
                    f"teacher.true_token={self.true_token!r} and teacher.false_token={self.false_token!r} "
                    f"are the same token (id {true_id})"
                )
            self._token_ids = (true_id, false_id)
        return self._token_ids

    def seq2seq(self, runtime: Runtime = DEFAULT_RUNTIME) -> torch.nn.Module:
        """The loaded model, frozen, in eval mode, on the runtime's device (loaded once per precision:
        under bf16 / fp16 its untied linear weights stored in that dtype once —
        :func:`~distillrank.models.half_weights.frozen`, bit-identical to autocast's casts)."""
        if self._model is not None and self._precision != runtime.precision:
            self._model = None  # another precision: load the float weights again
        if self._model is None:
            _ = self.token_ids  # fail on bad answer words before loading weights
            path = resolve_model(self.model)
            if not getattr(AutoConfig.from_pretrained(path), "is_encoder_decoder", False):
                raise ConfigError(f"teacher.model={self.model!r} is not an encoder-decoder (seq2seq) model")
            self._model = frozen(AutoModelForSeq2SeqLM.from_pretrained(path), runtime.precision)
            self._precision = runtime.precision
        return self._model.to(runtime.device)

    def _decoder_start(self, model: torch.nn.Module) -> int:
        start = model.config.decoder_start_token_id
        if start is None:
            start = getattr(model.generation_config, "decoder_start_token_id", None)
        if start is None:
            start = self.tokenizer.pad_token_id
        if start is None:
            raise ConfigError(f"teacher.model={self.model!r} defines no decoder_start_token_id")
        return int(start)

    # ------------------------------------------------------------------ scoring
    def texts(self, queries: Sequence[str], passages: Sequence[str]) -> list[str]:
        """The model inputs of aligned (query, passage) pairs."""
        return [self.prompt.format(query=q, passage=p) for q, p in zip(queries, passages, strict=True)]

    def logits(self, texts: Sequence[str], runtime: Runtime = DEFAULT_RUNTIME) -> torch.Tensor:
        """``[len(texts), 2]`` first-decoder-step logits of (true, false), float32, the forward under the
        runtime's autocast (a bf16 runtime's model has bf16 linear weights)."""
        model = self.seq2seq(runtime)
        device = runtime.device
        batch = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(device)
        start = torch.full((len(texts), 1), self._decoder_start(model), dtype=torch.long, device=device)
        with runtime.autocast():
            out = model(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], decoder_input_ids=start
            )
        true_id, false_id = self.token_ids
        return out.logits[:, 0, [true_id, false_id]].float()

    @torch.inference_mode()
    def predict(
        self,
        queries: Sequence[str],
        passages: Sequence[str],
        runtime: Runtime = DEFAULT_RUNTIME,
        progress: bool = False,
        desc: str = "teacher: pairs",
        batch_size: int | None = None,
    ) -> np.ndarray:
        """Scores (log P(true) over {true, false}) of aligned pairs as float32, length-sorted batches
        of ``batch_size`` pairs (None: ``self.batch_size``)."""
        batch_size = batch_size or self.batch_size
        texts = self.texts(queries, passages)
        out = np.empty(len(texts), dtype=np.float32)
        if not texts:
            return out
        self.seq2seq(runtime)
        order = np.argsort([-len(t) for t in texts], kind="stable")
        bar = tqdm(total=len(order), desc=desc, unit="pair", disable=not progress)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            logits = self.logits([texts[i] for i in idx], runtime)
            out[idx] = torch.log_softmax(logits.float(), dim=-1)[:, 0].cpu().numpy()
            bar.update(len(idx))
        bar.close()
        return out

    def score_pairs(
        self, pairs: Pairs, runtime: Runtime, *, batch_size: int | None = None, progress: bool = False
    ) -> np.ndarray:
        return self.predict(pairs.query_texts(), pairs.passage_texts(), runtime, progress, batch_size=batch_size)

    def module(self, runtime: Runtime) -> torch.nn.Module:
        return self.seq2seq(runtime)

    def weights_folder(self) -> Path:
        return resolve_model(self.model)
