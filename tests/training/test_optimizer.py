"""The loop's AdamW: decay groups, and the fused kernel where torch has one."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch

from distillrank.training.loop import _optimizer


class _Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(50, 8)
        self.proj = torch.nn.Linear(8, 8)
        self.LayerNorm = torch.nn.LayerNorm(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.proj(self.embed(x)))


def test_adamw_is_fused_on_the_cpu_and_keeps_biases_and_norms_undecayed() -> None:
    model = _Tiny()
    opt = _optimizer(model, SimpleNamespace(lr=1e-3, weight_decay=0.01))
    assert opt.defaults["fused"] is True
    decayed, undecayed = opt.param_groups
    assert decayed["weight_decay"] == 0.01 and undecayed["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    assert sorted(names[id(p)] for p in undecayed["params"]) == [
        "LayerNorm.bias",
        "LayerNorm.weight",
        "proj.bias",
    ]


def test_fused_adamw_trains_what_the_unfused_one_does() -> None:
    """Same update up to float arithmetic: 30 steps of both stay within what another summation order
    gives (docs/TRAINING.md)."""
    torch.manual_seed(0)
    a = _Tiny()
    b, start = copy.deepcopy(a), copy.deepcopy(a)
    fused = _optimizer(a, SimpleNamespace(lr=1e-3, weight_decay=0.01))
    plain = torch.optim.AdamW(
        [{"params": g["params"], "weight_decay": g["weight_decay"]} for g in _groups_of(b)],
        lr=1e-3,
        foreach=False,
    )
    for _ in range(30):
        x = torch.randint(0, 50, (16,))
        for model, opt in ((a, fused), (b, plain)):
            opt.zero_grad(set_to_none=True)
            model(x).pow(2).sum().backward()
            opt.step()
    worst = max((p - q).abs().max().item() for p, q in zip(a.parameters(), b.parameters(), strict=True))
    moved = max((p - q).abs().max().item() for p, q in zip(a.parameters(), start.parameters(), strict=True))
    assert worst < 1e-5 < moved


def _groups_of(model: torch.nn.Module) -> list[dict]:
    return [
        {"params": g["params"], "weight_decay": g["weight_decay"]}
        for g in _optimizer(model, SimpleNamespace(lr=1e-3, weight_decay=0.01)).param_groups
    ]


def test_a_parameter_without_a_fused_kernel_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    real = torch.optim.AdamW

    def no_fused(params, lr, fused=None, **kw):
        if fused:
            raise RuntimeError(
                "`fused=True` requires all the params to be floating point Tensors of supported devices"
            )
        return real(params, lr=lr, **kw)

    monkeypatch.setattr(torch.optim, "AdamW", no_fused)
    opt = _optimizer(_Tiny(), SimpleNamespace(lr=1e-3, weight_decay=0.0))
    assert isinstance(opt, real) and not opt.defaults.get("fused")
