"""Batches of an inference pass: which rows go together, tokenized one batch ahead of the model.

The encoders' inference loops (:meth:`BiEncoder.encode <distillrank.models.bi_encoder.BiEncoder.encode>`,
:meth:`CrossEncoderModel.predict <distillrank.models.cross_encoder.CrossEncoderModel.predict>`) sort
their rows by length and hand them here:

- **Which rows** (:func:`row_batches`): fixed slices of ``step`` rows (the default, as before), or,
  with a token budget (``hardware.max_batch_tokens``), consecutive rows grouped greedily so that
  rows × the longest row's tokens stays within the budget (at least one row a batch; at most
  ``max_rows``). Short texts then go many to a forward and long ones few, so a GPU holds about the
  same number of tokens in every forward. The token counts come from a length-only pass of the
  tokenizer over windows of rows, ahead of the batches; each batch is then tokenized by the same
  call as without a budget, so its tensors are those the fixed path would build for the same rows.
  That is a second tokenization; with prefetch it runs in the prefetch thread, off the model's path.
- **When they are tokenized** (:func:`prepared`): with prefetch (``hardware.prefetch``, on for
  CUDA by default), batch i+1 is tokenized, and on CUDA copied into pinned memory, by one worker
  thread while the model runs batch i; the main thread then copies it with
  ``.to(device, non_blocking=True)``. A thread, not ``torch.utils.data.DataLoader`` worker
  processes: Hugging Face fast tokenizers release the GIL while they encode a batch (and spread it
  over their own Rayon threads unless ``TOKENIZERS_PARALLELISM=false``), so one thread overlaps
  tokenization with the device without pickling the tokenizer and the texts into worker processes
  (each a copy of millions of strings, whose reference counts touch every page) and without
  DataLoader's re-ordering across workers. Batches come out in the order they were planned, one at a
  time, so results are bit-identical with and without it. On the CPU the thread only competes with
  the model for the same cores, so it is off there unless forced.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np
import torch

T = TypeVar("T")
Inputs = Mapping[str, torch.Tensor]

LENGTH_WINDOW = 4096  # rows whose token counts are taken in one tokenizer call (token budget only)
_END = object()


def row_batches(
    order: np.ndarray,
    step: int,
    *,
    max_tokens: int | None = None,
    max_rows: int | None = None,
    token_lengths: Callable[[np.ndarray], np.ndarray] | None = None,
    window: int = LENGTH_WINDOW,
) -> Iterator[np.ndarray]:
    """The rows of each forward, in ``order``, every row once.

    Args:
        order: row indices, sorted by length (longest first).
        step: rows per batch without a token budget.
        max_tokens: the token budget: each batch's rows × its longest row's tokens stays at most
            this, but a batch holds at least one row; None: batches of ``step`` rows.
        max_rows: with a budget, the most rows a batch holds (``hardware.max_forward_texts``);
            None: as many as the budget allows.
        token_lengths: with a budget, the token count of each of the given rows (truncated as the
            model truncates), asked for ``window`` rows at a time.
    """
    if max_tokens is None:
        for start in range(0, len(order), step):
            yield order[start : start + step]
        return
    if token_lengths is None:
        raise ValueError("a token budget needs token_lengths")
    pieces: list[np.ndarray] = []  # the open batch, possibly spanning windows
    rows = longest = 0
    for offset in range(0, len(order), window):
        chunk = order[offset : offset + window]
        lengths = np.asarray(token_lengths(chunk))
        start = 0
        for j, length in enumerate(lengths.tolist()):
            wider = max(longest, length)
            if rows and ((rows + 1) * wider > max_tokens or (max_rows is not None and rows >= max_rows)):
                pieces.append(chunk[start:j])
                yield np.concatenate(pieces)
                pieces, rows, start, wider = [], 0, j, length
            rows, longest = rows + 1, wider
        pieces.append(chunk[start:])
    if rows:
        yield np.concatenate(pieces)


def ahead(items: Iterator[T]) -> Iterator[T]:
    """``items`` in order, the next one produced by a worker thread while the caller uses this one."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="distillrank-prefetch") as pool:
        pending = pool.submit(next, items, _END)
        while True:
            item = pending.result()
            if item is _END:
                return
            pending = pool.submit(next, items, _END)
            yield item


def prepared(
    batches: Iterator[np.ndarray],
    tokenize: Callable[[np.ndarray], Inputs],
    device: torch.device,
    prefetch: bool,
) -> Iterator[tuple[np.ndarray, dict[str, torch.Tensor]]]:
    """Each batch's rows with its tokenized inputs on ``device``.

    ``tokenize`` builds a batch's tensors on the CPU. With ``prefetch`` the next batch is planned
    and tokenized (and, for a CUDA device, pinned) in a thread while the caller runs this one, and
    its tensors go to the device with ``non_blocking=True``; without it everything runs in the
    caller's thread, as a plain loop.
    """
    device = torch.device(device)
    pin = prefetch and device.type == "cuda"

    def produce() -> Iterator[tuple[np.ndarray, dict[str, torch.Tensor]]]:
        for idx in batches:
            inputs = dict(tokenize(idx))
            yield idx, ({k: v.pin_memory() for k, v in inputs.items()} if pin else inputs)

    for idx, inputs in ahead(produce()) if prefetch else produce():
        yield idx, {k: v.to(device, non_blocking=pin) for k, v in inputs.items()}
