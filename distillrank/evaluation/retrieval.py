"""Exact top-k retrieval by a chunked matrix product: memory bounded in the corpus and in the queries."""

from __future__ import annotations

from collections.abc import Callable

import torch

SCORES_BYTES = 1 << 30  # the most one [query batch, corpus block] float32 score matrix takes (1 GiB)


def query_batches(n_queries: int, chunk_size: int, query_batch: int | None = None) -> list[tuple[int, int]]:
    """``(start, end)`` of the query batches :func:`exact_topk` scores a corpus block with.

    At most ``query_batch`` queries each (by default as many as keep one batch's scores against a
    block of ``chunk_size`` rows within :data:`SCORES_BYTES`), and as few batches as that allows,
    of equal sizes (± 1): a query set that fits in one batch is scored whole, as it always was,
    and no batch is left with a handful of queries (BLAS may sum a product of very few rows in
    another order).
    """
    if n_queries <= 0:
        return []
    cap = int(query_batch) if query_batch else max(1, SCORES_BYTES // (4 * max(1, int(chunk_size))))
    n = -(-n_queries // max(1, cap))
    return [(i * n_queries // n, (i + 1) * n_queries // n) for i in range(n)]


def exact_topk(
    queries: torch.Tensor,
    num_docs: int,
    doc_block: Callable[[int, int], torch.Tensor],
    k: int,
    chunk_size: int = 65536,
    query_batch: int | None = None,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The k highest dot products of each query over a corpus read block by block.

    Each block of document embeddings ([chunk_size, d]) is read once and scored against the queries
    a batch at a time (:func:`query_batches`), so besides the queries and the running [Q, k] top
    lists, memory holds one block and one [query batch, chunk_size] score matrix, whatever the
    corpus size and the number of queries. Each query's results do not depend on the batch it is
    in (the same products and merges, row by row).

    Args:
        queries: [Q, d] query embeddings.
        num_docs: corpus size N.
        doc_block: returns the embeddings [end - start, d] of corpus rows start..end-1.
        k: results per query (clipped to N).
        chunk_size: rows per block.
        query_batch: the most queries scored at once (None: as :data:`SCORES_BYTES` allows).
        device: where the products and top-k run (a CUDA device for a GPU); None: the CPU.

    Returns:
        scores [Q, k] (descending) and corpus rows [Q, k] (int64), on the CPU.
    """
    device = torch.device(device) if device is not None else torch.device("cpu")
    k = min(k, num_docs)
    queries = queries.to(device)
    batches = query_batches(queries.shape[0], chunk_size, query_batch) or [(0, 0)]
    best_scores = [torch.full((end - start, 0), float("-inf"), device=device) for start, end in batches]
    best_rows = [torch.empty((end - start, 0), dtype=torch.long, device=device) for start, end in batches]
    for start in range(0, num_docs, chunk_size):
        end = min(start + chunk_size, num_docs)
        block = doc_block(start, end).to(device=device, dtype=queries.dtype)
        top = min(k, end - start)
        for b, (q_start, q_end) in enumerate(batches):
            scores = queries[q_start:q_end] @ block.T
            s, r = scores.topk(top, dim=1)
            merged_scores = torch.cat([best_scores[b], s], dim=1)
            merged_rows = torch.cat([best_rows[b], r + start], dim=1)
            keep = merged_scores.topk(min(k, merged_scores.shape[1]), dim=1).indices
            best_scores[b] = merged_scores.gather(1, keep)
            best_rows[b] = merged_rows.gather(1, keep)
            del scores, s, r, merged_scores, merged_rows, keep
    out_scores = best_scores[0] if len(batches) == 1 else torch.cat(best_scores)
    out_rows = best_rows[0] if len(batches) == 1 else torch.cat(best_rows)
    return out_scores.cpu(), out_rows.cpu()
