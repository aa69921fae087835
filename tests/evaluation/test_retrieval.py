"""exact_topk: chunked top-k equals one full torch.topk."""

from __future__ import annotations

import pytest
import torch

from distillrank.evaluation.retrieval import exact_topk

N_DOCS = 23
DIM = 8


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    return torch.randn(5, DIM, generator=gen), torch.randn(N_DOCS, DIM, generator=gen)


def _blocks(docs: torch.Tensor, calls: list[tuple[int, int]] | None = None):
    def doc_block(start: int, end: int) -> torch.Tensor:
        if calls is not None:
            calls.append((start, end))
        return docs[start:end]

    return doc_block


@pytest.mark.parametrize("chunk_size", [1, 7, N_DOCS, N_DOCS + 10])
@pytest.mark.parametrize("k", [1, 5, N_DOCS])
def test_equals_full_topk(data, chunk_size: int, k: int) -> None:
    queries, docs = data
    calls: list[tuple[int, int]] = []
    scores, rows = exact_topk(queries, N_DOCS, _blocks(docs, calls), k, chunk_size)
    full_scores, full_rows = (queries @ docs.T).topk(k, dim=1)
    assert rows.dtype == torch.long
    assert scores.shape == rows.shape == (5, k)
    torch.testing.assert_close(scores, full_scores)
    assert torch.equal(rows, full_rows)
    # Blocks cover the corpus once, in order, none larger than chunk_size.
    assert calls[0][0] == 0 and calls[-1][1] == N_DOCS
    assert all(a[1] == b[0] for a, b in zip(calls, calls[1:], strict=False))
    assert all(0 < end - start <= chunk_size for start, end in calls)


@pytest.mark.parametrize("chunk_size", [1, 7, 100])
def test_k_larger_than_corpus_is_clipped(data, chunk_size: int) -> None:
    queries, docs = data
    scores, rows = exact_topk(queries, N_DOCS, _blocks(docs), 1000, chunk_size)
    assert scores.shape == rows.shape == (5, N_DOCS)
    full_scores, full_rows = (queries @ docs.T).sort(dim=1, descending=True)
    torch.testing.assert_close(scores, full_scores)
    assert torch.equal(rows, full_rows)
    for row in rows:  # every document exactly once
        assert sorted(row.tolist()) == list(range(N_DOCS))


def test_scores_are_the_dot_products_of_the_returned_rows(data) -> None:
    queries, docs = data
    scores, rows = exact_topk(queries, N_DOCS, _blocks(docs), 6, 4)
    expected = torch.einsum("qd,qkd->qk", queries, docs[rows])
    torch.testing.assert_close(scores, expected)
    assert torch.all(scores[:, :-1] >= scores[:, 1:])


def test_block_dtype_is_cast_to_queries(data) -> None:
    queries, docs = data
    scores, rows = exact_topk(queries, N_DOCS, _blocks(docs.double()), 3, 5)
    assert scores.dtype == queries.dtype
    assert torch.equal(rows, (queries @ docs.T).topk(3, dim=1).indices)
