"""Exact top-k retrieval by a chunked matrix product: memory bounded in the corpus size."""

from __future__ import annotations

from collections.abc import Callable

import torch


def exact_topk(
    queries: torch.Tensor,
    num_docs: int,
    doc_block: Callable[[int, int], torch.Tensor],
    k: int,
    chunk_size: int = 65536,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The k highest dot products of each query over a corpus read block by block.

    Only one block of document embeddings ([chunk_size, d]) and a running [Q, k] top list are held
    at a time, so peak memory does not grow with the corpus.

    Args:
        queries: [Q, d] query embeddings.
        num_docs: corpus size N.
        doc_block: returns the embeddings [end - start, d] of corpus rows start..end-1.
        k: results per query (clipped to N).
        chunk_size: rows per block.

    Returns:
        scores [Q, k] (descending) and corpus rows [Q, k] (int64).
    """
    k = min(k, num_docs)
    best_scores = torch.full((queries.shape[0], 0), float("-inf"))
    best_rows = torch.empty((queries.shape[0], 0), dtype=torch.long)
    for start in range(0, num_docs, chunk_size):
        end = min(start + chunk_size, num_docs)
        block = doc_block(start, end).to(queries.dtype)
        scores = queries @ block.T
        top = min(k, end - start)
        s, r = scores.topk(top, dim=1)
        merged_scores = torch.cat([best_scores, s], dim=1)
        merged_rows = torch.cat([best_rows, r + start], dim=1)
        keep = merged_scores.topk(min(k, merged_scores.shape[1]), dim=1).indices
        best_scores = merged_scores.gather(1, keep)
        best_rows = merged_rows.gather(1, keep)
    return best_scores, best_rows
