"""Dropout masks drawn 16 bits at a time (:mod:`distillrank.models.dropout`): dropout's distribution
and expectation, the generator's seed, gradients, attention equal to its definition, a model
restored after training, and the training loop's ``train.dropout_masks``."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from distillrank.losses import MarginMSELoss
from distillrank.models import dropout as cpu
from distillrank.models.bi_encoder import BiEncoder
from distillrank.models.cross_encoder import CrossEncoderModel
from distillrank.runtime import Runtime
from distillrank.training.batching import QueryPool
from distillrank.training.loop import train_student

TEXTS = ["cells and proteins in the blood", "a protein of the cell membrane", "mitochondria"]


@pytest.mark.parametrize("p", [0.1, 0.25, 0.5])
def test_masks_drop_each_element_with_probability_p(p):
    n = 1 << 20
    drops = ~cpu.kept(torch.Size([n]), p, torch.Generator().manual_seed(0))
    assert drops.dtype == torch.bool and drops.shape == (n,)
    assert abs(drops.float().mean().item() - p) < 5 * (p * (1 - p) / n) ** 0.5 + 2**-16
    halves = drops.view(2, -1).float().mean(1)  # no structure by position: both halves drop alike
    assert abs(halves[0] - halves[1]).item() < 10 * (p * (1 - p) / n) ** 0.5
    neighbours = (drops[:-1] & drops[1:]).float().mean().item()  # independent: P(both) = p²
    assert abs(neighbours - p * p) < 5 * (p * p / n) ** 0.5


def test_masks_come_from_the_generator_and_its_seed():
    shape = torch.Size([7, 33])
    a = cpu.kept(shape, 0.3, torch.Generator().manual_seed(5))
    b = cpu.kept(shape, 0.3, torch.Generator().manual_seed(5))
    c = cpu.kept(shape, 0.3, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    torch.manual_seed(5)  # the default generator when none is given: torch.manual_seed decides
    assert torch.equal(cpu.kept(shape, 0.3), a)


def test_drop_keeps_the_expectation_and_masks_the_gradient():
    p = 0.1
    keep = cpu.keep_threshold(p)
    assert keep == 58982 and abs(keep / 65536 - (1 - p)) <= 2**-17
    x = torch.full((1 << 20,), 2.0, requires_grad=True)
    out = cpu.drop(x, p, torch.Generator().manual_seed(1))
    kept = out != 0
    assert torch.all(out[kept] == 2.0 * 65536 / keep)  # kept elements scaled so that E[out] = x
    assert abs(out.mean().item() - 2.0) < 0.01
    out.sum().backward()
    assert torch.equal(x.grad, torch.where(kept, torch.tensor(65536 / keep), torch.tensor(0.0)))


def test_the_module_is_dropout_in_eval_mode_at_p0_and_in_place():
    x = torch.randn(4, 8)
    module = cpu.CpuDropout(0.5)
    assert isinstance(module, nn.Dropout)
    assert module.eval()(x) is x
    assert cpu.CpuDropout(0.0).train()(x) is x
    torch.manual_seed(0)
    expected = F.dropout(x.clone(), 0.5, True)
    torch.manual_seed(0)
    assert torch.equal(cpu.CpuDropout(0.5, inplace=True).train()(x.clone()), expected)  # nn.Dropout's
    torch.manual_seed(0)
    mask = cpu.kept(x.shape, 0.5)
    torch.manual_seed(0)
    out = module.train()(x)
    assert torch.equal(out, torch.where(mask, x * 65536 / cpu.keep_threshold(0.5), 0.0))


def _qkv(dtype=torch.float32) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    return tuple(torch.randn(2, 3, 5, 4, generator=g).to(dtype) for _ in range(3))


def _module(causal: bool = False) -> nn.Module:
    module = nn.Module()
    module.is_causal = causal
    return module


def _masks() -> dict[str, torch.Tensor | None]:
    pad = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=torch.bool)[:, None, None, :].expand(2, 1, 5, 5)
    return {"none": None, "bool": pad, "additive": torch.where(pad, 0.0, torch.finfo(torch.float32).min)}


@pytest.mark.parametrize("mask_kind", ["none", "bool", "additive"])
def test_attention_equals_its_definition_with_the_same_mask(mask_kind):
    q, k, v = _qkv()
    mask = _masks()[mask_kind]
    torch.manual_seed(3)
    out, weights = cpu.attention_forward(_module(), q, k, v, mask, dropout=0.2, scaling=0.5)
    assert weights is None and out.shape == (2, 5, 3, 4)  # (batch, queries, heads, head dim), as sdpa's
    torch.manual_seed(3)
    drops = ~cpu.kept(torch.Size([2, 3, 5, 5]), 0.2)
    scores = q @ k.transpose(-1, -2) * 0.5
    if mask is not None:
        scores = scores.masked_fill(~_masks()["bool"], float("-inf"))
    probs = torch.softmax(scores, -1) * (65536 / cpu.keep_threshold(0.2))
    expected = (probs.masked_fill(drops, 0.0) @ v).transpose(1, 2)
    torch.testing.assert_close(out, expected)
    if mask is not None:  # a padded key gets no attention
        assert torch.equal(out[1], (probs.masked_fill(drops, 0.0)[1, :, :, :3] @ v[1, :, :3]).transpose(0, 1))


def test_attention_without_dropout_causal_or_grouped_is_sdpa_itself():
    q, k, v = _qkv()
    mask = _masks()["bool"]
    for module, kwargs in [
        (_module(), {"dropout": 0.0}),
        (_module(causal=True), {"dropout": 0.0}),
    ]:
        ours, _ = cpu.attention_forward(module, q, k, v, mask, scaling=0.5, **kwargs)
        theirs, _ = sdpa_attention_forward(module, q, k, v, mask, scaling=0.5, **kwargs)
        assert torch.equal(ours, theirs)
    grouped = _module()
    grouped.num_key_value_groups = 3  # grouped-query attention: handed to sdpa, dropout and all
    torch.manual_seed(0)
    ours, _ = cpu.attention_forward(grouped, q, k[:, :1], v[:, :1], None, dropout=0.5)
    torch.manual_seed(0)
    theirs, _ = sdpa_attention_forward(grouped, q, k[:, :1], v[:, :1], None, dropout=0.5)
    assert torch.equal(ours, theirs)


def test_attention_in_bf16_runs_in_fp32_and_returns_bf16():
    q, k, v = _qkv(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.manual_seed(1)
        out, _ = cpu.attention_forward(_module(), q, k, v, None, dropout=0.1)
    torch.manual_seed(1)
    reference, _ = cpu.attention_forward(_module(), q.float(), k.float(), v.float(), None, dropout=0.1)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), reference, atol=1e-2, rtol=1e-2)


def test_a_model_takes_the_masks_for_the_block_and_is_restored(tiny_bi_encoder):
    model = BiEncoder.load(tiny_bi_encoder)
    originals = [(name, m) for name, m in model.named_modules() if type(m) is nn.Dropout]
    keys = list(model.state_dict())
    with torch.no_grad():
        reference = model.eval()(TEXTS, "passage")
    with cpu.cpu_dropout(model) as replaced:
        assert replaced == {"dropout_modules": len(originals), "attention": 1}
        assert all(type(m) is cpu.CpuDropout for _, m in model.named_modules() if "dropout" in _.split(".")[-1])
        assert model.backbone.config._attn_implementation == cpu.ATTENTION
        with torch.no_grad():
            torch.testing.assert_close(model.eval()(TEXTS, "passage"), reference, atol=0, rtol=0)  # inference: sdpa
            model.train()
            torch.manual_seed(0)
            first = model(TEXTS, "passage")
            torch.manual_seed(0)
            again = model(TEXTS, "passage")
            second = model(TEXTS, "passage")
        assert torch.equal(first, again) and not torch.equal(first, second)  # seeded, and dropping
        assert list(model.state_dict()) == keys
    assert model.backbone.config._attn_implementation == "sdpa"
    assert [(name, m) for name, m in model.named_modules() if type(m) is nn.Dropout] == originals
    assert model.training  # each module as the block left it
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(TEXTS, "passage"), reference, atol=0, rtol=0)


def test_without_dropout_the_masks_change_nothing(tiny_cross_encoder):
    model = CrossEncoderModel.from_backbone(str(tiny_cross_encoder), dropout=0.0).train()
    with torch.no_grad():
        reference = model(["q one"] * 3, TEXTS)
        with cpu.cpu_dropout(model) as replaced:
            assert replaced["dropout_modules"] > 0 and replaced["attention"] == 1
            torch.testing.assert_close(model(["q one"] * 3, TEXTS), reference)


PASSAGES = {f"d{i}": f"passage {i} about cells and proteins number {i}" for i in range(24)}
QUERIES = {f"q{i}": f"query {i} about proteins" for i in range(6)}
POOLS = [
    QueryPool(qid, positives=[(f"d{4 * i}", 1.0)], negatives=[(f"d{4 * i + j}", 0.5 - 0.1 * j) for j in range(1, 4)])
    for i, qid in enumerate(QUERIES)
]


def _trained(path, tmp_path, masks: str) -> BiEncoder:
    student = BiEncoder.load(path)
    cfg = OmegaConf.create(
        {
            "epochs": 1, "max_steps": None, "batch_size": 3, "grad_accum_steps": 1, "negatives_per_example": 1,
            "lr": 1e-3, "weight_decay": 0.0, "warmup_ratio": 0.0, "scheduler": "linear", "max_grad_norm": 100.0,
            "log_every": 1, "dropout_masks": masks,
        }
    )  # fmt: skip
    train_student(
        student, MarginMSELoss(), POOLS, QUERIES, lambda ids: [PASSAGES[d] for d in ids], cfg, Runtime(),
        seed=3, log_path=tmp_path / f"{masks}.jsonl",
    )  # fmt: skip
    assert all(type(m) is not cpu.CpuDropout for m in student.modules())  # restored after training
    assert student.backbone.config._attn_implementation == "sdpa"
    return student


def test_training_draws_its_masks_as_train_dropout_masks_says(tiny_bi_encoder, tmp_path):
    fast = _trained(tiny_bi_encoder, tmp_path, "fast")
    again = _trained(tiny_bi_encoder, tmp_path, "fast")
    torch_masks = _trained(tiny_bi_encoder, tmp_path, "torch")
    torch_again = _trained(tiny_bi_encoder, tmp_path, "torch")
    untrained = BiEncoder.load(tiny_bi_encoder).state_dict()
    for name, value in fast.state_dict().items():  # the seed decides every mask: runs are identical
        assert torch.equal(value, again.state_dict()[name])
        assert torch.equal(torch_masks.state_dict()[name], torch_again.state_dict()[name])
    changed = [n for n, v in fast.state_dict().items() if not torch.equal(v, torch_masks.state_dict()[n])]
    moved = [n for n, v in fast.state_dict().items() if not torch.equal(v, untrained[n])]
    assert changed and set(changed) <= set(moved)  # other masks, so other (trained) weights
