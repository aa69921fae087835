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


# --------------------------------------------------------------------------- query batches, device
def _exact_topk_before(queries, num_docs, doc_block, k, chunk_size=65536):
    """exact_topk as it was before query batches (every query against each block at once), verbatim."""
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


def test_query_batches_are_few_equal_and_capped() -> None:
    from distillrank.evaluation.retrieval import SCORES_BYTES, query_batches

    assert query_batches(0, 100) == []
    assert query_batches(10, 100) == [(0, 10)]  # fits: one batch, as before
    assert query_batches(10, 100, query_batch=10) == [(0, 10)]
    sizes = [e - s for s, e in query_batches(4100, 100, query_batch=4096)]
    assert sizes == [2050, 2050]  # not 4096 + 4
    batches = query_batches(1000, 7, query_batch=64)
    assert batches[0][0] == 0 and batches[-1][1] == 1000
    assert all(a[1] == b[0] for a, b in zip(batches, batches[1:], strict=False))
    assert (
        max(e - s for s, e in batches) <= 64
        and max(e - s for s, e in batches) - min(e - s for s, e in batches) <= 1
    )
    cap = SCORES_BYTES // (4 * 65536)  # the default: one [batch, block] float32 matrix in SCORES_BYTES
    assert query_batches(cap, 65536) == [(0, cap)] and len(query_batches(cap + 1, 65536)) == 2


def test_default_batches_equal_the_previous_search_bit_for_bit() -> None:
    gen = torch.Generator().manual_seed(11)
    queries, docs = torch.randn(300, 32, generator=gen), torch.randn(500, 32, generator=gen)
    for chunk in (64, 500):
        got = exact_topk(queries, 500, _blocks(docs), 20, chunk)
        want = _exact_topk_before(queries, 500, _blocks(docs), 20, chunk)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


@pytest.mark.parametrize(("query_batch", "chunk_size"), [(1, 5), (7, 5), (16, 64), (50, 3)])
def test_query_batches_keep_every_result_and_tie_order(query_batch: int, chunk_size: int) -> None:
    # small integer embeddings: every dot product is exact whatever the summation order (so the
    # comparison holds on any BLAS), and equal scores are everywhere: the tie order is compared
    gen = torch.Generator().manual_seed(5)
    queries = torch.randint(-2, 3, (50, 6), generator=gen).float()
    docs = torch.randint(-2, 3, (64, 6), generator=gen).float()
    want = _exact_topk_before(queries, 64, _blocks(docs), 12, chunk_size)
    calls: list[tuple[int, int]] = []
    got = exact_topk(queries, 64, _blocks(docs, calls), 12, chunk_size, query_batch=query_batch)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert (want[0][:, 1:] == want[0][:, :-1]).any()  # ties were there to order
    assert len(calls) == -(-64 // chunk_size)  # each corpus block is read once, for every batch


@pytest.mark.gpu
def test_cuda_search_finds_the_cpu_results() -> None:
    gen = torch.Generator().manual_seed(2)
    queries, docs = torch.randn(3000, 64, generator=gen), torch.randn(9000, 64, generator=gen)
    cpu = exact_topk(queries, 9000, _blocks(docs), 50, 1000, query_batch=512)
    gpu = exact_topk(queries, 9000, _blocks(docs), 50, 1000, query_batch=512, device="cuda")
    assert gpu[0].device.type == "cpu"
    torch.testing.assert_close(gpu[0], cpu[0], rtol=1e-5, atol=1e-5)
    assert (gpu[1] == cpu[1]).float().mean() > 0.999  # a near-tie may swap
