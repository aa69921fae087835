"""ColBERTModel: MaxSim by hand, query augmentation, masks, save/load (ours, PyLate layout, Stanford)."""

from __future__ import annotations

import json
from pathlib import Path

import make_tiny_models
import pytest
import torch

from distillrank.errors import ConfigError
from distillrank.models.colbert import DENSE_DIR, SETTINGS_FILE, ColBERTModel
from distillrank.models.hub import resolve_model
from distillrank.runtime import Runtime

QUERIES = ["What does the protein do?", "coral reef", "how does the glacier move near the northern valley"]
PASSAGES = [
    "The glacier moves slowly across the northern valley, while the river carries sediment.",
    "protein",
    "A coral reef near the lagoon protects the coastal village from storms!",
    "Researchers found that insulin affects glucose.",
]
ATOL = 1e-5


@pytest.fixture(autouse=True)
def _fresh_resolve_cache():
    resolve_model.cache_clear()
    yield
    resolve_model.cache_clear()


@pytest.fixture(scope="module")
def colbert(tiny_colbert: Path) -> ColBERTModel:
    return ColBERTModel.load(tiny_colbert)


def _scores(model: ColBERTModel, queries=QUERIES, passages=PASSAGES) -> torch.Tensor:
    with torch.no_grad():
        return model.score_matrix(*model.encode(queries, "query"), *model.encode(passages, "passage"))


# ----------------------------------------------------------------------------- MaxSim by hand
def _unit(*v: float) -> list[float]:
    t = torch.tensor(v)
    return (t / t.norm()).tolist()


def test_maxsim_by_hand_with_masks() -> None:
    # Query: two text tokens and one [MASK] expansion token (scored: mask True), one pad (not scored).
    q = torch.tensor([[[1.0, 0.0], [0.0, 1.0], _unit(1.0, 1.0), [-1.0, 0.0]]])
    q_mask = torch.tensor([[True, True, True, False]])
    # Passage 0: tokens e1, -e2 and a padding token equal to e2 that must be ignored.
    # Passage 1: one token (1,1)/sqrt2, then padding.
    p = torch.tensor(
        [
            [[1.0, 0.0], [0.0, -1.0], [0.0, 1.0]],
            [_unit(1.0, 1.0), [1.0, 0.0], [0.0, 1.0]],
        ]
    )
    p_mask = torch.tensor([[True, True, False], [True, False, False]])
    s = 2**-0.5
    # passage 0: e1 -> 1 ; e2 -> max(0, -1) = 0 ; mask tok (s, s) -> max(s, -s) = s  => 1 + s
    # passage 1: e1 -> s ; e2 -> s ; mask tok -> 1                                  => 1 + 2s
    expected = torch.tensor([[1 + s, 1 + 2 * s]])
    torch.testing.assert_close(ColBERTModel.score_matrix(q, q_mask, p, p_mask), expected)
    torch.testing.assert_close(ColBERTModel.score_matrix(q, q_mask, p, p_mask, max_elements=1), expected)
    pairs = ColBERTModel.score_pairs(q.expand(2, -1, -1), q_mask.expand(2, -1), p, p_mask)
    torch.testing.assert_close(pairs, expected[0])
    # Without the [MASK] token scored, each score loses its contribution (s and 1).
    no_expansion = q_mask.clone()
    no_expansion[0, 2] = False
    torch.testing.assert_close(
        ColBERTModel.score_matrix(q, no_expansion, p, p_mask), torch.tensor([[1.0, 2 * s]])
    )
    # If padding were not masked, passage 0's e2 would find the pad token (score 2 + s).
    torch.testing.assert_close(
        ColBERTModel.score_matrix(q, q_mask, p, torch.ones_like(p_mask))[0, 0], torch.tensor(2 + s)
    )


def test_score_matrix_equals_score_pairs_and_chunking(colbert: ColBERTModel) -> None:
    with torch.no_grad():
        q, qm = colbert.encode(QUERIES, "query")
        p, pm = colbert.encode(PASSAGES, "passage")
        full = colbert.score_matrix(q, qm, p, pm)
        chunked = colbert.score_matrix(q, qm, p, pm, max_elements=1)
        assert full.shape == (len(QUERIES), len(PASSAGES))
        torch.testing.assert_close(chunked, full)
        for i in range(len(QUERIES)):
            n = len(PASSAGES)
            pairs = colbert.score_pairs(q[i : i + 1].expand(n, -1, -1), qm[i : i + 1].expand(n, -1), p, pm)
            torch.testing.assert_close(pairs, full[i])
    assert full.std() > 1e-2  # distinct scores


# ----------------------------------------------------------------------------- tokenisation
def test_queries_are_mask_augmented_and_every_token_scored(colbert: ColBERTModel) -> None:
    tok = colbert.tokenizer
    batch, mask = colbert.tokenize(["coral reef"], "query")
    ids = batch["input_ids"][0]
    assert ids.shape[0] == colbert.query_max_length == 16
    assert ids[0] == tok.cls_token_id and ids[1] == tok.convert_tokens_to_ids("[unused0]")
    sep = int((ids == tok.sep_token_id).nonzero()[0])
    assert (ids[sep + 1 :] == tok.mask_token_id).all() and sep + 1 < len(ids)
    assert mask.all()  # the [MASK] tokens are scored
    assert not batch["attention_mask"][0, sep + 1 :].any()  # ColBERTv2 default: not attended
    assert batch["attention_mask"][0, : sep + 1].all()

    attend = ColBERTModel(
        colbert.backbone,
        tok,
        colbert.projection,
        **{**colbert.settings(), "attend_to_expansion_tokens": True},
    )
    assert attend.tokenize(["coral reef"], "query")[0]["attention_mask"].all()
    with torch.no_grad():  # attention to the [MASK]s changes the embeddings of the text tokens
        assert not torch.allclose(
            attend.encode(["coral reef"], "query")[0], colbert.encode(["coral reef"], "query")[0]
        )

    # The expansion tokens count: scoring only the text tokens gives other scores (the third query
    # fills all 16 tokens: nothing to expand).
    with torch.no_grad():
        q, qm = colbert.encode(QUERIES[:2], "query")
        p, pm = colbert.encode(PASSAGES, "passage")
        text_only = colbert.tokenize(QUERIES[:2], "query")[0]["attention_mask"].bool()
        with_masks = colbert.score_matrix(q, qm, p, pm)
        without = colbert.score_matrix(q, text_only, p, pm)
    assert (with_masks - without).abs().min() > 1e-3

    no_exp = ColBERTModel(
        colbert.backbone, tok, colbert.projection, **{**colbert.settings(), "do_query_expansion": False}
    )
    b2, m2 = no_exp.tokenize(["coral reef", "what does the protein do"], "query")
    assert b2["input_ids"].shape[1] < 16 and not m2[0].all()
    assert tok.mask_token_id not in b2["input_ids"]


def test_long_texts_are_truncated_to_the_lengths_with_markers(colbert: ColBERTModel) -> None:
    long = " ".join(["protein glacier coral"] * 100)
    q, _ = colbert.tokenize([long], "query")
    p, _ = colbert.tokenize([long], "passage")
    assert q["input_ids"].shape[1] == colbert.query_max_length
    assert p["input_ids"].shape[1] == colbert.passage_max_length
    assert p["input_ids"][0, 1] == colbert.tokenizer.convert_tokens_to_ids("[unused1]")
    assert p["input_ids"][0, -1] == colbert.tokenizer.sep_token_id


def test_passage_padding_and_punctuation_are_not_scored(colbert: ColBERTModel) -> None:
    tok = colbert.tokenizer
    batch, mask = colbert.tokenize(["protein.", "the glacier, the river; and a reef!"], "passage")
    ids = batch["input_ids"]
    punct = torch.isin(ids, torch.tensor([tok.convert_tokens_to_ids(c) for c in ".,;!"]))
    assert punct[0].sum() == 1 and punct[1].sum() == 3
    assert not mask[punct].any()
    assert not mask[~batch["attention_mask"].bool()].any()  # padding of the short passage
    assert mask[batch["attention_mask"].bool() & ~punct].all()
    with torch.no_grad():
        emb, emask = colbert.encode(["protein.", "the glacier, the river; and a reef!"], "passage")
    assert torch.equal(emask, mask)
    assert (emb[~mask] == 0).all()
    torch.testing.assert_close(emb[mask].norm(dim=-1), torch.ones(int(mask.sum())))

    keep = ColBERTModel(
        colbert.backbone, tok, colbert.projection, **{**colbert.settings(), "skiplist_words": []}
    )
    assert keep.tokenize(["protein."], "passage")[1].all()


def test_scores_do_not_depend_on_batch_padding(colbert: ColBERTModel) -> None:
    with torch.no_grad():
        q, qm = colbert.encode(QUERIES, "query")
        batched = colbert.score_matrix(q, qm, *colbert.encode(PASSAGES, "passage"))
        alone = torch.cat(
            [colbert.score_matrix(q, qm, *colbert.encode([p], "passage")) for p in PASSAGES], dim=1
        )
    torch.testing.assert_close(batched, alone, atol=ATOL, rtol=0)


def test_encode_is_differentiable(tiny_colbert: Path) -> None:
    model = ColBERTModel.load(tiny_colbert).train()
    q, qm = model.encode(QUERIES[:2], "query")
    p, pm = model.encode(PASSAGES[:3], "passage")
    assert q.requires_grad and q.dtype == torch.float32 and qm.dtype == torch.bool
    scores = model.score_matrix(q, qm, p, pm)
    torch.nn.functional.cross_entropy(scores, torch.tensor([1, 2])).backward()
    assert model.projection.weight.grad is not None and model.projection.weight.grad.abs().sum() > 0
    emb = model.backbone.get_input_embeddings().weight
    assert emb.grad is not None and emb.grad.abs().sum() > 0


def test_embed_equals_encode_in_input_order(colbert: ColBERTModel) -> None:
    for kind, texts in (("query", QUERIES), ("passage", PASSAGES)):
        emb, mask = colbert.embed(texts, kind, batch_size=2)
        assert emb.dtype == torch.float32 and emb.device.type == "cpu"
        for i, text in enumerate(texts):
            with torch.no_grad():
                one, one_mask = colbert.encode([text], kind)
            n = one.shape[1]
            assert not mask[i, n:].any()
            assert torch.equal(mask[i, :n], one_mask[0])
            torch.testing.assert_close(emb[i, :n], one[0], atol=ATOL, rtol=0)


def test_token_lengths_are_those_of_tokenize(colbert: ColBERTModel) -> None:
    for kind, texts in (("query", QUERIES), ("passage", PASSAGES)):
        batch, _ = colbert.tokenize_cpu(texts, kind)
        want = (
            batch["attention_mask"].sum(1).tolist()
            if kind == "passage"
            else [batch["input_ids"].shape[1]] * len(texts)
        )
        assert colbert.token_lengths(texts, kind).tolist() == want


def test_embed_batches_as_the_runtime_says(colbert: ColBERTModel) -> None:
    """The inference batching of the bi-encoder (docs/HARDWARE.md): prefetch in a thread gives the
    same tensors bit for bit; a token budget, a cap on the texts or on the tokens of a forward the
    same embeddings up to the float rounding of other batch shapes."""
    texts = PASSAGES * 3
    want, want_mask = colbert.embed(texts, "passage", batch_size=4)
    got, got_mask = colbert.embed(texts, "passage", batch_size=4, runtime=Runtime(prefetch=True))
    assert torch.equal(got, want) and torch.equal(got_mask, want_mask)
    for runtime in (Runtime(max_batch_tokens=40), Runtime(max_forward_texts=1), Runtime(max_forward_tokens=40)):
        got, got_mask = colbert.embed(texts, "passage", batch_size=4, runtime=runtime)
        assert torch.equal(got_mask, want_mask)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_expanded_queries_under_a_forward_token_cap_keep_their_expansion_tokens(colbert: ColBERTModel) -> None:
    queries = [p[: 10 + 7 * i] for i, p in enumerate(PASSAGES * 2)]
    want, want_mask = colbert.embed(queries, "query", batch_size=8)
    got, got_mask = colbert.embed(queries, "query", batch_size=8, runtime=Runtime(max_forward_tokens=colbert.query_max_length))
    assert want.shape[1] == colbert.query_max_length and torch.equal(got_mask, want_mask)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_embed_with_a_token_budget_holds_to_it(
    colbert: ColBERTModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[int, int]] = []
    real = colbert.encode_inputs

    def record(batch, mask):
        seen.append(tuple(batch["input_ids"].shape))
        return real(batch, mask)

    monkeypatch.setattr(colbert, "encode_inputs", record)
    colbert.embed(PASSAGES * 3, "passage", batch_size=64, runtime=Runtime(max_batch_tokens=40))
    assert sum(rows for rows, _ in seen) == len(PASSAGES) * 3 and len(seen) > 1
    assert all(rows * width <= 40 or rows == 1 for rows, width in seen)


# ----------------------------------------------------------------------------- saving and loading
def test_save_load_round_trip_and_pylate_layout(colbert: ColBERTModel, tmp_path: Path) -> None:
    out = colbert.save(tmp_path / "saved", model_card="# tiny colbert\n")
    for name in (
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "modules.json",
        SETTINGS_FILE,
        "README.md",
    ):
        assert (out / name).is_file(), name
    assert (out / DENSE_DIR / "model.safetensors").is_file()
    modules = json.loads((out / "modules.json").read_text())
    assert [m["type"] for m in modules] == ["sentence_transformers.models.Transformer", "pylate.models.Dense"]
    dense = json.loads((out / DENSE_DIR / "config.json").read_text())
    assert dense["in_features"] == 32 and dense["out_features"] == 16 and dense["bias"] is False
    st = json.loads((out / "config_sentence_transformers.json").read_text())
    assert st["query_prefix"] == "[unused0]" and st["document_prefix"] == "[unused1]"
    assert st["query_length"] == 16 and st["document_length"] == 64 and st["do_query_expansion"] is True
    assert st["similarity_fn_name"] == "MaxSim"

    loaded = ColBERTModel.load(out)
    assert loaded.settings() == colbert.settings() and loaded.dim == 16
    torch.testing.assert_close(_scores(loaded), _scores(colbert), atol=0, rtol=0)

    # A PyLate folder (no distillrank settings file) reads its settings from PyLate's config.
    (out / SETTINGS_FILE).unlink()
    pylate = ColBERTModel.load(out)
    assert pylate.settings() == colbert.settings()
    torch.testing.assert_close(_scores(pylate), _scores(colbert), atol=0, rtol=0)


def test_load_overrides_settings(tiny_colbert: Path) -> None:
    model = ColBERTModel.load(tiny_colbert, query_max_length=8, passage_max_length=None)
    assert model.query_max_length == 8 and model.passage_max_length == 64
    assert model.encode(["coral reef"], "query")[0].shape == (1, 8, 16)


def test_stanford_checkpoint_loads(tmp_path: Path, tiny_texts: list[str], colbert: ColBERTModel) -> None:
    # Same seed as the tiny_colbert fixture: the same weights in Stanford's layout.
    folder = make_tiny_models.make_tiny_colbert(tmp_path / "stanford", texts=tiny_texts, layout="stanford")
    assert not (folder / "modules.json").exists()
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        keys = set(f.keys())
    assert "linear.weight" in keys and all(k == "linear.weight" or k.startswith("bert.") for k in keys)

    stanford = ColBERTModel.load(folder)
    assert stanford.query_prefix == "[unused0]" and stanford.passage_prefix == "[unused1]"
    assert stanford.query_max_length == 16 and stanford.passage_max_length == 64  # artifact.metadata
    assert stanford.attend_to_expansion_tokens is False and stanford.skiplist_words
    torch.testing.assert_close(_scores(stanford), _scores(colbert), atol=ATOL, rtol=0)

    # Saved again by us, it keeps its scores.
    again = ColBERTModel.load(stanford.save(tmp_path / "converted"))
    torch.testing.assert_close(_scores(again), _scores(stanford), atol=0, rtol=0)


def test_plain_encoder_is_not_loadable_but_starts_a_colbert(tiny_bi_encoder: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="from_backbone"):
        ColBERTModel.load(tiny_bi_encoder)
    model = ColBERTModel.from_backbone(tiny_bi_encoder, dim=8, keep_layers=1, seed=3)
    # The tiny vocabulary has no [unused0]/[unused1]: PyLate's markers are added as tokens.
    assert model.query_prefix == "[Q] " and model.passage_prefix == "[D] "
    vocab = model.tokenizer.get_vocab()
    assert "[Q] " in vocab and "[D] " in vocab
    assert model.backbone.get_input_embeddings().weight.shape[0] == len(model.tokenizer)
    assert len(model.backbone.encoder.layer) == 1 and model.dim == 8
    ids = model.tokenize(["coral reef"], "query")[0]["input_ids"][0]
    assert ids[1] == vocab["[Q] "]
    same = ColBERTModel.from_backbone(tiny_bi_encoder, dim=8, keep_layers=1, seed=3)
    torch.testing.assert_close(same.projection.weight, model.projection.weight)

    loaded = ColBERTModel.load(model.save(tmp_path / "student"))
    assert loaded.query_prefix == "[Q] " and len(loaded.backbone.encoder.layer) == 1
    torch.testing.assert_close(_scores(loaded), _scores(model.eval()), atol=0, rtol=0)


def test_from_backbone_of_a_colbert_keeps_its_projection(tiny_colbert: Path, colbert: ColBERTModel) -> None:
    student = ColBERTModel.from_backbone(tiny_colbert, keep_layers=1, layer_selection="uniform")
    torch.testing.assert_close(student.projection.weight, colbert.projection.weight)
    assert len(student.backbone.encoder.layer) == 1
    assert len(colbert.backbone.encoder.layer) == 2
