"""The training loop: AdamW, linear warm-up and decay, gradient clipping, mixed precision.

With ``train.checkpoint_every > 0`` and a ``checkpoint_dir``, the loop saves a resumable checkpoint
every N optimizer steps into ``checkpoint_dir/last/`` (written to a temporary folder, a ``COMPLETE``
marker last, then renamed into place). A later call with the same arguments loads it and continues
from the saved position, so the final weights equal those of an uninterrupted run.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup, get_linear_schedule_with_warmup

from distillrank.errors import ConfigError, DistillrankError
from distillrank.models.bi_encoder import BiEncoder
from distillrank.runtime import autocast
from distillrank.training.batching import Example, QueryPool, epoch_examples
from distillrank.workspace import atomic_dir, fingerprint, to_plain

log = logging.getLogger(__name__)

SCHEDULES = {"linear": get_linear_schedule_with_warmup, "cosine": get_cosine_schedule_with_warmup}

LAST = "last"  # the checkpoint folder inside checkpoint_dir
MARKER = "COMPLETE"  # written last inside a checkpoint; a folder without it is ignored
STATE = "state.pt"  # everything but the log
CKPT_LOG = "train_log.jsonl"  # the training log as it was at the checkpoint


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


@dataclass
class _Position:
    """Where a checkpoint was taken: after ``step`` optimizer steps, inside epoch ``epoch`` (0-based),
    before the batch starting at example ``offset``; ``epoch_rng`` is the loop rng's state at the
    start of that epoch (before ``epoch_examples`` consumed it)."""

    step: int
    epoch: int
    offset: int
    seen: int
    loss_value: float
    epoch_rng: dict[str, Any]


def _run_identity(cfg, pools: list[QueryPool], seed: int, precision: str, resume_key: str | None) -> str:
    """A fingerprint of what decides the run's trajectory (``checkpoint_every`` left out), so a
    checkpoint of another configuration is never resumed."""
    plain = to_plain(cfg)
    plain = dict(plain) if isinstance(plain, dict) else {"cfg": str(plain)}
    plain.pop("checkpoint_every", None)
    pool_fp = fingerprint([[p.qid, p.positives, p.negatives] for p in pools])
    return fingerprint(
        {"cfg": plain, "seed": seed, "precision": precision, "pools": pool_fp, "resume_key": resume_key}
    )


def _save_checkpoint(
    checkpoint_dir: Path,
    identity: str,
    student: BiEncoder,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    position: _Position,
    log_path: Path,
) -> None:
    """Write ``checkpoint_dir/last`` atomically: state into a temporary folder, the marker last, a rename."""
    state = {
        "identity": identity,
        "model": {k: v.detach().cpu().clone() for k, v in student.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "position": position.__dict__,
        "python_rng": random.getstate(),
        "numpy_global_rng": np.random.get_state(legacy=False),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }
    with atomic_dir(checkpoint_dir / LAST) as tmp:
        torch.save(state, tmp / STATE)
        (tmp / CKPT_LOG).write_bytes(log_path.read_bytes() if log_path.is_file() else b"")
        (tmp / MARKER).write_text(f"{position.step}\n", encoding="utf-8")
    log.debug("checkpoint at step %d in %s", position.step, checkpoint_dir / LAST)


def _load_checkpoint(checkpoint_dir: Path | None, identity: str) -> dict[str, Any] | None:
    """The state of ``checkpoint_dir/last`` when it is complete and of this run; None otherwise."""
    if checkpoint_dir is None:
        return None
    folder = checkpoint_dir / LAST
    if not (folder / MARKER).is_file():
        return None
    try:
        state = torch.load(folder / STATE, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - an unreadable checkpoint means starting afresh
        log.warning("ignoring unreadable checkpoint %s: %s", folder, err)
        return None
    if state.get("identity") != identity:
        log.warning("ignoring checkpoint %s: made with another configuration or data", folder)
        return None
    state["log"] = (folder / CKPT_LOG).read_bytes()
    return state


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
    checkpoint_dir: Path | None = None,
    resume_key: str | None = None,
) -> TrainResult:
    """Train ``student`` in place with ``loss_fn`` on the teacher-scored pools.

    Args:
        cfg: the ``train`` config node (epochs, max_steps, batch_size, negatives_per_example, lr, …,
            and optionally ``checkpoint_every``: optimizer steps between checkpoints, 0 = off).
        passage_text: doc ids -> passage texts (one Arrow read per batch).
        log_path: JSON-lines log of step, loss, lr and gradient norm.
        checkpoint_dir: where resumable checkpoints go (``<dir>/last``); a complete checkpoint of
            the same run found there is resumed (weights, optimizer, scheduler, position, RNGs, log).
        resume_key: extra identity of the run (e.g. the stage key); a checkpoint saved under another
            key is ignored.
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

    checkpoint_every = int(cfg.get("checkpoint_every", 0) or 0) if checkpoint_dir is not None else 0
    identity = _run_identity(cfg, pools, seed, precision, resume_key)
    step = seen = 0
    first_epoch = first_offset = 0
    loss_value = float("nan")
    epoch_rng_override: dict[str, Any] | None = None
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_mode = "w"
    state = _load_checkpoint(checkpoint_dir, identity) if checkpoint_every > 0 else None
    if state is not None:
        student.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        pos = _Position(**state["position"])
        step, seen, loss_value = pos.step, pos.seen, pos.loss_value
        first_epoch, first_offset, epoch_rng_override = pos.epoch, pos.offset, pos.epoch_rng
        random.setstate(state["python_rng"])
        np.random.set_state(state["numpy_global_rng"])
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        log_path.write_bytes(state["log"])  # the log as it was at the checkpoint; later lines dropped
        log_mode = "a"
        log.info("train: resuming from step %d", step)
    seen_at_start = seen
    start = time.perf_counter()
    bar = tqdm(total=total_steps, initial=step, desc="train", unit="step")
    with open(log_path, log_mode, encoding="utf-8") as log_file:
        for epoch in range(first_epoch, cfg.epochs):
            if epoch_rng_override is not None:
                rng.bit_generator.state = epoch_rng_override
                epoch_rng_override = None
            epoch_rng = copy.deepcopy(rng.bit_generator.state)
            examples = epoch_examples(pools, cfg.negatives_per_example, rng)
            step_size = cfg.batch_size * accum
            offset = first_offset if epoch == first_epoch else 0
            for b in range(offset, len(examples), step_size):
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
                if checkpoint_every > 0 and step % checkpoint_every == 0 and step < total_steps:
                    assert checkpoint_dir is not None
                    position = _Position(step, epoch, b + step_size, seen, loss_value, epoch_rng)
                    _save_checkpoint(
                        checkpoint_dir, identity, student, optimizer, scheduler, position, log_path
                    )
                rate = (seen - seen_at_start) / max(time.perf_counter() - start, 1e-9)
                bar.set_postfix(loss=f"{loss_value:.4f}", ex_s=f"{rate:.1f}")
                bar.update(1)
    bar.close()
    elapsed = max(time.perf_counter() - start, 1e-9)
    rate = (seen - seen_at_start) / elapsed
    return TrainResult(steps=step, examples=seen, final_loss=loss_value, examples_per_s=rate)
