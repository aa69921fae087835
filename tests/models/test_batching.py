"""Inference batches (:mod:`distillrank.models.batching`): ``hardware.max_batch_tokens`` groups rows by a
token budget (every row once, outputs in input order, values as fixed batches' within 1e-5),
``hardware.max_forward_tokens`` cuts a tokenized batch into forwards of fewer tokens (each the tensors
of tokenizing its rows alone), and ``hardware.prefetch`` tokenizes one batch ahead in a thread with
bit-identical results."""

from __future__ import annotations

import dataclasses
import threading

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from omegaconf import OmegaConf

from distillrank.errors import ConfigError
from distillrank.models import bi_encoder as bi_module
from distillrank.models import cross_encoder as cross_module
from distillrank.models.batching import ahead, forward_pieces, prepared, row_batches
from distillrank.models.bi_encoder import BiEncoder
from distillrank.models.cross_encoder import CrossEncoderModel
from distillrank.runtime import Runtime
from distillrank.stages import mine, score
from distillrank.workspace import stage_dir

LENGTHS = np.array([9, 9, 8, 7, 7, 5, 5, 4, 3, 3, 2, 2, 2, 1])  # tokens of rows already sorted by length


def _lengths_of(rows: np.ndarray) -> np.ndarray:
    return LENGTHS[rows]


def _check_budget(batches: list[np.ndarray], budget: int, max_rows: int | None = None) -> None:
    assert np.array_equal(np.concatenate(batches), np.arange(len(LENGTHS)))  # every row once, in order
    for batch in batches:
        assert len(batch) == 1 or len(batch) * LENGTHS[batch].max() <= budget
        assert max_rows is None or len(batch) <= max_rows


def test_fixed_batches_are_slices_of_step_rows():
    order = np.array([3, 1, 4, 0, 2])
    assert [b.tolist() for b in row_batches(order, 2)] == [[3, 1], [4, 0], [2]]


@pytest.mark.parametrize("budget", [1, 9, 20, 27, 40, 1000])
@pytest.mark.parametrize("window", [1, 3, 4096])
def test_a_token_budget_groups_rows_greedily_whatever_the_length_window(budget, window):
    order = np.arange(len(LENGTHS))
    batches = list(row_batches(order, 4, max_tokens=budget, token_lengths=_lengths_of, window=window))
    _check_budget(batches, budget)
    for first, second in zip(batches, batches[1:], strict=False):  # greedy: the next row would not have fit
        rows = np.concatenate([first, second[:1]])
        assert len(rows) * LENGTHS[rows].max() > budget
    reference = list(row_batches(order, 4, max_tokens=budget, token_lengths=_lengths_of))
    assert [b.tolist() for b in batches] == [b.tolist() for b in reference]


def test_a_token_budget_keeps_the_row_cap_and_gives_long_rows_a_batch_each():
    order = np.arange(len(LENGTHS))
    assert [len(b) for b in row_batches(order, 4, max_tokens=1, token_lengths=_lengths_of)] == [1] * len(
        LENGTHS
    )
    capped = list(row_batches(order, 4, max_tokens=1000, max_rows=3, token_lengths=_lengths_of))
    _check_budget(capped, 1000, max_rows=3)
    assert [len(b) for b in capped] == [3, 3, 3, 3, 2]
    assert list(row_batches(order[:0], 4, max_tokens=10, token_lengths=_lengths_of)) == []


def test_ahead_keeps_the_order_produces_in_another_thread_and_passes_errors_on():
    threads = []

    def items(n, fail_at=None):
        for i in range(n):
            threads.append(threading.current_thread().name)
            if i == fail_at:
                raise RuntimeError("tokenizer failed")
            yield i

    assert list(ahead(items(5))) == list(range(5))
    assert all(name.startswith("distillrank-prefetch") for name in threads)
    with pytest.raises(RuntimeError, match="tokenizer failed"):
        list(ahead(items(5, fail_at=3)))
    assert list(ahead(items(0))) == []


def test_prepared_batches_are_the_same_with_and_without_prefetch():
    order = np.arange(10)[::-1].copy()

    def tokenize(rows):
        return {"input_ids": torch.as_tensor(rows).unsqueeze(1)}

    def run(prefetch):
        return [(idx.tolist(), inputs["input_ids"].tolist()) for idx, inputs in
                prepared(row_batches(order, 3), tokenize, torch.device("cpu"), prefetch)]  # fmt: skip

    assert run(True) == run(False) == [([9, 8, 7], [[9], [8], [7]]), ([6, 5, 4], [[6], [5], [4]]),
                                       ([3, 2, 1], [[3], [2], [1]]), ([0], [[0]])]  # fmt: skip


def test_prefetch_is_on_for_cuda_and_off_on_the_cpu_unless_forced():
    assert not Runtime().prefetches()
    assert Runtime().prefetches(torch.device("cuda"))  # a model on a GPU
    assert Runtime(prefetch=True).prefetches() and not Runtime(prefetch=False).prefetches(
        torch.device("cuda")
    )
    hw = OmegaConf.create({"device": "cpu", "precision": "fp32"})  # a hardware node written before them
    assert Runtime.from_config(hw) == Runtime()
    hw = OmegaConf.create({"device": "cpu", "precision": "fp32", "max_batch_tokens": 512, "prefetch": True})
    made = Runtime.from_config(hw)
    assert (made.max_batch_tokens, made.prefetch) == (512, True)


@pytest.mark.parametrize("field, bad", [("max_batch_tokens", 0), ("max_batch_tokens", 2.5), ("max_batch_tokens", True),
                                        ("prefetch", "yes"), ("prefetch", 1)])  # fmt: skip
def test_bad_batching_settings_are_config_errors(field, bad):
    with pytest.raises(ConfigError, match=f"hardware.{field}"):
        Runtime(**{field: bad})


def _spy(monkeypatch, module) -> list[np.ndarray]:
    seen: list[np.ndarray] = []
    plan = module.row_batches

    def spied(*args, **kwargs):
        for batch in plan(*args, **kwargs):
            seen.append(batch.copy())
            yield batch

    monkeypatch.setattr(module, "row_batches", spied)
    return seen


def _covered_once(batches: list[np.ndarray], n: int) -> None:
    rows = np.concatenate(batches)
    assert len(rows) == n and np.array_equal(np.sort(rows), np.arange(n))


def test_encoding_with_prefetch_is_bit_identical(tiny_bi_encoder, tiny_texts):
    model = BiEncoder.load(tiny_bi_encoder)
    texts = tiny_texts[:40]
    for runtime in (Runtime(max_forward_texts=4), Runtime(max_batch_tokens=96)):
        plain = model.encode(texts, "passage", batch_size=16, runtime=runtime)
        ahead_ = model.encode(
            texts, "passage", batch_size=16, runtime=dataclasses.replace(runtime, prefetch=True)
        )
        assert torch.equal(plain, ahead_)
    assert torch.equal(model.encode(texts, "query", batch_size=16),
                       model.encode(texts, "query", batch_size=16, runtime=Runtime(prefetch=True)))  # fmt: skip


def test_cross_encoder_scores_with_prefetch_are_bit_identical(tiny_cross_encoder, tiny_texts):
    model = CrossEncoderModel.load(tiny_cross_encoder, max_length=64)
    queries, passages = tiny_texts[:30], tiny_texts[30:60]
    for runtime in (Runtime(), Runtime(max_batch_tokens=200)):
        plain = model.predict(queries, passages, batch_size=8, runtime=runtime)
        ahead_ = model.predict(
            queries, passages, batch_size=8, runtime=dataclasses.replace(runtime, prefetch=True)
        )
        assert np.array_equal(plain, ahead_)


def test_encoding_by_token_budget_covers_every_text_once_within_the_budget(
    tiny_bi_encoder, tiny_texts, monkeypatch
):
    model = BiEncoder.load(tiny_bi_encoder)
    texts = tiny_texts[:50]
    fixed = model.encode(texts, "passage", batch_size=8)
    batches = _spy(monkeypatch, bi_module)
    shapes = []
    embed = BiEncoder.embed
    monkeypatch.setattr(
        BiEncoder,
        "embed",
        lambda self, batch: shapes.append(tuple(batch["input_ids"].shape)) or embed(self, batch),
    )
    budget = 160
    by_tokens = model.encode(
        texts, "passage", batch_size=8, runtime=Runtime(max_batch_tokens=budget, prefetch=True)
    )
    _covered_once(batches, len(texts))
    assert len({len(b) for b in batches}) > 1  # the budget, not batch_size, sized them
    assert all(rows == 1 or rows * width <= budget for rows, width in shapes)
    torch.testing.assert_close(by_tokens, fixed, atol=1e-5, rtol=0)


def test_cross_encoder_scores_by_token_budget_cover_every_pair_once(
    tiny_cross_encoder, tiny_texts, monkeypatch
):
    model = CrossEncoderModel.load(tiny_cross_encoder, max_length=64)
    queries, passages = tiny_texts[:40], tiny_texts[40:80]
    one_by_one = model.predict(
        queries, passages, batch_size=1
    )  # each pair alone: input order by construction
    batches = _spy(monkeypatch, cross_module)
    shapes = []
    scores = CrossEncoderModel.scores
    monkeypatch.setattr(
        CrossEncoderModel,
        "scores",
        lambda self, batch: shapes.append(tuple(batch["input_ids"].shape)) or scores(self, batch),
    )
    budget = 300
    by_tokens = model.predict(
        queries, passages, batch_size=8, runtime=Runtime(max_batch_tokens=budget, max_forward_texts=12)
    )
    _covered_once(batches, len(queries))
    assert (
        all(rows == 1 or rows * width <= budget for rows, width in shapes) and max(r for r, _ in shapes) <= 12
    )
    assert len(shapes) == len(batches) and len({r for r, _ in shapes}) > 1
    np.testing.assert_allclose(by_tokens, one_by_one, atol=1e-5, rtol=0)


def test_the_score_stage_with_prefetch_writes_the_same_bytes_and_by_tokens_the_same_scores(
    make_cfg, tiny_cross_encoder, tmp_path
):
    teacher = ["teacher=cross_encoder", f"teacher.model={tiny_cross_encoder}", "teacher.max_length=96"]

    def scores(name, *extra):
        cfg = make_cfg(*teacher, *extra, "workspace=" + str(tmp_path / name))
        mine.run(cfg)
        score.run(cfg)
        path = stage_dir(cfg, "score") / score.OUTPUT
        return path.read_bytes(), pq.read_table(path)

    plain_bytes, plain = scores("plain")
    ahead_bytes, _ = scores("ahead", "hardware.prefetch=true")
    assert ahead_bytes == plain_bytes
    _, by_tokens = scores("tokens", "hardware.max_batch_tokens=500")
    others = [c for c in plain.column_names if c != "teacher"]
    assert by_tokens.select(others).equals(plain.select(others))  # the same pairs in the same order
    np.testing.assert_allclose(
        by_tokens["teacher"].to_numpy(), plain["teacher"].to_numpy(), atol=1e-5, rtol=0
    )


# --------------------------------------------------------------------------- hardware.max_forward_tokens
@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("budget", [1, 40, 100, 250, 10_000])
def test_forward_pieces_are_the_tensors_of_tokenizing_their_rows_alone(tiny_bi_encoder, tiny_texts, side, budget):
    model = BiEncoder.load(tiny_bi_encoder)
    model.tokenizer.padding_side = side
    model.batch_tokenizer = type(model.batch_tokenizer)(model.tokenizer)  # its backends made for this side
    texts = sorted(tiny_texts[:24], key=len, reverse=True)
    idx = np.arange(100, 100 + len(texts))
    batch = model.tokenize_cpu(texts, "passage")
    rows, width = batch["input_ids"].shape
    pieces = list(forward_pieces(idx, batch, budget, model.batch_tokenizer.pad_values()))
    assert np.array_equal(np.concatenate([i for i, _ in pieces]), idx)  # every row once, in order
    if rows * width <= budget:
        assert len(pieces) == 1 and all(torch.equal(pieces[0][1][k], batch[k]) for k in batch)
    for piece_idx, inputs in pieces:
        alone = model.tokenize_cpu([texts[i - 100] for i in piece_idx], "passage")
        assert sorted(inputs) == sorted(alone)
        assert all(torch.equal(inputs[k], alone[k]) and inputs[k].is_contiguous() for k in alone)
        n, w = inputs["input_ids"].shape
        assert n == 1 or n * w <= budget
    assert (len(pieces) > 1) == (rows * width > budget)


def test_forward_pieces_keep_tokens_the_attention_mask_hides_and_cut_other_row_tensors_alike():
    # ColBERT-style query expansion: [MASK] ids (103) with attention 0 are tokens, not padding
    ids = torch.tensor([[101, 7, 8, 102, 103, 103], [101, 9, 102, 0, 0, 0], [101, 102, 0, 0, 0, 0]])
    attention = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 0, 0, 0], [1, 1, 0, 0, 0, 0]])
    scoring = attention.bool()
    inputs = {"input_ids": ids, "attention_mask": attention, "scoring": scoring, "lengths": torch.tensor([4, 3, 2])}
    pieces = list(forward_pieces(np.array([5, 6, 7]), inputs, 6, {"input_ids": 0, "attention_mask": 0}))
    assert [p.tolist() for p, _ in pieces] == [[5], [6, 7]]
    assert torch.equal(pieces[0][1]["input_ids"], ids[:1])  # the expansion columns stay
    assert torch.equal(pieces[1][1]["input_ids"], ids[1:, :3])
    assert torch.equal(pieces[1][1]["scoring"], scoring[1:, :3])
    assert torch.equal(pieces[1][1]["lengths"], torch.tensor([3, 2]))  # not [rows, width]: rows only
    no_pad = list(forward_pieces(np.array([5, 6, 7]), inputs, 6, None))  # no padding known: the batch's width
    assert [p.tolist() for p, _ in no_pad] == [[5], [6], [7]]
    assert all(x["input_ids"].shape[1] == 6 for _, x in no_pad)


def test_a_forward_token_cap_holds_in_encode_predict_and_embed_with_the_same_results(
    tiny_bi_encoder, tiny_cross_encoder, tiny_texts, monkeypatch
):
    bi = BiEncoder.load(tiny_bi_encoder)
    texts = tiny_texts[:40]
    shapes: list[tuple[int, int]] = []
    embed = BiEncoder.embed
    monkeypatch.setattr(
        BiEncoder, "embed", lambda self, batch: shapes.append(tuple(batch["input_ids"].shape)) or embed(self, batch)
    )
    want = bi.encode(texts, "passage", batch_size=16, runtime=Runtime(max_forward_texts=16))
    uncapped = len(shapes)
    shapes.clear()
    for prefetch in (False, True):
        got = bi.encode(
            texts, "passage", batch_size=16,
            runtime=Runtime(max_forward_texts=16, max_forward_tokens=120, prefetch=prefetch),
        )  # fmt: skip
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert len(shapes) > 2 * uncapped and all(rows == 1 or rows * width <= 120 for rows, width in shapes)
    assert sum(rows for rows, _ in shapes) == 2 * len(texts)

    ce = CrossEncoderModel.load(tiny_cross_encoder, max_length=64)
    queries, passages = tiny_texts[:30], tiny_texts[30:60]
    want = ce.predict(queries, passages, batch_size=16)
    got = ce.predict(queries, passages, batch_size=16, runtime=Runtime(max_forward_tokens=150))
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def test_the_cpu_configs_cap_a_forwards_tokens_and_the_gpu_config_does_not(make_cfg):
    for option, cap in (("cpu", 2048), ("cpu_bf16", 2048), ("cpu_int8", 2048), ("auto", 2048), ("cuda", None)):
        hw = make_cfg(f"hardware={option}").hardware
        assert hw.max_forward_tokens == cap, option
    made = Runtime.from_config(OmegaConf.create({"device": "cpu", "precision": "fp32", "max_forward_tokens": 512}))
    assert made.max_forward_tokens == 512 and Runtime().max_forward_tokens is None
    for bad in (0, 2.5, True, "x"):
        with pytest.raises(ConfigError, match="max_forward_tokens"):
            Runtime(max_forward_tokens=bad)
