"""The training loop: accumulation equals a larger batch, schedules, NaN losses stop the run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from distillrank.errors import ConfigError, DistillrankError
from distillrank.losses import MarginMSELoss
from distillrank.models.bi_encoder import BiEncoder
from distillrank.runtime import Runtime
from distillrank.training.batching import QueryPool
from distillrank.training.loop import train_student

PASSAGES = {f"d{i}": f"passage {i} about cells and proteins number {i}" for i in range(24)}
QUERIES = {f"q{i}": f"query {i} about proteins" for i in range(6)}


def _pools() -> list[QueryPool]:
    return [
        QueryPool(
            qid,
            positives=[(f"d{4 * i}", 1.0)],
            negatives=[(f"d{4 * i + j}", 0.5 - 0.1 * j) for j in range(1, 4)],
        )
        for i, qid in enumerate(QUERIES)
    ]


def _student(path: Path, dropout: float = 0.0) -> BiEncoder:
    """The tiny bi-encoder with every dropout set to ``dropout`` (0: deterministic training)."""
    student = BiEncoder.load(path)
    for module in student.modules():
        if isinstance(module, nn.Dropout):
            module.p = dropout
    return student


def _train(path: Path, tmp_path: Path, loss=None, **overrides) -> BiEncoder:
    cfg = OmegaConf.create(
        {
            "epochs": 1,
            "max_steps": None,
            "batch_size": 6,
            "grad_accum_steps": 1,
            "negatives_per_example": 1,
            "lr": 1e-3,
            "weight_decay": 0.0,
            "warmup_ratio": 0.0,
            "scheduler": "linear",
            "max_grad_norm": 100.0,
            "log_every": 1,
        }
    )
    cfg.update(overrides)
    student = _student(path)
    train_student(
        student,
        loss or MarginMSELoss(),
        _pools(),
        QUERIES,
        lambda ids: [PASSAGES[d] for d in ids],
        cfg,
        Runtime(),
        seed=3,
        log_path=tmp_path / "log.jsonl",
    )
    return student


def test_accumulating_two_half_batches_equals_one_batch(tiny_bi_encoder, tmp_path):
    whole = _train(tiny_bi_encoder, tmp_path, batch_size=6)
    halves = _train(tiny_bi_encoder, tmp_path, batch_size=3, grad_accum_steps=2)
    untrained = _student(tiny_bi_encoder)
    changed = False
    for (name, a), b, c in zip(whole.named_parameters(), halves.parameters(), untrained.parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=name)
        changed |= not torch.allclose(a, c)
    assert changed  # training moved the weights, so the equality above is not vacuous


def test_cosine_schedule_trains_and_unknown_schedule_fails(tiny_bi_encoder, tmp_path):
    trained = _train(tiny_bi_encoder, tmp_path, scheduler="cosine")
    lrs = [json.loads(line)["lr"] for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    n = len(lrs)  # one epoch of 18 examples (6 queries x 3 negatives), 6 per step, no warm-up
    assert n == 3
    # after step k of n: lr · (1 + cos(πk/n)) / 2, not the linear schedule's lr · (1 - k/n)
    assert lrs == pytest.approx([1e-3 * (1 + math.cos(math.pi * k / n)) / 2 for k in range(1, n + 1)], abs=1e-9)
    untrained = _student(tiny_bi_encoder)
    assert any(not torch.equal(a, b) for a, b in zip(trained.parameters(), untrained.parameters(), strict=True))
    with pytest.raises(ConfigError, match="scheduler"):
        _train(tiny_bi_encoder, tmp_path, scheduler="step")


def test_a_nan_loss_stops_the_run_naming_the_step(tiny_bi_encoder, tmp_path):
    class Nan(nn.Module):
        def forward(self, student, teacher):
            return (student * float("nan")).mean()

    with pytest.raises(DistillrankError, match=r"loss is nan at step 1 \(epoch 1"):
        _train(tiny_bi_encoder, tmp_path, loss=Nan())
