"""The FAISS search moves to a GPU only when FAISS has GPU support and the device is CUDA."""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch

from distillrank.mining import faiss_index

faiss = pytest.importorskip("faiss")


def _flat(vectors: np.ndarray):
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    return index


def test_cpu_device_and_faiss_cpu_search_on_the_cpu() -> None:
    vectors = np.random.default_rng(0).standard_normal((40, 8)).astype(np.float32)
    index = _flat(vectors)
    assert faiss_index.on_device(index, torch.device("cpu")) is index
    if faiss.get_num_gpus() == 0:  # faiss-cpu: a CUDA device still searches on the CPU
        assert faiss_index.on_device(index, torch.device("cuda")) is index
    rows, scores = faiss_index.search(index, vectors[:3], 5, torch.device("cpu"))
    want_scores, want_rows = index.search(vectors[:3], 5)
    np.testing.assert_array_equal(rows, want_rows)
    np.testing.assert_array_equal(scores, want_scores)
    assert rows.dtype == np.int64 and scores.dtype == np.float32


def test_faiss_gpu_gets_the_index_on_the_runtime_device(monkeypatch: pytest.MonkeyPatch) -> None:
    moved: list[tuple[object, int, object]] = []

    class Resources:
        pass

    def index_cpu_to_gpu(res, device, index):
        moved.append((res, device, index))
        if isinstance(index, str):
            raise RuntimeError("not implemented for this type of index")
        return ("gpu", index)

    fake = types.SimpleNamespace(
        StandardGpuResources=Resources, get_num_gpus=lambda: 2, index_cpu_to_gpu=index_cpu_to_gpu
    )
    monkeypatch.setattr(faiss_index, "_faiss", lambda: fake)
    index = object()
    assert faiss_index.on_device(index, torch.device("cuda", 1)) == ("gpu", index)
    assert moved[-1][1] == 1 and isinstance(moved[-1][0], Resources)
    assert faiss_index.on_device(index, torch.device("cuda")) == ("gpu", index) and moved[-1][1] == 0
    assert faiss_index.on_device(index, torch.device("cpu")) is index
    assert faiss_index.on_device("hnsw", torch.device("cuda")) == "hnsw"  # unsupported there: CPU
