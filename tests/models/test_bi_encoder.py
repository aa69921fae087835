"""BiEncoder against sentence-transformers, saving, layer dropping; layer selection."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from sentence_transformers import SentenceTransformer
from torch import nn
from transformers import AutoModel

from distillrank.errors import ConfigError
from distillrank.models.bi_encoder import META_FILE, BiEncoder, read_settings
from distillrank.models.layers import keep_layers, select_layers

TEXTS = [
    "What does the protein do?",
    "The glacier moves slowly across the northern valley while the river carries sediment to the lagoon.",
    "coral",
    "A coral reef near the lagoon protects the coastal village from the winter storms.",
    "Why does the enzyme change?",
    "Researchers found that insulin affects glucose in urban patients.",
    "the",
]
ATOL = 1e-5


@pytest.fixture(scope="module")
def st_model(tiny_bi_encoder: Path) -> SentenceTransformer:
    return SentenceTransformer(str(tiny_bi_encoder), device="cpu")


def _st_encode(
    model: SentenceTransformer, texts: list[str], normalize: bool = False, **kwargs
) -> torch.Tensor:
    return model.encode(
        texts, convert_to_tensor=True, normalize_embeddings=normalize, batch_size=4, **kwargs
    ).cpu()


def test_load_reads_sentence_transformers_settings(tiny_bi_encoder: Path) -> None:
    enc = BiEncoder.load(tiny_bi_encoder)
    assert enc.pooling == "mean"
    assert enc.similarity == "dot"  # the tiny folder has no Normalize and similarity_fn_name "dot"
    assert enc.passage_max_length == 64
    assert enc.query_prefix == enc.passage_prefix == ""
    assert enc.dim == 32
    over = BiEncoder.load(tiny_bi_encoder, similarity="cos", pooling=None, query_max_length=16)
    assert (over.similarity, over.pooling, over.query_max_length) == ("cos", "mean", 16)


@pytest.mark.parametrize("kind", ["query", "passage"])
def test_encode_matches_sentence_transformers_dot(tiny_bi_encoder: Path, st_model, kind: str) -> None:
    enc = BiEncoder.load(tiny_bi_encoder, similarity="dot")
    ours = enc.encode(TEXTS, kind, batch_size=3)
    assert ours.shape == (len(TEXTS), 32) and ours.dtype == torch.float32
    theirs = _st_encode(st_model, TEXTS)
    torch.testing.assert_close(ours, theirs, atol=ATOL, rtol=0)
    assert not torch.allclose(ours.norm(dim=1), torch.ones(len(TEXTS)), atol=1e-3)  # really unnormalised


def test_encode_matches_sentence_transformers_cos(tiny_bi_encoder: Path, st_model) -> None:
    enc = BiEncoder.load(tiny_bi_encoder, similarity="cos")
    ours = enc.encode(TEXTS, "passage", batch_size=3)
    torch.testing.assert_close(ours.norm(dim=1), torch.ones(len(TEXTS)), atol=1e-5, rtol=0)
    theirs = _st_encode(st_model, TEXTS, normalize=True)
    torch.testing.assert_close(ours, theirs, atol=ATOL, rtol=0)
    # Cosine similarities as sentence-transformers computes them.
    raw = _st_encode(st_model, TEXTS)
    cos = nn.functional.cosine_similarity(raw[:, None], raw[None], dim=-1)
    torch.testing.assert_close(ours @ ours.T, cos, atol=ATOL, rtol=0)


@pytest.mark.parametrize("batch_size", [1, 2, 3, 100])
def test_encode_keeps_input_order_despite_length_sorting(tiny_bi_encoder: Path, batch_size: int) -> None:
    enc = BiEncoder.load(tiny_bi_encoder)
    lengths = [len(t) for t in TEXTS]
    assert lengths != sorted(lengths, reverse=True)  # sorting really permutes these texts
    batched = enc.encode(TEXTS, "passage", batch_size=batch_size)
    one_by_one = torch.cat([enc.encode([t], "passage") for t in TEXTS])
    torch.testing.assert_close(batched, one_by_one, atol=ATOL, rtol=0)
    # Distinct texts give distinct rows, so a permutation would not pass the comparison above.
    assert torch.cdist(batched, batched).add(torch.eye(len(TEXTS))).min() > 1e-3


def test_encode_restores_training_mode(tiny_bi_encoder: Path) -> None:
    enc = BiEncoder.load(tiny_bi_encoder).train()
    enc.encode(TEXTS[:2])
    assert enc.training
    assert enc.encode([], "query").shape == (0, 32)


def test_forward_has_gradients_and_score_is_rowwise_dot(tiny_bi_encoder: Path) -> None:
    enc = BiEncoder.load(tiny_bi_encoder)
    q = enc(TEXTS[:3], "query")
    p = enc(TEXTS[3:6], "passage")
    s = enc.score(q, p)
    assert s.shape == (3,) and s.requires_grad
    torch.testing.assert_close(s, torch.stack([q[i] @ p[i] for i in range(3)]))
    s.sum().backward()
    grads = [p.grad for p in enc.backbone.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)


def _modules(folder: Path) -> list[str]:
    return [m["type"].rsplit(".", 1)[-1] for m in json.loads((folder / "modules.json").read_text())]


@pytest.mark.parametrize("similarity", ["cos", "dot"])
def test_save_is_loadable_by_sentence_transformers(
    tiny_bi_encoder: Path, tmp_path: Path, similarity: str
) -> None:
    enc = BiEncoder.load(tiny_bi_encoder, similarity=similarity)
    before = enc.encode(TEXTS, "passage")
    out = enc.save(tmp_path / "student", model_card="# tiny")
    assert out == tmp_path / "student"
    assert (out / "README.md").read_text() == "# tiny"
    expected_modules = (
        ["Transformer", "Pooling", "Normalize"] if similarity == "cos" else ["Transformer", "Pooling"]
    )
    assert _modules(out) == expected_modules
    assert (out / "2_Normalize").is_dir() == (similarity == "cos")
    st_conf = json.loads((out / "config_sentence_transformers.json").read_text())
    assert st_conf["similarity_fn_name"] == ("cosine" if similarity == "cos" else "dot")

    st = SentenceTransformer(str(out), device="cpu")
    torch.testing.assert_close(_st_encode(st, TEXTS), before, atol=ATOL, rtol=0)
    reloaded = BiEncoder.load(out)
    assert reloaded.settings() == enc.settings()
    torch.testing.assert_close(reloaded.encode(TEXTS, "passage"), before, atol=ATOL, rtol=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["student"]  # no temporary left


def test_save_replaces_an_existing_folder(tiny_bi_encoder: Path, tmp_path: Path) -> None:
    target = tmp_path / "student"
    target.mkdir()
    (target / "stale.bin").write_bytes(b"x")
    BiEncoder.load(tiny_bi_encoder).save(target)
    assert not (target / "stale.bin").exists()
    assert (target / "config.json").is_file()


def test_prefixes_round_trip(tiny_bi_encoder: Path, tmp_path: Path) -> None:
    enc = BiEncoder.load(
        tiny_bi_encoder, query_prefix="query: ", passage_prefix="passage: ", similarity="cos"
    )
    q_before = enc.encode(TEXTS, "query")
    p_before = enc.encode(TEXTS, "passage")
    plain = BiEncoder.load(tiny_bi_encoder, similarity="cos").encode(TEXTS, "query")
    assert not torch.allclose(q_before, plain, atol=1e-4)  # the prefix is really used
    out = enc.save(tmp_path / "prefixed")

    reloaded = BiEncoder.load(out)
    assert (reloaded.query_prefix, reloaded.passage_prefix) == ("query: ", "passage: ")
    torch.testing.assert_close(reloaded.encode(TEXTS, "query"), q_before, atol=ATOL, rtol=0)

    # sentence-transformers sees them as prompts.
    st = SentenceTransformer(str(out), device="cpu")
    torch.testing.assert_close(_st_encode(st, TEXTS, prompt_name="query"), q_before, atol=ATOL, rtol=0)
    torch.testing.assert_close(_st_encode(st, TEXTS, prompt_name="document"), p_before, atol=ATOL, rtol=0)

    # Without our own metadata file the settings come from the sentence-transformers files.
    (out / META_FILE).unlink()
    settings = read_settings(out)
    assert settings["query_prefix"] == "query: "
    assert settings["passage_prefix"] == "passage: "
    assert settings["similarity"] == "cos"
    assert settings["pooling"] == "mean"


def test_read_settings_of_plain_hf_folder_defaults_to_mean_cos(tiny_bi_encoder: Path, tmp_path: Path) -> None:
    enc = BiEncoder.load(tiny_bi_encoder)
    enc.backbone.save_pretrained(tmp_path / "plain")
    enc.tokenizer.save_pretrained(tmp_path / "plain")
    assert read_settings(tmp_path / "plain") == {}
    loaded = BiEncoder.load(tmp_path / "plain")
    assert (loaded.pooling, loaded.similarity) == ("mean", "cos")


def test_cls_pooling_takes_first_token(tiny_bi_encoder: Path) -> None:
    enc = BiEncoder.load(tiny_bi_encoder, pooling="cls", similarity="dot").eval()
    emb = enc.encode(TEXTS[:2], "passage")
    batch = enc.tokenize(TEXTS[:1], "passage")
    with torch.no_grad():
        first = enc.backbone(**batch).last_hidden_state[:, 0]
    torch.testing.assert_close(emb[:1], first, atol=ATOL, rtol=0)


@pytest.mark.parametrize(("key", "value"), [("pooling", "max"), ("similarity", "l2")])
def test_bad_pooling_or_similarity_raises(tiny_bi_encoder: Path, key: str, value: str) -> None:
    with pytest.raises(ConfigError, match=key):
        BiEncoder.load(tiny_bi_encoder, **{key: value})


# ----------------------------------------------------------------------------- layers
def test_from_backbone_keeps_one_layer(tiny_bi_encoder: Path, tmp_path: Path) -> None:
    full = BiEncoder.load(tiny_bi_encoder)
    assert len(full.backbone.encoder.layer) == 2
    student = BiEncoder.from_backbone(str(tiny_bi_encoder), num_layers=1, layer_selection="first")
    assert len(student.backbone.encoder.layer) == 1
    assert student.backbone.config.num_hidden_layers == 1
    torch.testing.assert_close(
        student.backbone.encoder.layer[0].state_dict(), full.backbone.encoder.layer[0].state_dict()
    )
    out = student.save(tmp_path / "one_layer")
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 1
    reloaded = AutoModel.from_pretrained(out)
    assert len(reloaded.encoder.layer) == 1
    torch.testing.assert_close(
        BiEncoder.load(out).encode(TEXTS, "passage"), student.encode(TEXTS, "passage"), atol=ATOL, rtol=0
    )
    # One layer fewer changes the embeddings.
    assert not torch.allclose(student.encode(TEXTS), full.encode(TEXTS), atol=1e-4)


def test_from_backbone_uniform_keeps_last_layer(tiny_bi_encoder: Path) -> None:
    full = BiEncoder.load(tiny_bi_encoder)
    student = BiEncoder.from_backbone(str(tiny_bi_encoder), num_layers=1, layer_selection="uniform")
    torch.testing.assert_close(
        student.backbone.encoder.layer[0].state_dict(), full.backbone.encoder.layer[1].state_dict()
    )


def test_from_backbone_without_num_layers_keeps_all(tiny_bi_encoder: Path) -> None:
    student = BiEncoder.from_backbone(str(tiny_bi_encoder), similarity="cos", query_max_length=32)
    assert len(student.backbone.encoder.layer) == 2
    assert (student.similarity, student.query_max_length) == ("cos", 32)


@pytest.mark.parametrize(
    ("total", "k", "selection", "expected"),
    [
        (6, 2, "first", [0, 1]),
        (6, 6, "first", [0, 1, 2, 3, 4, 5]),
        (6, 3, "every_other", [0, 2, 4]),
        (5, 3, "every_other", [0, 2, 4]),
        (12, 3, "uniform", [3, 7, 11]),
        (6, 2, "uniform", [2, 5]),
        (6, 3, "uniform", [1, 3, 5]),
        (12, 1, "uniform", [11]),
        (4, 4, "uniform", [0, 1, 2, 3]),
    ],
)
def test_select_layers(total: int, k: int, selection: str, expected: list[int]) -> None:
    assert select_layers(total, k, selection) == expected


@pytest.mark.parametrize("total", range(1, 25))
def test_uniform_is_increasing_and_keeps_last(total: int) -> None:
    for k in range(1, total + 1):
        kept = select_layers(total, k, "uniform")
        assert len(kept) == k
        assert kept[-1] == total - 1
        assert all(a < b for a, b in zip(kept, kept[1:], strict=False))
        assert kept[0] >= 0


@pytest.mark.parametrize(
    ("total", "k", "selection", "match"),
    [
        (6, 0, "first", "num_layers=0"),
        (6, 7, "first", "num_layers=7"),
        (6, -1, "uniform", "num_layers=-1"),
        (6, 4, "every_other", "every_other needs 7"),
        (6, 2, "last", "layer_selection='last'"),
    ],
)
def test_select_layers_errors(total: int, k: int, selection: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        select_layers(total, k, selection)


def test_keep_layers_without_layer_list_raises() -> None:
    class NoLayers(nn.Module):
        config = None

    with pytest.raises(ConfigError, match="cannot find the layer list of NoLayers"):
        keep_layers(NoLayers(), 1)  # type: ignore[arg-type]


def test_cls_pooling_save_matches_sentence_transformers(tiny_bi_encoder: Path, tmp_path: Path) -> None:
    enc = BiEncoder.load(tiny_bi_encoder, pooling="cls", similarity="dot")
    before = enc.encode(TEXTS, "passage")
    out = enc.save(tmp_path / "cls")
    pool = json.loads((out / "1_Pooling" / "config.json").read_text())
    assert pool["pooling_mode_cls_token"] and not pool["pooling_mode_mean_tokens"]
    st = SentenceTransformer(str(out), device="cpu")
    torch.testing.assert_close(_st_encode(st, TEXTS), before, atol=ATOL, rtol=0)
    (out / META_FILE).unlink()
    assert read_settings(out)["pooling"] == "cls"


def test_a_folder_saved_by_sentence_transformers_6_loads_with_its_settings(tiny_bi_encoder: Path, tmp_path: Path) -> None:
    """sentence-transformers >= 6 writes ``pooling_mode: "mean"`` and keeps the maximum length in the
    tokenizer config, not in sentence_bert_config.json."""
    st = SentenceTransformer(str(tiny_bi_encoder), device="cpu")
    st.max_seq_length = 24
    st.save(str(tmp_path / "st6"))
    settings = read_settings(tmp_path / "st6")
    assert settings["pooling"] == "mean" and settings["passage_max_length"] == 24
    ours = BiEncoder.load(tmp_path / "st6", query_max_length=24)
    torch.testing.assert_close(ours.encode(TEXTS, "passage"), _st_encode(st, TEXTS), atol=ATOL, rtol=0)

    pooling = tmp_path / "st6" / "1_Pooling" / "config.json"
    pool = json.loads(pooling.read_text())
    if "pooling_mode" in pool:  # the string form: cls is read too, an unknown mode refused
        pooling.write_text(json.dumps({**pool, "pooling_mode": "cls"}))
        assert read_settings(tmp_path / "st6")["pooling"] == "cls"
        pooling.write_text(json.dumps({**pool, "pooling_mode": "max"}))
        with pytest.raises(ConfigError, match="pooling"):
            read_settings(tmp_path / "st6")


# ----------------------------------------------------------------------------- loading edge cases
def test_unsupported_pooling_is_refused(tiny_texts: list[str], tmp_path: Path) -> None:
    """A max-pooling model must not silently load as mean pooling (its embeddings would differ)."""
    import make_tiny_models

    folder = make_tiny_models.make_tiny_bi_encoder(tmp_path / "max", texts=tiny_texts, pooling="max")
    with pytest.raises(ConfigError, match="max_tokens"):
        BiEncoder.load(folder)


def test_null_similarity_fn_name_means_cosine(tiny_bi_encoder: Path, tmp_path: Path) -> None:
    import shutil

    folder = Path(shutil.copytree(tiny_bi_encoder, tmp_path / "null_sim"))
    conf_file = folder / "config_sentence_transformers.json"
    conf = json.loads(conf_file.read_text())
    conf["similarity_fn_name"] = None
    conf_file.write_text(json.dumps(conf))
    assert SentenceTransformer(str(folder), device="cpu").similarity_fn_name == "cosine"
    assert read_settings(folder)["similarity"] == "cos"
