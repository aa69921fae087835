"""Token ids of a batch straight from a fast tokenizer's Rust backend, as its ``__call__`` gives them.

A Hugging Face fast tokenizer's ``__call__`` re-configures its backend's truncation and padding on
every call, runs ``encode_batch`` (which also computes every token's character offsets), turns each
encoding into Python lists, and those into tensors. For short texts and small models that wrapper is
a large part of an inference pass: on the tiny scale-benchmark model, 60% of encoding a passage was
its tokenization, and of that about 40% the wrapper (measured in docs/BENCHMARKS.md, "Tokenization").

:class:`BatchTokenizer` keeps one copy of the backend (``tokenizers.Tokenizer``) per setting —
truncation length and strategy, padding — configured once, calls its ``encode_batch_fast`` (no
offsets) and builds the arrays with numpy. The ids, type ids and attention mask are those the
tokenizer's own call gives, and each setting is checked against that call on the first batch it is
used for: a tokenizer whose wrapper adds something of its own (a slow Python tokenizer, a subclass
that rewrites its inputs, one without a padding token) is then tokenized by its own call, as before.
The configured copies are never changed after they are made, so a prefetch thread may use them
while the main thread runs the model.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)

PROBE_ROWS = 64  # rows of the first batch of a setting compared with the tokenizer's own call
FIELDS = {"input_ids": "ids", "token_type_ids": "type_ids", "attention_mask": "attention_mask"}  # key: Encoding field


class BatchTokenizer:
    """Tokenizes batches of texts, or of (text, text pair) pairs, like ``tokenizer(...)`` does.

    Args:
        tokenizer: a Hugging Face tokenizer (fast or slow).
    """

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        # (max_length, truncation, padding, vocabulary size) -> a configured copy of the backend, or
        # None: the tokenizer's own call; the vocabulary size, so tokens added later make new copies
        self._backends: dict[tuple, Any] = {}

    def __call__(
        self,
        texts: Sequence[str],
        pairs: Sequence[str] | None = None,
        *,
        max_length: int,
        truncation: bool | str = True,
        padding: bool | str = True,
    ) -> dict[str, torch.Tensor]:
        """``dict(tokenizer(texts, pairs, padding=…, truncation=…, max_length=…, return_tensors="pt"))``."""
        setting = (max_length, _strategy(truncation), padding, len(self.tokenizer))
        backend = self._backend(setting, texts, pairs)
        if backend is None:
            return self._own_call(texts, pairs, setting)
        return self._arrays(backend, texts, pairs)

    def lengths(
        self, texts: Sequence[str], pairs: Sequence[str] | None = None, *, max_length: int, truncation: bool | str = True
    ) -> np.ndarray:
        """Tokens of each row as :meth:`__call__` truncates it (special tokens included), unpadded."""
        setting = (max_length, _strategy(truncation), False, len(self.tokenizer))
        backend = self._backend(setting, texts, pairs)
        if backend is None:
            ids = self._own_call(texts, pairs, setting)["input_ids"]
            return np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(texts))
        encodings = _encode(backend, _inputs(texts, pairs))
        return np.fromiter((len(e) for e in encodings), dtype=np.int64, count=len(texts))

    def pad_values(self) -> dict[str, int] | None:
        """What each padded key of :meth:`__call__` holds in a padding column (``input_ids``: the pad
        token's id, ``token_type_ids``: the pad type id, ``attention_mask``: 0), for
        :func:`distillrank.models.batching.forward_pieces`; None for a tokenizer without a pad token."""
        tok = self.tokenizer
        if getattr(tok, "pad_token_id", None) is None:
            return None
        values = {"input_ids": int(tok.pad_token_id), "attention_mask": 0}
        if "token_type_ids" in self._keys():
            values["token_type_ids"] = int(getattr(tok, "pad_token_type_id", 0) or 0)
        return values

    # ------------------------------------------------------------------ internals
    def _own_call(self, texts, pairs, setting: tuple) -> dict[str, torch.Tensor]:
        max_length, truncation, padding, _ = setting
        return dict(
            self.tokenizer(
                list(texts),
                list(pairs) if pairs is not None else None,
                padding=padding,
                truncation=truncation,
                max_length=max_length,
                return_tensors="pt" if padding else None,
            )
        )

    def _keys(self) -> list[str]:
        names = getattr(self.tokenizer, "model_input_names", ["input_ids", "token_type_ids", "attention_mask"])
        return ["input_ids"] + [k for k in ("token_type_ids", "attention_mask") if k in names]

    def _arrays(self, backend, texts, pairs) -> dict[str, torch.Tensor]:
        encodings = _encode(backend, _inputs(texts, pairs))
        out = {}
        for key in self._keys():
            values = [getattr(e, FIELDS[key]) for e in encodings]
            out[key] = torch.from_numpy(np.array(values, dtype=np.int64).reshape(len(encodings), -1))
        return out

    def _backend(self, setting: tuple, texts, pairs):
        if setting in self._backends:
            return self._backends[setting]
        if not len(texts):
            return None  # nothing to check the backend on: the call, and the setting still undecided
        backend = self._configured(setting)
        if backend is not None and not self._agrees(backend, setting, texts, pairs):
            log.warning(
                "%s: its Rust backend does not tokenize like its own call; using the call (slower)",
                type(self.tokenizer).__name__,
            )
            backend = None
        self._backends[setting] = backend
        return backend

    def _configured(self, setting: tuple):
        """A copy of the tokenizer's backend set to ``setting``, or None where the call must be used."""
        max_length, truncation, padding, _ = setting
        tok = self.tokenizer
        source = getattr(tok, "backend_tokenizer", None)
        if not getattr(tok, "is_fast", False) or source is None or truncation is None or max_length is None:
            return None
        if padding and tok.pad_token is None:
            return None  # the call raises its own error for this
        from tokenizers import Tokenizer

        backend = Tokenizer.from_str(source.to_str())
        backend.no_truncation()
        backend.no_padding()
        backend.enable_truncation(
            max_length, stride=0, strategy=truncation, direction=getattr(tok, "truncation_side", "right")
        )
        if padding:
            backend.enable_padding(
                direction=getattr(tok, "padding_side", "right"),
                pad_id=tok.pad_token_id,
                pad_type_id=getattr(tok, "pad_token_type_id", 0),
                pad_token=tok.pad_token,
                length=max_length if padding == "max_length" else None,
            )
        if hasattr(backend, "encode_special_tokens"):
            backend.encode_special_tokens = bool(getattr(tok, "split_special_tokens", False))
        return backend

    def _agrees(self, backend, setting: tuple, texts, pairs) -> bool:
        texts = list(texts[:PROBE_ROWS])
        pairs = list(pairs[:PROBE_ROWS]) if pairs is not None else None
        try:
            ours = self._arrays(backend, texts, pairs) if setting[2] else [e.ids for e in _encode(backend, _inputs(texts, pairs))]
        except Exception as err:  # noqa: BLE001 - any failure of the shortcut: use the tokenizer's call
            log.debug("tokenizer backend failed on the probe batch: %s", err)
            return False
        theirs = self._own_call(texts, pairs, setting)
        if not setting[2]:
            return ours == theirs["input_ids"]
        return list(ours) == list(theirs) and all(torch.equal(ours[k], theirs[k]) for k in ours)


def _strategy(truncation: bool | str) -> str | None:
    if truncation is True:
        return "longest_first"
    return truncation or None


def _inputs(texts: Sequence[str], pairs: Sequence[str] | None) -> list:
    return list(texts) if pairs is None else list(zip(texts, pairs, strict=True))


def _encode(backend, inputs: list) -> list:
    encode = getattr(backend, "encode_batch_fast", None) or backend.encode_batch  # tokenizers < 0.20.2
    return encode(inputs, add_special_tokens=True)

