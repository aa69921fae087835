"""Tests of ``scripts/make_tiny_models.py``: tiny models load and behave, the tiny BEIR is sound."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import make_tiny_models as mtm
import pytest
import torch
from safetensors.torch import load_file
from sentence_transformers import CrossEncoder, SentenceTransformer
from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "make_tiny_models.py"
SENTENCES = ["What does the protein do?", "The glacier moves slowly.", "A coral reef near the lagoon"]
STOPWORDS = set(mtm.FILLER_WORDS) | set(mtm.QUERY_WORDS)


def _read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def _read_qrels(path: Path) -> dict[str, dict[str, int]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "query-id\tcorpus-id\tscore"
    qrels: dict[str, dict[str, int]] = {}
    for line in lines[1:]:
        qid, did, score = line.split("\t")
        qrels.setdefault(qid, {})[did] = int(score)
    return qrels


def _words(text: str) -> list[str]:
    return [w for w in re.findall(r"[a-z0-9]+", text.lower()) if w not in STOPWORDS]


def _bm25_ndcg10(corpus: list[dict], queries: dict[str, str], qrels: dict[str, dict[str, int]]) -> float:
    """Mean nDCG@10 of a plain BM25 (k1=0.9, b=0.4) over title + text."""
    docs = {d["_id"]: Counter(_words(f"{d['title']} {d['text']}")) for d in corpus}
    avg_len = sum(sum(c.values()) for c in docs.values()) / len(docs)
    df = Counter(w for c in docs.values() for w in c)
    idf = {w: math.log(1 + (len(docs) - n + 0.5) / (n + 0.5)) for w, n in df.items()}
    total = 0.0
    for qid, rel in qrels.items():
        terms = _words(queries[qid])
        scores = {}
        for did, tf in docs.items():
            norm = 0.9 * (1 - 0.4 + 0.4 * sum(tf.values()) / avg_len)
            scores[did] = sum(idf.get(t, 0.0) * tf[t] * 1.9 / (tf[t] + norm) for t in terms)
        ranked = sorted(scores, key=lambda d: (-scores[d], d))[:10]
        dcg = sum(rel.get(d, 0) / math.log2(i + 2) for i, d in enumerate(ranked))
        ideal = sum(g / math.log2(i + 2) for i, g in enumerate(sorted(rel.values(), reverse=True)[:10]))
        total += dcg / ideal
    return total / len(qrels)


# ----------------------------------------------------------------------------------------- bi-encoder


def test_bi_encoder_loads_and_encodes(tiny_bi_encoder: Path) -> None:
    for name in ("config.json", "model.safetensors", "tokenizer.json", "vocab.txt", "tokenizer_config.json"):
        assert (tiny_bi_encoder / name).is_file(), name
    modules = json.loads((tiny_bi_encoder / "modules.json").read_text())
    assert [(m["path"], m["type"].rsplit(".", 1)[-1]) for m in modules] == [
        ("", "Transformer"),
        ("1_Pooling", "Pooling"),
    ]
    sbert_cfg = json.loads((tiny_bi_encoder / "sentence_bert_config.json").read_text())
    assert sbert_cfg == {"max_seq_length": 64, "do_lower_case": False}

    model = SentenceTransformer(str(tiny_bi_encoder), device="cpu")
    emb = model.encode(SENTENCES, convert_to_tensor=True)
    assert emb.shape == (len(SENTENCES), 32)
    assert torch.isfinite(emb).all()
    assert model.max_seq_length == 64
    # Distinct inputs get distinct embeddings.
    assert not torch.allclose(emb[0], emb[1])


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_bi_encoder_pooling_matches_request(tmp_path: Path, pooling: str) -> None:
    out = mtm.make_tiny_bi_encoder(tmp_path / pooling, hidden=16, layers=1, heads=2, pooling=pooling)
    cfg = json.loads((out / "1_Pooling" / "config.json").read_text())
    assert cfg["word_embedding_dimension"] == 16
    assert cfg["pooling_mode_mean_tokens"] is (pooling == "mean")
    assert cfg["pooling_mode_cls_token"] is (pooling == "cls")
    assert not cfg["pooling_mode_max_tokens"]

    # The sentence-transformers embedding equals the pooling done by hand on the raw BERT output.
    st_emb = SentenceTransformer(str(out), device="cpu").encode(SENTENCES, convert_to_tensor=True)
    tokenizer = AutoTokenizer.from_pretrained(out)
    bert = AutoModel.from_pretrained(out).eval()
    batch = tokenizer(SENTENCES, padding=True, truncation=True, max_length=64, return_tensors="pt")
    with torch.no_grad():
        hidden = bert(**batch).last_hidden_state
    if pooling == "cls":
        expected = hidden[:, 0]
    else:
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        expected = (hidden * mask).sum(1) / mask.sum(1)
    torch.testing.assert_close(st_emb, expected, atol=1e-5, rtol=1e-4)


def test_bi_encoder_rejects_unknown_pooling(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="pooling"):
        mtm.make_tiny_bi_encoder(tmp_path, pooling="sum")


def test_bi_encoder_normalize_gives_unit_norm(tmp_path: Path) -> None:
    out = mtm.make_tiny_bi_encoder(tmp_path / "norm", hidden=16, layers=1, normalize=True)
    modules = json.loads((out / "modules.json").read_text())
    assert modules[-1]["path"] == "2_Normalize" and modules[-1]["type"].endswith("Normalize")
    emb = SentenceTransformer(str(out), device="cpu").encode(SENTENCES, convert_to_tensor=True)
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(len(SENTENCES)), atol=1e-5, rtol=0)


def test_tokenizer_covers_tiny_beir_words(tiny_bi_encoder: Path, tiny_beir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_bi_encoder)
    vocab_lines = (tiny_bi_encoder / "vocab.txt").read_text(encoding="utf-8").splitlines()
    assert len(vocab_lines) == len(tokenizer) <= 1000
    assert vocab_lines[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert tokenizer.convert_ids_to_tokens(list(range(len(vocab_lines)))) == vocab_lines
    words = {
        w for d in _read_jsonl(tiny_beir / "corpus.jsonl") for w in re.findall(r"[a-z]+", d["text"].lower())
    }
    split = sorted(w for w in words if len(tokenizer.tokenize(w)) != 1)
    assert not split, f"words not in the vocabulary: {split}"
    # Lower-casing, and no [UNK] for ordinary ASCII.
    assert tokenizer.tokenize("PROTEIN!") == tokenizer.tokenize("protein!")
    assert tokenizer.unk_token not in tokenizer.tokenize("Zebra #42, qwerty?")


# -------------------------------------------------------------------------------------- cross-encoder


def test_cross_encoder_loads_and_scores(tiny_cross_encoder: Path) -> None:
    pairs = [(SENTENCES[0], SENTENCES[1]), (SENTENCES[0], SENTENCES[2]), (SENTENCES[1], SENTENCES[2])]
    ce = CrossEncoder(str(tiny_cross_encoder), device="cpu")
    scores = ce.predict(pairs)
    assert scores.shape == (len(pairs),)

    tokenizer = AutoTokenizer.from_pretrained(tiny_cross_encoder)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_cross_encoder).eval()
    assert model.config.num_labels == 1
    batch = tokenizer(
        [q for q, _ in pairs], [d for _, d in pairs], padding=True, truncation=True, return_tensors="pt"
    )
    assert (batch["token_type_ids"] == 1).any()
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape == (len(pairs), 1)
    # Scores differ between pairs, so a teacher built from this model ranks (no all-way ties).
    assert logits.max() - logits.min() > 1e-3


# -------------------------------------------------------------------------------------- determinism


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def _same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("builder", [mtm.make_tiny_bi_encoder, mtm.make_tiny_cross_encoder])
def test_same_seed_same_weights_other_seed_other_weights(tmp_path: Path, builder) -> None:
    state_before = torch.random.get_rng_state()
    first = builder(tmp_path / "a", hidden=16, layers=1, seed=3)
    again = builder(tmp_path / "b", hidden=16, layers=1, seed=3)
    other = builder(tmp_path / "c", hidden=16, layers=1, seed=4)
    # Building does not disturb the caller's global RNG.
    assert torch.equal(torch.random.get_rng_state(), state_before)

    assert _same_tensors(_tensors(first), _tensors(again))
    assert not _same_tensors(_tensors(first), _tensors(other))
    for name in ("tokenizer.json", "vocab.txt", "config.json"):
        assert (first / name).read_bytes() == (again / name).read_bytes(), name
    size = (first / "model.safetensors").stat().st_size
    assert size < 1_000_000


def test_tiny_beir_is_deterministic(tmp_path: Path) -> None:
    a = mtm.make_tiny_beir(tmp_path / "a", seed=5)
    b = mtm.make_tiny_beir(tmp_path / "b", seed=5)
    c = mtm.make_tiny_beir(tmp_path / "c", seed=6)
    files = ["corpus.jsonl", "queries.jsonl", "qrels/train.tsv", "qrels/test.tsv"]
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    assert (a / "corpus.jsonl").read_bytes() != (c / "corpus.jsonl").read_bytes()


# ----------------------------------------------------------------------------------------- tiny BEIR


def test_tiny_beir_structure(tiny_beir: Path) -> None:
    corpus = _read_jsonl(tiny_beir / "corpus.jsonl")
    queries = _read_jsonl(tiny_beir / "queries.jsonl")
    assert len(corpus) == 60 and len(queries) == 24
    assert all(set(d) == {"_id", "title", "text"} and d["text"] for d in corpus)
    assert all(set(q) == {"_id", "text"} and q["text"] for q in queries)
    doc_ids = {d["_id"] for d in corpus}
    query_ids = {q["_id"] for q in queries}
    assert len(doc_ids) == len(corpus) and len(query_ids) == len(queries)

    train = _read_qrels(tiny_beir / "qrels" / "train.tsv")
    test = _read_qrels(tiny_beir / "qrels" / "test.tsv")
    assert not set(train) & set(test)
    assert (len(train), len(test)) == (16, 8)
    for qrels in (train, test):
        for qid, rel in qrels.items():
            assert qid in query_ids
            assert set(rel) <= doc_ids
            assert 1 <= len(rel) <= 2 and all(score > 0 for score in rel.values())
    assert any(len(rel) == 2 for rel in {**train, **test}.values())


def test_tiny_beir_relevance_is_lexical(tiny_beir: Path) -> None:
    corpus = _read_jsonl(tiny_beir / "corpus.jsonl")
    docs = {d["_id"]: set(_words(f"{d['title']} {d['text']}")) for d in corpus}
    queries = {q["_id"]: q["text"] for q in _read_jsonl(tiny_beir / "queries.jsonl")}
    test = _read_qrels(tiny_beir / "qrels" / "test.tsv")
    train = _read_qrels(tiny_beir / "qrels" / "train.tsv")

    overlapping = [qid for qid, rel in test.items() if any(set(_words(queries[qid])) & docs[d] for d in rel)]
    assert len(overlapping) >= 0.8 * len(test)

    # BM25 is far above random (random nDCG@10 with 1-2 relevant docs among 60 is about 0.1).
    for qrels in (train, test):
        assert _bm25_ndcg10(corpus, queries, qrels) > 0.6


# ----------------------------------------------------------------------------------------------- CLI


def test_cli_writes_three_folders(tmp_path: Path) -> None:
    out = tmp_path / "assets"
    result = subprocess.run(
        [sys.executable, str(SCRIPT), str(out)], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    for name in ("bi_encoder", "cross_encoder", "beir"):
        assert (out / name).is_dir()
        assert str(out / name) in result.stdout
    assert (out / "bi_encoder" / "modules.json").is_file()
    assert (out / "cross_encoder" / "model.safetensors").is_file()
    assert (out / "beir" / "qrels" / "test.tsv").is_file()
