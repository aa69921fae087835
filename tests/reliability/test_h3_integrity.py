"""Integrity (issue 13): every artifact kind truncated or zeroed is detected, dropped and rebuilt
identical; a damaged stage output is not trusted.

Cache entries are exercised through their own builders (fast); stage outputs, teacher score shards
and the evaluate stage's per-system results through one tiny pipeline run shared by the module.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from distillrank import pipeline
from distillrank.builders import components
from distillrank.data.collection import load_collection
from distillrank.errors import ArtifactError
from distillrank.evaluation.dense import cached_corpus_embeddings
from distillrank.mining.bm25 import BM25Index
from distillrank.models import onnx_runtime
from distillrank.models.bi_encoder import BiEncoder
from distillrank.runtime import Runtime
from distillrank.stages import score
from distillrank.teachers.cache import ScoreCache
from distillrank.training.features import cached_text_embeddings
from distillrank.validation import compose
from distillrank.workspace import (
    _FILE_FP,
    SEAL,
    cache_dir,
    read_manifest,
    require_stage,
    seal_path,
    stage_dir,
    verify_entry,
)
from tests.conftest import tiny_overrides

CPU = torch.device("cpu")


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def zero(path: Path) -> None:
    path.write_bytes(bytes(path.stat().st_size))


def fresh_process() -> None:
    """Forget what this process memoised (as a new process would): file hashes, loaded collections
    and teachers."""
    _FILE_FP.clear()
    components._collection.cache_clear()
    components._teacher.cache_clear()
    components._teacher_fp.cache_clear()


def seal_of(entry: Path) -> dict:
    return json.loads(seal_path(entry).read_text())


def data_files(record: dict) -> dict:
    """The checksums of a stored collection's data (meta.json, which notes when it was built, and
    the datasets state files left out)."""
    return {k: v for k, v in record["files"].items() if k.endswith(".arrow") or k == "qrels.json"}


def damaged_warning(caplog: pytest.LogCaptureFixture, entry: Path) -> bool:
    return any("damaged" in r.getMessage() and str(entry) in r.getMessage() for r in caplog.records)


# --------------------------------------------------------------------------- cache entries
@pytest.fixture
def tiny_collection(tmp_path: Path, tiny_beir: Path):
    data = compose(tiny_overrides(tmp_path / "runs", tiny_beir, tiny_beir)).data
    return data, tmp_path / "cache"


@pytest.mark.parametrize("damage", [truncate, zero])
def test_stored_collection_damaged_is_rebuilt_identical(tiny_collection, damage, caplog) -> None:
    data, cache = tiny_collection
    first = load_collection(data, cache)
    before, texts = seal_of(first.path), first.passage_texts(range(5))
    arrow = sorted((first.path / "corpus").glob("*.arrow"))[0]
    damage(arrow)
    _FILE_FP.clear()
    with caplog.at_level(logging.WARNING):
        again = load_collection(data, cache)
    assert damaged_warning(caplog, first.path)
    assert data_files(seal_of(again.path)) == data_files(before) and again.passage_texts(range(5)) == texts
    assert len(data_files(before)) >= 3


@pytest.mark.parametrize("name", ["data.csc.index.npy", "vocab.index.json"])
def test_bm25_index_damaged_is_rebuilt_identical(tiny_collection, name, caplog) -> None:
    data, cache = tiny_collection
    coll = load_collection(data, cache)
    index = BM25Index.build_or_load(coll, cache, progress=False)
    folder = next((cache / "bm25").iterdir())
    before = seal_of(folder)
    ranking = index.retriever.retrieve(index.tokenizer.tokenize(["alpha"], return_as="ids", show_progress=False), k=5, show_progress=False)
    truncate(folder / name)
    _FILE_FP.clear()
    with caplog.at_level(logging.WARNING):
        again = BM25Index.build_or_load(coll, cache, progress=False)
    assert damaged_warning(caplog, folder)
    assert seal_of(folder) == before
    got = again.retriever.retrieve(again.tokenizer.tokenize(["alpha"], return_as="ids", show_progress=False), k=5, show_progress=False)
    np.testing.assert_array_equal(got.documents, ranking.documents)


@pytest.mark.parametrize("damage", [truncate, zero])
def test_corpus_embeddings_damaged_are_encoded_again(tiny_collection, tiny_bi_encoder, damage, caplog) -> None:
    data, cache = tiny_collection
    coll = load_collection(data, cache)
    encoder = BiEncoder.load(tiny_bi_encoder)
    args = (encoder, coll, cache, "fp", 16, 32, Runtime())
    first, rate, folder = cached_corpus_embeddings(*args, progress=False)
    first = np.array(first)
    assert rate is not None
    damage(folder / "corpus.npy")
    _FILE_FP.clear()
    with caplog.at_level(logging.WARNING):
        again, rate, _ = cached_corpus_embeddings(*args, progress=False)
    assert damaged_warning(caplog, folder) and rate is not None  # encoded again, not reused
    np.testing.assert_array_equal(np.array(again), first)
    assert np.abs(first).sum() > 0
    _FILE_FP.clear()
    assert cached_corpus_embeddings(*args, progress=False)[1] is None  # now reused


@pytest.mark.parametrize("damage", [truncate, zero])
def test_text_embeddings_damaged_are_encoded_again(tmp_path, tiny_bi_encoder, damage, caplog) -> None:
    encoder = BiEncoder.load(tiny_bi_encoder)
    args = (encoder, ["cells divide", "mice and men"], "query", tmp_path, "fp", 8, Runtime())
    first = cached_text_embeddings(*args, progress=False)
    (path,) = (tmp_path / "embeddings" / "texts").glob("*.npy")
    damage(path)
    _FILE_FP.clear()
    with caplog.at_level(logging.WARNING):
        again = cached_text_embeddings(*args, progress=False)
    assert damaged_warning(caplog, path)
    np.testing.assert_array_equal(again, first)
    assert verify_entry(path)


@pytest.mark.parametrize("damage", [truncate, zero])
def test_onnx_graph_damaged_is_exported_again(tmp_path, monkeypatch, damage, caplog) -> None:
    """The exporter is replaced by a writer of fixed bytes: what is tested is the cache around it."""
    exports = []

    def fake_export(model, names, output, path):
        exports.append(path)
        Path(path).write_bytes(b"onnx-graph " * 100)

    monkeypatch.setattr(onnx_runtime, "_export", fake_export)
    monkeypatch.setattr(onnx_runtime, "_inline", lambda path: None)
    model = torch.nn.Linear(2, 2)
    path = onnx_runtime.exported(model, "last_hidden_state", cache=tmp_path)
    assert onnx_runtime.exported(model, "last_hidden_state", cache=tmp_path) == path and len(exports) == 1
    damage(path)
    _FILE_FP.clear()
    with caplog.at_level(logging.WARNING):
        assert onnx_runtime.exported(model, "last_hidden_state", cache=tmp_path) == path
    assert len(exports) == 2 and damaged_warning(caplog, path)
    assert path.read_bytes() == b"onnx-graph " * 100
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([path.name, seal_path(path).name])


def test_unsealed_entry_is_not_trusted(tiny_collection, caplog) -> None:
    """A cache folder without its checksums (killed before they were written, or from an older
    version) is rebuilt, not used."""
    data, cache = tiny_collection
    first = load_collection(data, cache)
    (first.path / SEAL).unlink()
    with caplog.at_level(logging.WARNING):
        again = load_collection(data, cache)
    assert damaged_warning(caplog, first.path) and "missing" in caplog.text and (again.path / SEAL).is_file()


# --------------------------------------------------------------------------- through the pipeline
@pytest.fixture(scope="module")
def ran(tmp_path_factory, tiny_beir, tiny_bi_encoder):
    """One tiny pipeline run; what its stages wrote, for comparison after each damage."""
    args = tiny_overrides(tmp_path_factory.mktemp("h3") / "runs", tiny_beir, tiny_bi_encoder)
    cfg = compose(args)
    pipeline.run(cfg)
    return args, cfg, _state(cfg)


def _state(cfg) -> dict:
    """Every stage's key and output checksums, the evaluate metrics (timings left out) and the
    cached teacher scores."""
    state = {}
    for stage in ("mine", "score", "train"):  # evaluate's own files hold timings: compared below
        manifest = read_manifest(stage_dir(cfg, stage))
        state[stage] = (manifest.key, {k: v for k, v in manifest.checksums.items() if "/" not in k})
    ev = stage_dir(cfg, "evaluate")
    metrics = json.loads((ev / "metrics.json").read_text())
    state["metrics"] = {name: m["metrics"] for name, m in metrics.items()}
    state["per_query"] = {name: json.loads((ev / name / "metrics.json").read_text())["per_query"] for name in metrics}
    state["runs"] = {name: (ev / name / "run.trec").read_text() for name in metrics}
    (cache,) = (cache_dir(cfg) / "scores").iterdir()
    table = ScoreCache(cache).load()  # as a mapping: shards rescored after damage come last
    pairs = zip(table["qid"].to_pylist(), table["docid"].to_pylist(), strict=True)
    state["scores"] = dict(zip(pairs, table["score"].to_pylist(), strict=True))
    return state


def _shard(cfg) -> Path:
    return sorted((cache_dir(cfg) / "scores").glob("*/shard-*.parquet"))[0]


ARTIFACTS = {
    "mine candidates": lambda cfg: stage_dir(cfg, "mine") / "candidates.parquet",
    "score output": lambda cfg: stage_dir(cfg, "score") / "scores.parquet",
    "model weights": lambda cfg: stage_dir(cfg, "train") / "model" / "model.safetensors",
    "train log": lambda cfg: stage_dir(cfg, "train") / "train_log.jsonl",
    "student run file": lambda cfg: stage_dir(cfg, "evaluate") / "student" / "run.trec",
    "bm25 metrics": lambda cfg: stage_dir(cfg, "evaluate") / "bm25" / "metrics.json",
}


# each kind once, truncated or zeroed (both are found the same way by every kind: size, then sha256)
CASES = [
    ("mine candidates", truncate),
    ("score output", zero),
    ("model weights", truncate),
    ("model weights", zero),
    ("train log", truncate),
    ("student run file", zero),
    ("bm25 metrics", truncate),
]


@pytest.mark.parametrize(("artifact", "damage"), CASES)
def test_damaged_stage_output_is_rebuilt_identical(ran, artifact, damage, caplog) -> None:
    args, cfg, want = ran
    path = ARTIFACTS[artifact](cfg)
    damage(path)
    fresh_process()
    with caplog.at_level(logging.WARNING):
        pipeline.run(cfg)
    assert any("damaged" in r.getMessage() for r in caplog.records)
    assert _state(cfg) == want


@pytest.mark.parametrize("damage", [truncate, zero])
def test_damaged_score_shard_is_dropped_and_rescored_identical(ran, damage, caplog) -> None:
    args, cfg, want = ran
    shard = _shard(cfg)
    damage(shard)
    fresh_process()
    with caplog.at_level(logging.WARNING):
        score.run(compose([*args, "force=true"]))
    assert damaged_warning(caplog, shard) and not shard.exists()
    assert _state(cfg) == want
    table = pq.read_table(stage_dir(cfg, "score") / score.OUTPUT)
    assert np.isfinite(table["teacher"].to_numpy()).all()


def test_require_stage_refuses_a_damaged_output(ran) -> None:
    args, cfg, want = ran
    output = stage_dir(cfg, "score") / score.OUTPUT
    original = output.read_bytes()
    try:
        zero(output)
        _FILE_FP.clear()
        with pytest.raises(ArtifactError, match="damaged.*sha256 differs.*distillrank score"):
            require_stage(cfg, "score", want["score"][0])
    finally:
        output.write_bytes(original)
    _FILE_FP.clear()
    assert require_stage(cfg, "score", want["score"][0])[1] == stage_dir(cfg, "score")
