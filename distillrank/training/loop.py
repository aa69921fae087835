"""The training loop: AdamW, linear warm-up and decay, gradient clipping, mixed precision."""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup, get_linear_schedule_with_warmup

from distillrank.errors import ConfigError, DistillrankError
from distillrank.models.bi_encoder import BiEncoder
from distillrank.runtime import autocast
from distillrank.training.batching import Example, QueryPool, epoch_examples

log = logging.getLogger(__name__)

SCHEDULES = {"linear": get_linear_schedule_with_warmup, "cosine": get_cosine_schedule_with_warmup}


@dataclass
class TrainResult:
    steps: int
    examples: int
    final_loss: float
    examples_per_s: float


def student_scores(
    student: BiEncoder, examples: Sequence[Example], query_text: dict[str, str], passage_text: Callable
) -> torch.Tensor:
    """Student scores [B, 1 + n] of a batch; each distinct passage in the batch is encoded once."""
    unique = list(dict.fromkeys(d for ex in examples for d in ex.docids))
    slot = {d: i for i, d in enumerate(unique)}
    q_emb = student([query_text[ex.qid] for ex in examples], "query")
    p_emb = student(passage_text(unique), "passage")
    index = torch.tensor([[slot[d] for d in ex.docids] for ex in examples], device=p_emb.device)
    return torch.einsum("bd,bld->bl", q_emb.float(), p_emb.float()[index])


def train_bi_encoder(
    student: BiEncoder,
    loss_fn: nn.Module,
    pools: list[QueryPool],
    query_text: dict[str, str],
    passage_text: Callable[[list[str]], list[str]],
    cfg,
    device: torch.device,
    precision: str,
    seed: int,
    log_path: Path,
) -> TrainResult:
    """Train ``student`` in place with ``loss_fn`` on the teacher-scored pools.

    Args:
        cfg: the ``train`` config node (epochs, max_steps, batch_size, negatives_per_example, lr, …).
        passage_text: doc ids -> passage texts (one Arrow read per batch).
        log_path: JSON-lines log of step, loss, lr and gradient norm.
    """
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    student.to(device).train()
    if cfg.scheduler not in SCHEDULES:
        raise ConfigError(f"train.scheduler={cfg.scheduler!r}; expected one of {sorted(SCHEDULES)}")
    accum = max(int(cfg.grad_accum_steps), 1)
    n_per_epoch = len(epoch_examples(pools, cfg.negatives_per_example, np.random.default_rng(0)))
    steps_per_epoch = math.ceil(math.ceil(n_per_epoch / cfg.batch_size) / accum)
    total_steps = steps_per_epoch * cfg.epochs
    if cfg.max_steps:
        total_steps = min(total_steps, int(cfg.max_steps))
    if total_steps == 0:
        raise DistillrankError("no training examples: every query lacks a positive or a negative")
    no_decay = ("bias", "LayerNorm.weight", "layer_norm.weight", "norm.weight")
    params = [
        {
            "params": [p for n, p in student.named_parameters() if not n.endswith(no_decay)],
            "weight_decay": cfg.weight_decay,
        },
        {"params": [p for n, p in student.named_parameters() if n.endswith(no_decay)], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr)
    scheduler = SCHEDULES[cfg.scheduler](optimizer, int(cfg.warmup_ratio * total_steps), total_steps)

    step = seen = 0
    loss_value = float("nan")
    start = time.perf_counter()
    bar = tqdm(total=total_steps, desc="train", unit="step")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w", encoding="utf-8") as log_file:
        for epoch in range(cfg.epochs):
            examples = epoch_examples(pools, cfg.negatives_per_example, rng)
            step_size = cfg.batch_size * accum
            for b in range(0, len(examples), step_size):
                if step >= total_steps:
                    break
                optimizer.zero_grad(set_to_none=True)
                micro_batches = [
                    examples[m : m + cfg.batch_size]
                    for m in range(b, min(b + step_size, len(examples)), cfg.batch_size)
                ]
                n_step = sum(len(mb) for mb in micro_batches)
                loss_value = 0.0
                for batch in micro_batches:
                    with autocast(device, precision):
                        scores = student_scores(student, batch, query_text, passage_text)
                    teacher = torch.tensor([ex.teacher for ex in batch], device=device)
                    loss = loss_fn(scores.float(), teacher)
                    if not torch.isfinite(loss):
                        raise DistillrankError(
                            f"loss is {loss.item()} at step {step + 1} (epoch {epoch + 1}, batch of queries "
                            f"{[ex.qid for ex in batch[:5]]}…); lower train.lr or check the teacher scores"
                        )
                    (loss * (len(batch) / n_step)).backward()
                    loss_value += loss.item() * len(batch) / n_step
                grad_norm = torch.nn.utils.clip_grad_norm_(student.parameters(), cfg.max_grad_norm)
                optimizer.step()
                scheduler.step()
                step += 1
                seen += n_step
                if step % cfg.log_every == 0 or step == total_steps:
                    record = {
                        "step": step,
                        "epoch": epoch + 1,
                        "loss": loss_value,
                        "lr": scheduler.get_last_lr()[0],
                        "grad_norm": float(grad_norm),
                    }
                    log_file.write(json.dumps(record) + "\n")
                    log_file.flush()
                rate = seen / max(time.perf_counter() - start, 1e-9)
                bar.set_postfix(loss=f"{loss_value:.4f}", ex_s=f"{rate:.1f}")
                bar.update(1)
    bar.close()
    elapsed = max(time.perf_counter() - start, 1e-9)
    return TrainResult(steps=step, examples=seen, final_loss=loss_value, examples_per_s=seen / elapsed)
