"""hardware.backend=onnx: teachers run by ONNX Runtime score as PyTorch does, export once, and are
keyed and checked apart from PyTorch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from distillrank import runtime
from distillrank.builders import components
from distillrank.builders.training import train_queries
from distillrank.errors import ConfigError
from distillrank.models import onnx_runtime
from distillrank.models.onnx_runtime import CACHE_ENV, OnnxBackbone
from distillrank.ranking import Pairs
from distillrank.runtime import Runtime
from distillrank.teachers import BiEncoderTeacher, CrossEncoderTeacher
from distillrank.teachers.base import Teacher

pytestmark = pytest.mark.skipif(bool(onnx_runtime.missing_packages()), reason="the onnx extra is not installed")

CPU = torch.device("cpu")
QUERIES = ["cells and proteins", "what is a membrane", "a"]
PASSAGES = [
    "the membrane of a cell is a lipid bilayer with many proteins in it",
    "proteins",
    "blood cells of mice and men, and the proteins they carry in the blood stream",
    "a short one",
]
PAIR_Q = np.array([0, 0, 1, 1, 2, 2, 0], dtype=np.int64)
PAIR_P = np.array([0, 1, 2, 3, 0, 2, 3], dtype=np.int64)


@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("onnx")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CACHE_ENV, str(folder))
        yield folder


def _scores(teacher, backend: str, precision: str = "fp32") -> np.ndarray:
    return teacher.score_pairs(Pairs(QUERIES, PASSAGES, PAIR_Q, PAIR_P), Runtime(precision=precision, backend=backend), progress=False)


def test_bi_encoder_teacher_scores_as_in_pytorch(tiny_bi_encoder: Path, onnx_cache: Path) -> None:
    teacher = BiEncoderTeacher(str(tiny_bi_encoder), query_max_length=16, passage_max_length=12, batch_size=2)
    reference = _scores(teacher, "torch")
    scores = _scores(teacher, "onnx")
    assert isinstance(teacher._encoder.backbone, OnnxBackbone)
    np.testing.assert_allclose(scores, reference, atol=1e-5)  # padded and unpadded batches alike
    files = sorted(onnx_cache.glob("*.onnx"))
    assert len(files) == 1 and not list(onnx_cache.glob(".export-*"))  # complete graphs only
    stamp = files[0].stat().st_mtime_ns
    fresh = BiEncoderTeacher(str(tiny_bi_encoder), query_max_length=16, passage_max_length=12, batch_size=2)
    np.testing.assert_allclose(_scores(fresh, "onnx"), reference, atol=1e-5)
    assert files[0].stat().st_mtime_ns == stamp  # exported once, then read from the cache
    assert isinstance(_scores(teacher, "torch"), np.ndarray) and not isinstance(teacher._encoder.backbone, OnnxBackbone)


def test_cross_encoder_teacher_scores_as_in_pytorch_and_int8_ranks_alike(tiny_cross_encoder: Path, onnx_cache: Path) -> None:
    teacher = CrossEncoderTeacher(str(tiny_cross_encoder), max_length=24, batch_size=3)
    reference = _scores(teacher, "torch")
    np.testing.assert_allclose(_scores(teacher, "onnx"), reference, atol=1e-5)
    int8 = _scores(teacher, "onnx", "int8")
    assert int8.shape == reference.shape and not np.allclose(int8, reference, atol=1e-7)  # quantized
    assert spearmanr(int8, reference).statistic > 0.8


def test_the_backend_is_checked_and_keys_the_scores(tiny_bi_encoder: Path) -> None:
    with pytest.raises(ConfigError, match="expected one of"):
        runtime.check_backend("tensorrt")
    with pytest.raises(ConfigError, match="CPU only"):
        runtime.check_backend("onnx", torch.device("cuda"))
    teacher = BiEncoderTeacher(str(tiny_bi_encoder))
    torch_fp = teacher.fingerprint(Runtime(backend="torch"))
    assert torch_fp == teacher.fingerprint(Runtime()) == teacher.fingerprint()  # old caches stay valid
    onnx_fp = teacher.fingerprint(Runtime(backend="onnx"))
    assert len({torch_fp, onnx_fp, teacher.fingerprint(Runtime(precision="int8", backend="onnx"))}) == 3

    class Generative(Teacher):
        kind = "llm"

        def identity(self, runtime: Runtime) -> dict:
            return {"x": 1}

    with pytest.raises(ConfigError, match="hardware.backend=onnx is supported by"):
        Generative().fingerprint(Runtime(backend="onnx"))


def test_missing_packages_are_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime, "missing_onnx_packages", lambda: ["onnxruntime"])
    with pytest.raises(ConfigError, match=r"pip install 'distillrank\[onnx\]'"):
        runtime.check_backend("onnx")


def test_the_score_stage_caches_onnx_scores_apart(make_cfg, onnx_cache: Path) -> None:
    from distillrank.stages import mine, score

    cfg_torch = make_cfg()
    cfg_onnx = make_cfg("hardware=cpu_onnx")
    assert components.teacher_fingerprint(cfg_onnx) != components.teacher_fingerprint(cfg_torch)
    mine.run(cfg_onnx)
    manifest = score.run(cfg_onnx)
    assert manifest.counts["pairs_scored"] > 0


def test_dense_mining_with_onnx_finds_the_same_candidates(make_cfg, tiny_bi_encoder: Path, onnx_cache: Path) -> None:
    from distillrank.builders.mining import dense_candidates, dense_key

    overrides = ("mining=dense", f"mining.model={tiny_bi_encoder}")
    cfg_torch, cfg_onnx = make_cfg(*overrides), make_cfg(*overrides, "hardware=cpu_onnx")
    assert "backend" not in dense_key(cfg_torch)  # keys of PyTorch runs stay as they were
    assert dense_key(cfg_onnx)["backend"] == "onnx"
    coll = components.collection(cfg_torch)
    queries = [text for _, text in train_queries(cfg_torch)]
    rows_t, scores_t, info_t = dense_candidates(cfg_torch, coll, queries, 5, progress=False)
    rows_o, scores_o, info_o = dense_candidates(cfg_onnx, coll, queries, 5, progress=False)
    assert info_o["embeddings"] != info_t["embeddings"]  # corpus embeddings cached apart
    np.testing.assert_allclose(scores_o, scores_t, atol=1e-5)
    assert (rows_o[:, 0] == rows_t[:, 0]).mean() == 1.0


def test_the_int8_graph_is_quantized_from_the_cached_fp32_export_and_equals_a_fresh_one(
    tiny_cross_encoder: Path, tmp_path: Path
) -> None:
    backbone = CrossEncoderTeacher(str(tiny_cross_encoder)).module(Runtime()).model
    exports = []
    real_export = onnx_runtime._export
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(onnx_runtime, "_export", lambda *a: exports.append(a[-1]) or real_export(*a))
        int8 = onnx_runtime.exported(backbone, "logits", int8=True, cache=tmp_path / "cache")
        fp32 = onnx_runtime.exported(backbone, "logits", int8=False, cache=tmp_path / "cache")
    assert len(exports) == 1 and fp32 != int8 and fp32.is_file()  # one export serves both graphs
    # the graph of the former path (quantize the fresh export, then inline): byte for byte the same
    fresh, old = tmp_path / "fresh.onnx", tmp_path / "old-int8.onnx"
    real_export(backbone, onnx_runtime._input_names(backbone), "logits", fresh)
    onnx_runtime._quantize(fresh, old)
    onnx_runtime._inline(old)
    assert old.read_bytes() == int8.read_bytes()


def test_the_export_keeps_the_exporters_notes_out_of_the_users_log(
    tiny_bi_encoder: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A first use under Hydra's INFO logging printed ~100 lines of onnxscript's and onnx_ir's graph
    passes ("Replaced initializer …") into the run's log; the export quiets them, and only them, and
    gives each logger its level back."""
    import logging

    from distillrank.models.bi_encoder import BiEncoder

    backbone = BiEncoder.load(tiny_bi_encoder).backbone
    before = {name: logging.getLogger(name).level for name in onnx_runtime.EXPORTER_LOGGERS}
    with caplog.at_level(logging.INFO):
        onnx_runtime._export(backbone, onnx_runtime._input_names(backbone), "last_hidden_state", tmp_path / "m.onnx")
        logging.getLogger("distillrank.models.onnx_runtime").info("ours still shows")
    noisy = [r for r in caplog.records if r.name.split(".")[0] in ("onnxscript", "onnx_ir", "torch")]
    assert not noisy, [r.getMessage() for r in noisy[:3]]
    assert [r.getMessage() for r in caplog.records] == ["ours still shows"]
    assert {name: logging.getLogger(name).level for name in onnx_runtime.EXPORTER_LOGGERS} == before
    assert (tmp_path / "m.onnx").stat().st_size > 0
