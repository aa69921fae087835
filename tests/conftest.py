"""Shared pytest fixtures: tiny random-init models, a tiny BEIR collection, the real collections.

The tiny assets are built once per test session by ``scripts/make_tiny_models.py`` (imported
through ``sys.path``) into ``tmp_path_factory`` folders. Every test runs offline (no hub access),
with ``torch.manual_seed(0)``; torch uses two threads.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPTS_DIR = REPO_ROOT / "scripts"
if str(SCRIPTS_DIR) not in sys.path:
    sys.path.insert(0, str(SCRIPTS_DIR))

import make_tiny_models  # noqa: E402

from distillrank.validation import compose  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _torch_threads() -> None:
    """Keep torch to two CPU threads for the whole session (small models gain nothing from more)."""
    torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _offline_and_seeded(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Forbid hub access and seed torch before every test."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def tiny_beir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder of the synthetic BEIR collection (60 docs, 16 train and 8 test queries)."""
    return make_tiny_models.make_tiny_beir(tmp_path_factory.mktemp("tiny_beir"))


@pytest.fixture(scope="session")
def tiny_texts(tiny_beir: Path) -> list[str]:
    """Tokenizer training texts of the tiny models: ``DEFAULT_TEXTS`` plus the tiny BEIR texts."""
    return make_tiny_models.DEFAULT_TEXTS + make_tiny_models.beir_texts(tiny_beir)


@pytest.fixture(scope="session")
def tiny_bi_encoder(tmp_path_factory: pytest.TempPathFactory, tiny_texts: list[str]) -> Path:
    """sentence-transformers folder of a random-init BERT bi-encoder (hidden 32, mean pooling)."""
    return make_tiny_models.make_tiny_bi_encoder(tmp_path_factory.mktemp("tiny_bi_encoder"), texts=tiny_texts)


@pytest.fixture(scope="session")
def tiny_cross_encoder(tmp_path_factory: pytest.TempPathFactory, tiny_texts: list[str]) -> Path:
    """Hugging Face folder of a random-init BERT cross-encoder with one output logit."""
    return make_tiny_models.make_tiny_cross_encoder(
        tmp_path_factory.mktemp("tiny_cross_encoder"), texts=tiny_texts
    )


@pytest.fixture(scope="session")
def tiny_colbert(tmp_path_factory: pytest.TempPathFactory, tiny_texts: list[str]) -> Path:
    """Folder of a random-init BERT ColBERT (hidden 32, dim 16) saved by ``ColBERTModel.save``."""
    return make_tiny_models.make_tiny_colbert(tmp_path_factory.mktemp("tiny_colbert"), texts=tiny_texts)


@pytest.fixture(scope="session")
def tiny_t5(tmp_path_factory: pytest.TempPathFactory, tiny_texts: list[str]) -> Path:
    """Hugging Face folder of a random-init T5 (d_model 32) whose tokenizer keeps true/false whole."""
    return make_tiny_models.make_tiny_t5(tmp_path_factory.mktemp("tiny_t5"), texts=tiny_texts)


@pytest.fixture(scope="session")
def tiny_causal_lm(tmp_path_factory: pytest.TempPathFactory, tiny_texts: list[str]) -> Path:
    """Hugging Face folder of a random-init GPT-2 (hidden 32) with a word-level tokenizer."""
    return make_tiny_models.make_tiny_causal_lm(tmp_path_factory.mktemp("tiny_causal_lm"), texts=tiny_texts)


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """Real collections: ``$DISTILLRANK_DATA_DIR``, else ``<repo>/../shared/data``; skips if absent."""
    path = Path(os.environ.get("DISTILLRANK_DATA_DIR") or REPO_ROOT.parent / "shared" / "data")
    if not path.is_dir():
        pytest.skip(f"real collections not found at {path} (set DISTILLRANK_DATA_DIR)")
    return path


@pytest.fixture(scope="session")
def scifact_dir(shared_data_dir: Path) -> Path:
    """The BEIR SciFact folder of the shared data; skips if absent."""
    path = shared_data_dir / "scifact"
    if not path.is_dir():
        pytest.skip(f"SciFact not found at {path}")
    return path


# --------------------------------------------------------------------------- pipeline configs
def tiny_overrides(workspace: Path, beir: Path, bi_encoder: Path) -> list[str]:
    """Overrides that point every stage at tiny assets: seconds per run on a CPU. The hardware is
    written out (``hardware=cpu``), so no test calibrates but those of ``hardware=auto`` (the default),
    which override it."""
    return [
        f"workspace={workspace}",
        "hardware=cpu",
        "data=beir",
        f"data.path={beir}",
        "data.name=tiny",
        f"teacher.model={bi_encoder}",
        f"student.model={bi_encoder}",
        "student.num_layers=1",
        "student.passage_max_length=64",
        "mining.depth=30",
        "mining.window_start=2",
        "mining.window_end=30",
        "mining.num_negatives=4",
        "train.batch_size=4",
        "train.lr=1e-3",
        "evaluate.batch_size=16",
        "score.progress=false",
    ]


@pytest.fixture
def tiny_args(tmp_path: Path, tiny_beir: Path, tiny_bi_encoder: Path) -> list[str]:
    """The tiny overrides with a fresh workspace per test."""
    return tiny_overrides(tmp_path / "runs", tiny_beir, tiny_bi_encoder)


@pytest.fixture
def make_cfg(tiny_args: list[str]) -> Callable[..., DictConfig]:
    """``make_cfg("train.lr=1e-2", ...)``: the tiny config with extra overrides."""

    def make(*extra: str) -> DictConfig:
        return compose([*tiny_args, *extra])

    return make
