"""QueryGenerator: n queries per passage, deterministic per seed and per passage, both model kinds."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from distillrank.errors import ConfigError
from distillrank.models.hub import resolve_model
from distillrank.queries.generator import QueryGenerator, RowSampler, add_unique, clean, flatten, row_seed

CPU = torch.device("cpu")
PASSAGES = [
    "The glacier moves slowly across the northern valley while the river carries sediment.",
    "protein",
    "A coral reef near the lagoon protects the coastal village from storms.",
    "Researchers found that insulin affects glucose.",
]


@pytest.fixture(autouse=True)
def _fresh_resolve_cache():
    resolve_model.cache_clear()
    yield
    resolve_model.cache_clear()


@pytest.fixture(params=["seq2seq", "causal"])
def model_dir(request, tiny_t5: Path, tiny_causal_lm: Path) -> tuple[str, Path]:
    return request.param, (tiny_t5 if request.param == "seq2seq" else tiny_causal_lm)


def _gen(folder: Path, passages, n=3, seed=0, **kwargs) -> list[list[str]]:
    kwargs.setdefault("max_new_tokens", 8)
    return QueryGenerator(str(folder), **kwargs).generate(passages, n, seed, CPU, "fp32", progress=False)


def test_kind_is_detected_from_the_config(model_dir) -> None:
    kind, folder = model_dir
    assert QueryGenerator(str(folder)).kind == kind


def test_n_distinct_nonempty_queries_per_passage(model_dir) -> None:
    _, folder = model_dir
    out = _gen(folder, PASSAGES, n=3)
    assert len(out) == len(PASSAGES)
    for queries in out:
        # a random tiny model repeats itself rarely: the retry round fills any de-duplicated gap
        assert len(queries) == 3
        assert len({q.casefold() for q in queries}) == 3
        assert all(q and q == q.strip() and "\n" not in q for q in queries)


def test_deterministic_per_seed_and_independent_of_batching(model_dir) -> None:
    _, folder = model_dir
    a = _gen(folder, PASSAGES, seed=7, batch_size=4)
    assert _gen(folder, PASSAGES, seed=7, batch_size=4) == a
    # other batch sizes, order and company give each passage the same queries
    assert _gen(folder, PASSAGES, seed=7, batch_size=1) == a
    assert _gen(folder, PASSAGES[::-1], seed=7, batch_size=3) == a[::-1]
    assert _gen(folder, [PASSAGES[2]], seed=7) == [a[2]]
    assert _gen(folder, PASSAGES, seed=8, batch_size=4) != a


def test_causal_output_excludes_the_prompt(tiny_causal_lm: Path) -> None:
    gen = QueryGenerator(str(tiny_causal_lm), max_new_tokens=2, prompt="Passage: {passage} Query:")
    out = gen.generate(PASSAGES, 3, 0, CPU, "fp32", progress=False)
    tokenizer = gen.tokenizer
    assert tokenizer.padding_side == "left"
    for queries in out:
        for q in queries:
            # two new tokens at most, while every prompt is longer than five
            assert len(tokenizer(q, add_special_tokens=False)["input_ids"]) <= 2
            assert not q.startswith("passage")


def test_passages_are_cut_to_passage_max_length(tiny_t5: Path) -> None:
    gen = QueryGenerator(str(tiny_t5), passage_max_length=3, prompt="{passage} !")
    prompts = gen.inputs(["The glacier moves slowly across the valley", "protein"])
    assert prompts == ["The glacier moves !", "protein !"]


def test_greedy_gives_one_query_per_passage(tiny_t5: Path) -> None:
    out = _gen(tiny_t5, PASSAGES[:2], n=3, do_sample=False)
    assert all(len(q) <= 1 for q in out)


def test_row_sampler_honours_top_k_and_top_p() -> None:
    scores = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]] * 4000))
    sampler = RowSampler([row_seed(0, "p", j) for j in range(4000)], top_k=3, top_p=None, temperature=1.0)
    picked = sampler.sample(scores, sampler.draw())
    assert set(picked.tolist()) == {0, 1, 2}
    share = torch.bincount(picked, minlength=4).double() / len(picked)
    torch.testing.assert_close(
        share[:3], torch.tensor([0.5, 0.3, 0.15], dtype=torch.float64) / 0.95, atol=0.03, rtol=0
    )
    nucleus = RowSampler([row_seed(0, "p", j) for j in range(4000)], top_k=None, top_p=0.7, temperature=1.0)
    assert set(nucleus.sample(scores, nucleus.draw()).tolist()) == {0, 1}
    out = nucleus(torch.zeros(4000, 1, dtype=torch.long), scores)
    assert torch.isfinite(out).sum(-1).eq(1).all()


def test_cleaning_drops_empty_and_duplicate_queries() -> None:
    assert clean("  what is\n  a cell") == "what is"
    kept: list[str] = []
    seen: set[str] = set()
    add_unique(kept, seen, ["", "   ", "\nlater line", "What  is", "what is", "cells"], limit=5)
    assert kept == ["What is", "cells"]
    add_unique(kept, seen, ["x", "y", "z", "w"], limit=4)
    assert kept == ["What is", "cells", "x", "y"]


def test_flatten_names_queries_by_source_passage() -> None:
    rows = flatten(["d1", "d2"], [["a", "b"], ["c"]])
    assert rows == [("gen-d1-0", "a", "d1"), ("gen-d1-1", "b", "d1"), ("gen-d2-0", "c", "d2")]


def test_fingerprint_follows_settings(tiny_t5: Path) -> None:
    base = QueryGenerator(str(tiny_t5)).fingerprint()
    assert QueryGenerator(str(tiny_t5), batch_size=2).fingerprint() == base
    assert QueryGenerator(str(tiny_t5), top_k=10).fingerprint() != base
    assert QueryGenerator(str(tiny_t5), prompt="q: {passage}").fingerprint() != base


@pytest.mark.parametrize(
    "kwargs", [{"kind": "encoder"}, {"prompt": "no field"}, {"temperature": 0}, {"top_p": 1.5}]
)
def test_bad_settings_are_config_errors(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        QueryGenerator("unused", **kwargs)
