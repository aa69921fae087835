"""The models and data the benchmarks run on, built once into a cache folder.

Real modes (quick, full): all-MiniLM-L6-v2 (offline copy) as the bi-encoder; a cross-encoder made
of the MiniLM backbone with a randomly initialised one-logit head (the architecture and cost of
``cross-encoder/ms-marco-MiniLM-L6-v2``, which has no offline copy: its scores are meaningless,
its speed is not); a 2-layer student cut from MiniLM; SciFact from the shared data folder.
Smoke mode: the tiny random-init models and tiny BEIR collection of ``scripts/make_tiny_models.py``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from types import SimpleNamespace

import torch

from bench.common import MINILM, SCRIPTS_DIR, Context, Sizes
from distillrank.data import load_collection
from distillrank.errors import DataError
from distillrank.models.bi_encoder import BiEncoder
from distillrank.models.hub import resolve_model
from distillrank.workspace import atomic_dir

STUDENT_LAYERS = 2


def minilm_cross_encoder(folder: Path, seed: int = 0) -> Path:
    """``folder``: MiniLM-L6 with a random 1-logit classification head (built on first use)."""
    if (folder / "config.json").is_file():
        return folder
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    source = resolve_model(MINILM)
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(source, num_labels=1)
    with atomic_dir(folder) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        AutoTokenizer.from_pretrained(source).save_pretrained(tmp)
    return folder


def minilm_student(folder: Path, passage_max_length: int) -> Path:
    """``folder``: the first two MiniLM layers as a bi-encoder in sentence-transformers format."""
    if (folder / "config.json").is_file():
        return folder
    student = BiEncoder.from_backbone(MINILM, num_layers=STUDENT_LAYERS, passage_max_length=passage_max_length)
    student.backbone.config.num_hidden_layers = STUDENT_LAYERS
    student.save(folder)
    return folder


def _tiny_assets(root: Path) -> tuple[Path, Path, Path]:
    if str(SCRIPTS_DIR) not in sys.path:
        sys.path.insert(0, str(SCRIPTS_DIR))
    import make_tiny_models

    beir = root / "tiny_beir"
    if not (beir / "corpus.jsonl").is_file():
        make_tiny_models.make_tiny_beir(beir)
    texts = make_tiny_models.DEFAULT_TEXTS + make_tiny_models.beir_texts(beir)
    bi = root / "tiny_bi_encoder"
    if not (bi / "config.json").is_file():
        make_tiny_models.make_tiny_bi_encoder(bi, texts=texts, normalize=True)
    ce = root / "tiny_cross_encoder"
    if not (ce / "config.json").is_file():
        make_tiny_models.make_tiny_cross_encoder(ce, texts=texts)
    return beir, bi, ce


def data_root() -> Path:
    """``$DISTILLRANK_DATA_DIR``, else ``<repo>/../shared/data``."""
    return Path(os.environ.get("DISTILLRANK_DATA_DIR") or SCRIPTS_DIR.parent.parent / "shared" / "data")


def build_context(mode: str, sizes: Sizes, cache: Path, scratch: Path, log=print) -> Context:
    """Models and collection of ``mode`` (smoke: tiny assets under ``cache/tiny``).

    Raises:
        DataError: when SciFact is not in the shared data folder (real modes).
    """
    cache.mkdir(parents=True, exist_ok=True)
    scratch.mkdir(parents=True, exist_ok=True)
    if mode == "smoke":
        beir, bi, ce = _tiny_assets(cache / "tiny")
        student = bi
        data = SimpleNamespace(name="tiny", source="beir", path=str(beir), train_split="train", test_split="test")
    else:
        scifact = data_root() / "scifact"
        if not scifact.is_dir():
            raise DataError(f"SciFact not found at {scifact}; set DISTILLRANK_DATA_DIR to the shared data folder")
        bi = resolve_model(MINILM)
        log("bench: building the MiniLM cross-encoder and the 2-layer student (cached)")
        ce = minilm_cross_encoder(cache / "minilm-l6-cross-encoder-random-head")
        student = minilm_student(cache / f"minilm-l{STUDENT_LAYERS}-student", sizes.passage_max_length)
        data = SimpleNamespace(name="scifact", source="beir", path=str(scifact), train_split="train", test_split="test")
    collection = load_collection(data, cache)
    return Context(mode, sizes, Path(bi), Path(ce), Path(student), collection, scratch, cache, log)


def bm25_pairs(ctx: Context, split: str, n_queries: int, depth: int) -> tuple[list[str], list[str], list[tuple[int, int]]]:
    """BM25 candidates of the first ``n_queries`` queries of ``split``: distinct query texts,
    distinct passage texts and the (query index, passage index) pairs, in retrieval order."""
    c = bm25_candidates(ctx, split, n_queries, depth)
    return c["queries"], c["passages"], c["pairs"]


def bm25_candidates(ctx: Context, split: str, n_queries: int, depth: int) -> dict:
    """:func:`bm25_pairs` with the ids: ``qids`` / ``queries`` (ids and texts of the first
    ``n_queries`` queries of ``split``), ``docids`` / ``passages`` (the distinct passages, in
    first-appearance order) and ``pairs`` ((query index, passage index), in retrieval order)."""
    from distillrank.mining.bm25 import BM25Index

    queries = ctx.collection.split_queries(split)[:n_queries]
    index = BM25Index.build_or_load(ctx.collection, ctx.cache, progress=False)
    rows, _ = index.search([t for _, t in queries], depth, progress=False)
    slot: dict[int, int] = {}
    pairs = []
    for qi, ranked in enumerate(rows):
        for r in ranked:
            if r >= 0:
                pairs.append((qi, slot.setdefault(int(r), len(slot))))
    doc_ids = ctx.collection.doc_ids()
    return {
        "qids": [q for q, _ in queries],
        "queries": [t for _, t in queries],
        "docids": [doc_ids[r] for r in slot],
        "passages": ctx.collection.passage_texts(list(slot)),
        "pairs": pairs,
    }
