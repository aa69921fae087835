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
- **How many tokens a forward holds** (:func:`forward_pieces`, ``hardware.max_forward_tokens``): a
  tokenized batch whose rows × padded length is over the cap runs as several forwards of
  consecutive rows, each within the cap (at least one row) and cut to its own longest row: the
  tensors tokenizing those rows alone gives, without tokenizing again. A forward's working memory
  grows with its tokens, not its texts: on a CPU, 16 passages of 256 tokens hold twice the
  activations of 16 of 128 while the matrix products already run at full speed from about 2,048
  tokens (docs/HARDWARE.md, "A forward's tokens").
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


def forward_pieces(
    idx: np.ndarray,
    inputs: Mapping[str, torch.Tensor],
    max_tokens: int | None,
    pad: Mapping[str, int] | None,
) -> Iterator[tuple[np.ndarray, dict[str, torch.Tensor]]]:
    """The forwards of one tokenized batch (``idx``: its rows; ``inputs``: its tensors, each row
    first): the batch itself when ``max_tokens`` is None or its rows × padded length is within it;
    else consecutive rows grouped greedily so that rows × the longest row's tokens stays within
    ``max_tokens`` (at least one row a forward), each group's tensors cut to the columns its rows
    use.

    ``pad`` names the padding value of each padded key (``input_ids``: the pad token's id,
    ``attention_mask``: 0, ``token_type_ids``: the pad type id): a column is padding for a row when
    every one of those keys holds its pad value there; a row's tokens are its other columns. A
    group's tensors are then those of tokenizing its rows alone (the columns no row of it uses,
    dropped), whether padding is on the right or the left; other [rows, columns] tensors of the
    batch (e.g. ColBERT's scoring mask) are cut alike. Tokens that are not padding, even ones the
    attention mask hides (ColBERT's query expansion), are never dropped. ``pad`` None: no key is
    known to be padding, so the groups keep the batch's width.
    """
    rows = len(idx)
    width = max((v.shape[1] for v in inputs.values() if v.dim() == 2), default=0)
    if max_tokens is None or rows * width <= max_tokens or rows <= 1:
        yield idx, dict(inputs)
        return
    padding = None
    if pad:
        known = [inputs[k] == value for k, value in pad.items() if k in inputs and inputs[k].dim() == 2]
        if known:
            padding = torch.stack(known).all(0)  # [rows, width]: True where the column is padding
    lengths = (
        np.full(rows, width, dtype=np.int64) if padding is None else (~padding).sum(1).numpy().astype(np.int64)
    )
    for local in row_batches(np.arange(rows), rows, max_tokens=max_tokens, token_lengths=lambda r: lengths[r]):
        start, stop = int(local[0]), int(local[-1]) + 1
        cols = slice(None)
        if padding is not None:
            used = torch.nonzero(~padding[start:stop].all(0)).flatten()
            if len(used):
                cols = slice(int(used[0]), int(used[-1]) + 1)
        piece = {}
        for key, value in inputs.items():
            value = value[start:stop]
            piece[key] = value[:, cols].contiguous() if value.dim() == 2 and value.shape[1] == width else value
        yield idx[start:stop], piece


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
    max_tokens: int | None = None,
    pad: Mapping[str, int] | None = None,
) -> Iterator[tuple[np.ndarray, dict[str, torch.Tensor]]]:
    """Each forward's rows with its tokenized inputs on ``device``.

    ``tokenize`` builds a batch's tensors on the CPU; a batch over ``max_tokens`` tokens runs as
    several forwards (:func:`forward_pieces`, with ``pad`` its padding values). With ``prefetch``
    the next batch is planned and tokenized (and, for a CUDA device, pinned) in a thread while the
    caller runs this one, and its tensors go to the device with ``non_blocking=True``; without it
    everything runs in the caller's thread, as a plain loop.
    """
    device = torch.device(device)
    pin = prefetch and device.type == "cuda"

    def produce() -> Iterator[tuple[np.ndarray, dict[str, torch.Tensor]]]:
        for idx in batches:
            for rows, inputs in forward_pieces(idx, tokenize(idx), max_tokens, pad):
                yield rows, ({k: v.pin_memory() for k, v in inputs.items()} if pin else inputs)

    for idx, inputs in ahead(produce()) if prefetch else produce():
        yield idx, {k: v.to(device, non_blocking=pin) for k, v in inputs.items()}
