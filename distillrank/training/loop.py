"""The training loop of every student: AdamW, warm-up and decay, clipping, mixed precision, dev
evaluation with early stopping, resumable checkpoints and data parallelism.

One loop trains any :class:`~distillrank.students.base.Student` (bi-encoder, cross-encoder,
ColBERT): each batch's distinct passages are scored once through the student's ``forward``
([B, 1 + n] group scores, plus the [B, P] in-batch matrix when the loss's ``uses_in_batch`` is true
and the student can give it), and the loss compares them with the teacher's scores.

With a feature loss (:mod:`distillrank.losses.feature`) and a :class:`FeatureSet`, every micro-batch
also embeds ``train.feature_batch_size`` of the collection's texts and regresses them onto the
teacher's embeddings. An epoch is as long as the longer of the two streams (ranking examples,
feature texts); the shorter one starts over within it. A loss made of feature terms only trains on
the texts alone: no query, no label, no mined candidate.

With a ``checkpoint_dir``, the loop saves a resumable checkpoint into ``checkpoint_dir/last/`` every
``train.checkpoint_minutes`` minutes (10 by default) and every ``train.checkpoint_every`` optimizer
steps (0 = by time only); both 0 turn checkpoints off. A checkpoint is written to a temporary
folder and renamed into place (:func:`~distillrank.workspace.atomic_dir`); its ``run.json``, written
last, names the run's identity and the size and sha256 of every file. A later call with the same
arguments reads ``run.json`` first, verifies the files, then loads ``state.pt`` with
``torch.load(weights_only=True)`` (tensors and plain containers only: nothing in it can run code)
and continues from the saved position, so the final weights equal those of an uninterrupted run.
Killed between the two renames of a save, the previous checkpoint is found complete under its
temporary name (``.last.old-*``) and used.

With a dev set and ``train.eval_every > 0``, the student re-ranks the dev candidates every N steps
(:mod:`distillrank.training.dev`); the best weights by ``train.dev_measure`` are kept and loaded
back at the end, and ``train.early_stopping_patience`` evaluations without improvement stop the run.

On CPU the student's dropout draws its masks 16 bits at a time from torch's generator
(:mod:`distillrank.models.dropout`, ``train.dropout_masks=fast``, the default): the same
distribution as ``nn.Dropout``'s, a 1.2–1.4× faster training step; ``train.dropout_masks=torch``
keeps ``nn.Dropout``'s own masks. The model is restored when training ends.

The pools are columnar (:class:`~distillrank.training.batching.Pools`); each epoch draws an
:class:`~distillrank.training.batching.EpochPlan` of row indices from their layout, and each
micro-batch's examples are made from it as the batch comes up. Pools read from ``scores.parquet``
(the train stage's) hold no rows until then: each epoch reads the rows its plan needs
(:meth:`~distillrank.training.batching.Pools.holding`), and a rank's plan is its share of every
global micro-batch alone, so a rank's memory per pair is O(pairs / ranks).

Under ``torchrun`` (:mod:`distillrank.training.distributed`), every global micro-batch of
``train.batch_size`` examples is split over the ranks and the step's loss module is wrapped in
``DistributedDataParallel`` (gradients averaged over the ranks during the last micro-batch's
backward, ``no_sync()`` before), so the update equals that of one process on the same global batch.
``train.gather_negatives`` makes the in-batch negatives span the global micro-batch. A checkpoint
holds the global position (step, epoch, example offset), so a run resumes under another world size.
Rank 0 writes the log, the trackers and the checkpoints.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup, get_linear_schedule_with_warmup

from distillrank import sharding
from distillrank.errors import ConfigError, DistillrankError
from distillrank.losses.combined import uses_scores
from distillrank.losses.feature import Features
from distillrank.losses.infonce import InBatch
from distillrank.models.dropout import for_training
from distillrank.runtime import Runtime
from distillrank.sharding import WHOLE, Share
from distillrank.students.base import Student
from distillrank.students.factory import as_student
from distillrank.training.batching import Example, Pools, QueryPool, as_pools, epoch_plan, examples_per_epoch
from distillrank.training.dev import DevSet, evaluate_dev
from distillrank.training.distributed import all_gather_rows
from distillrank.training.features import FeatureSet, iter_texts
from distillrank.training.trackers import Tracker
from distillrank.workspace import atomic_dir, file_fingerprint, fingerprint, temp_entries, to_plain

log = logging.getLogger(__name__)

SCHEDULES = {"linear": get_linear_schedule_with_warmup, "cosine": get_cosine_schedule_with_warmup}

LAST = "last"  # the checkpoint folder inside checkpoint_dir
RUN_FILE = "run.json"  # written last in a checkpoint: identity, step, files; a folder without it is ignored
STATE = "state.pt"  # everything but the log: tensors and plain containers (loaded with weights_only=True)
CKPT_LOG = "train_log.jsonl"  # the training log as it was at the checkpoint
CHECKPOINT_FORMAT = 2  # 2: run.json beside a weights_only state.pt (1: a COMPLETE marker, pickled numpy)
DEFAULT_CHECKPOINT_MINUTES = 10.0  # train.checkpoint_minutes when the config has no such key
# train.* keys that never change the trained weights: left out of the run identity
NOT_IN_IDENTITY = ("checkpoint_every", "checkpoint_minutes", "logger")


@dataclass
class TrainResult:
    """What a run did. With dev evaluation: the best step and its metrics (the student holds the
    best weights), every evaluation, and whether early stopping ended the run."""

    steps: int
    examples: int
    final_loss: float
    examples_per_s: float
    best_step: int | None = None
    best_dev: dict[str, float] | None = None
    dev_history: list[dict[str, Any]] = field(default_factory=list)
    stopped_early: bool = False
    in_batch: bool = False


def student_scores(
    student: Student,
    examples: Sequence[Example],
    query_text: dict[str, str],
    passage_text: Callable[[list[str]], list[str]],
    in_batch: bool = False,
    positives: dict[str, set[str]] | None = None,
    global_docids: Sequence[str] | None = None,
    dist: Share | None = None,
) -> tuple[torch.Tensor, InBatch | None]:
    """Student scores [B, 1 + n] of a batch (each distinct passage scored once) and, with
    ``in_batch``, the :class:`InBatch` scores [B, P] over the batch's P distinct passages, with each
    query's other known ``positives`` (qid -> docids) excluded from its negatives.

    With ``global_docids`` (the passages of the global micro-batch ``examples`` is this rank's share
    of, example by example) and ``dist``: the P passages are the global batch's; each rank encodes
    its share of them and the student gathers the embeddings over the ranks
    (``train.gather_negatives``)."""
    ids = (d for ex in examples for d in ex.docids) if global_docids is None else global_docids
    unique = list(dict.fromkeys(ids))
    slot = {d: i for i, d in enumerate(unique)}
    index = torch.tensor([[slot[d] for d in ex.docids] for ex in examples], dtype=torch.long)
    queries = [query_text[ex.qid] for ex in examples]
    if global_docids is None or dist is None:
        out = student(queries, passage_text(unique), index, in_batch)
    else:
        sizes = dist.split_sizes(len(unique))
        mine = dist.split(unique) or unique[:1]  # an empty share still joins the gather (its row dropped)
        out = student(
            queries, passage_text(mine), index, in_batch, gather=lambda emb: all_gather_rows(dist, emb, sizes)
        )
    if not in_batch:
        return out.groups.float(), None
    assert out.matrix is not None
    exclude = torch.zeros(len(examples), len(unique), dtype=torch.bool)
    for b, ex in enumerate(examples):
        for d in (positives or {}).get(ex.qid, ()):
            if d in slot:
                exclude[b, slot[d]] = True
    device = out.matrix.device
    return out.groups.float(), InBatch(out.matrix.float(), index.to(device), exclude.to(device))


def _features(student: Student, features: FeatureSet, ids) -> Features:
    """The student's embeddings of feature texts ``ids`` and the teacher's targets."""
    batch = features.batch(ids)
    emb = torch.cat([student.embed(texts, kind) for kind, texts in iter_texts(batch)])
    return Features(emb, batch.targets.to(emb.device))


class _Step(nn.Module):
    """One micro-batch's loss as a module's ``forward``: the module ``DistributedDataParallel``
    wraps, so its hooks see every parameter a step uses — the student's, scored through its
    ``forward`` or its ``embed`` (feature texts), and the loss's own (a feature projection)."""

    def __init__(
        self,
        student: Student,
        loss_fn: nn.Module,
        query_text: dict[str, str],
        passage_text: Callable[[list[str]], list[str]],
        runtime: Runtime,
        in_batch: bool,
        wants_features: bool,
        features: FeatureSet | None,
        dist: Share,
    ) -> None:
        super().__init__()
        self.student = student
        self.loss_fn = loss_fn
        self.query_text, self.passage_text, self.runtime = query_text, passage_text, runtime
        self.in_batch, self.wants_features, self.features, self.dist = (
            in_batch,
            wants_features,
            features,
            dist,
        )

    def forward(
        self,
        shard: list[Example],
        feature_shard: list,
        positives: dict[str, set[str]] | None,
        global_docids: list[str] | None,
    ) -> torch.Tensor:
        with self.runtime.autocast():
            scores, extra = (
                student_scores(
                    self.student,
                    shard,
                    self.query_text,
                    self.passage_text,
                    self.in_batch,
                    positives,
                    global_docids,
                    self.dist,
                )
                if shard
                else (None, None)
            )
            feats = _features(self.student, self.features, feature_shard) if feature_shard else None
        kwargs: dict[str, Any] = {}
        if extra is not None:
            kwargs["in_batch"] = extra
        if self.wants_features:
            kwargs["features"] = feats
        teacher = (
            torch.tensor([ex.teacher for ex in shard], device=scores.device) if scores is not None else None
        )
        return self.loss_fn(scores, teacher, **kwargs)


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


@dataclass
class _Best:
    """Best-checkpoint bookkeeping of the dev evaluation."""

    metric: float = -math.inf
    step: int | None = None
    metrics: dict[str, float] | None = None
    bad_evals: int = 0
    model: dict[str, torch.Tensor] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)


def _run_identity(cfg, pools: Pools, seed: int, precision: str, resume_key: str | None) -> str:
    """A fingerprint of what decides the run's trajectory (``checkpoint_every`` and ``logger`` left
    out), so a checkpoint of another configuration is never resumed. The world size is not in it:
    a checkpoint holds the global position, and another number of ranks resumes it."""
    plain = to_plain(cfg)
    plain = dict(plain) if isinstance(plain, dict) else {"cfg": str(plain)}
    for key in NOT_IN_IDENTITY:
        plain.pop(key, None)
    pool_fp = pools.fingerprint()
    identity = {
        "cfg": plain,
        "seed": seed,
        "precision": precision,
        "pools": pool_fp,
        "resume_key": resume_key,
    }
    return fingerprint(identity)


def _rng_states() -> dict[str, Any]:
    """Every RNG state as tensors and plain containers (``torch.load(weights_only=True)`` reads them)."""
    numpy_state = np.random.get_state(legacy=False)
    key = numpy_state["state"]["key"].tolist()
    numpy_state = {**numpy_state, "state": {**numpy_state["state"], "key": key}}
    return {
        "python_rng": random.getstate(),
        "numpy_global_rng": numpy_state,
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def _set_rng_states(state: dict[str, Any]) -> None:
    random.setstate(state["python_rng"])
    np.random.set_state(state["numpy_global_rng"])
    torch.set_rng_state(state["torch_rng"])
    if state["cuda_rng"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])


def _cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def _save_checkpoint(
    checkpoint_dir: Path,
    identity: str,
    student: nn.Module,
    loss_fn: nn.Module | None,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    position: _Position,
    best: _Best,
    log_path: Path,
    dist: Share,
) -> None:
    """Write ``checkpoint_dir/last`` atomically (rank 0; every rank's RNG states gathered into it):
    state and log into a temporary folder, ``run.json`` (identity, step, size and sha256 of each
    file) last, a rename."""
    rngs = sharding.gather(dist, _rng_states())
    if dist.main:
        state = {
            "model": _cpu_state(student),
            "loss": _cpu_state(loss_fn) if loss_fn is not None else {},
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "position": position.__dict__,
            "best": best.__dict__,
            "rngs": rngs,
        }
        with atomic_dir(checkpoint_dir / LAST) as tmp:
            torch.save(state, tmp / STATE)
            (tmp / CKPT_LOG).write_bytes(log_path.read_bytes() if log_path.is_file() else b"")
            files = {
                name: {"size": (tmp / name).stat().st_size, "sha256": file_fingerprint(tmp / name)}
                for name in (STATE, CKPT_LOG)
            }
            run = {"format": CHECKPOINT_FORMAT, "identity": identity, "step": position.step, "files": files}
            (tmp / RUN_FILE).write_text(json.dumps(run, indent=2) + "\n", encoding="utf-8")
        log.debug("checkpoint at step %d in %s", position.step, checkpoint_dir / LAST)
    sharding.barrier(dist)


def _checkpoint_step(folder: Path, identity: str) -> int | None:
    """The step of the checkpoint in ``folder`` when its ``run.json`` names this run and every file
    it lists has the recorded size and sha256; None otherwise (why is logged). Reads nothing else."""
    run_file = folder / RUN_FILE
    if not run_file.is_file():
        if (folder / STATE).exists():
            log.warning(
                "ignoring checkpoint %s: no %s (incomplete, or of an older version)", folder, RUN_FILE
            )
        return None
    try:
        run = json.loads(run_file.read_text(encoding="utf-8"))
        if run.get("format") != CHECKPOINT_FORMAT or run.get("identity") != identity:
            log.warning("ignoring checkpoint %s: made with another configuration, data or version", folder)
            return None
        for name in (STATE, CKPT_LOG):
            want, path = run["files"][name], folder / name
            if path.stat().st_size != want["size"] or file_fingerprint(path) != want["sha256"]:
                log.warning("ignoring checkpoint %s: %s differs from its %s record", folder, name, RUN_FILE)
                return None
        return int(run["step"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        log.warning("ignoring unreadable checkpoint %s: %s", folder, err)
        return None


def _load_checkpoint(checkpoint_dir: Path | None, identity: str) -> dict[str, Any] | None:
    """The state of the latest complete checkpoint of this run in ``checkpoint_dir``; None when
    there is none.

    ``checkpoint_dir/last`` is tried first, then the complete copies a save killed between its
    renames left under temporary names (``.last.old-*``, ``.last.*.tmp``). Each is checked through its
    ``run.json`` before anything is loaded, then loaded with ``weights_only=True``: a state holding
    anything but tensors and plain containers (a planted pickle) is refused with a warning.
    """
    if checkpoint_dir is None:
        return None
    candidates = [checkpoint_dir / LAST] + [entry for entry, _ in temp_entries(checkpoint_dir / LAST)]
    steps = [_checkpoint_step(folder, identity) for folder in candidates]
    found = [(s, i, f) for i, (s, f) in enumerate(zip(steps, candidates, strict=True)) if s is not None]
    for _, _, folder in sorted(found, key=lambda t: (-t[0], t[1])):
        try:
            state = torch.load(folder / STATE, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - refused or unreadable: the next one, or afresh
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            log.warning("refusing checkpoint %s: not loadable with weights_only=True (%s)", folder, reason)
            continue
        if folder.name != LAST:
            log.info("train: resuming from %s, a complete checkpoint left by an interrupted save", folder)
        state["log"] = (folder / CKPT_LOG).read_bytes()
        return state
    return None


def _optimizer(student: nn.Module, cfg, loss_fn: nn.Module | None = None) -> torch.optim.Optimizer:
    """AdamW over the student's and the loss's own parameters (a feature projection); no weight
    decay on biases and normalisation weights.

    The fused kernel where torch has one for the parameters' device (CPU and CUDA since torch 2.4;
    Hugging Face Trainer's default ``adamw_torch_fused`` too): one pass over each parameter instead
    of a dozen ``_foreach`` passes, 62 -> 9 ms a step for the 2-layer MiniLM student on 2 CPU cores
    (``scripts/bench/profile_encoder.py``). The same update up to the last bits of float arithmetic.
    """
    no_decay = ("bias", "LayerNorm.weight", "layer_norm.weight", "norm.weight", "log_scale")
    named = [(n, p) for n, p in student.named_parameters() if p.requires_grad]
    if loss_fn is not None:
        named += [(f"loss.{n}", p) for n, p in loss_fn.named_parameters() if p.requires_grad]
    params = [
        {"params": [p for n, p in named if not n.endswith(no_decay)], "weight_decay": cfg.weight_decay},
        {"params": [p for n, p in named if n.endswith(no_decay)], "weight_decay": 0.0},
    ]
    try:
        return torch.optim.AdamW(params, lr=cfg.lr, fused=True)
    except (RuntimeError, ValueError):  # a device or dtype without the fused kernel
        return torch.optim.AdamW(params, lr=cfg.lr)


def train_student(
    student: nn.Module,
    loss_fn: nn.Module,
    pools: Pools | Sequence[QueryPool],
    query_text: dict[str, str],
    passage_text: Callable[[list[str]], list[str]],
    cfg,
    runtime: Runtime,
    seed: int,
    log_path: Path,
    checkpoint_dir: Path | None = None,
    resume_key: str | None = None,
    dev: DevSet | None = None,
    tracker: Tracker | None = None,
    dist: Share | None = None,
    features: FeatureSet | None = None,
) -> TrainResult:
    """Train ``student`` in place with ``loss_fn`` on the teacher-scored pools.

    Args:
        student: a :class:`Student`, or a model :func:`~distillrank.students.as_student` wraps
            (BiEncoder, CrossEncoderModel, ColBERT); its weights are trained in place.
        loss_fn: ``loss(student [B, L], teacher [B, L])``; with ``uses_in_batch`` true and a student
            that supports it, called with ``in_batch=InBatch(...)`` too.
        cfg: the ``train`` config node (epochs, max_steps, batch_size, negatives_per_example, lr, …;
            optionally ``checkpoint_minutes`` (minutes between checkpoints, default 10),
            ``checkpoint_every`` (optimizer steps between checkpoints; both 0 = off), ``eval_every``,
            ``dev_measure``, ``early_stopping_patience``, ``dev_batch_size``, ``gather_negatives``).
        pools: the scored candidates (:class:`Pools`; a list of :class:`QueryPool` is converted).
        passage_text: doc ids -> passage texts (one Arrow read per batch).
        runtime: the device the student trains on, its autocast precision, and the forward cap of
            dev re-ranking.
        log_path: JSON-lines log: step, epoch, loss, lr, gradient norm, and ``dev`` metrics at
            evaluation steps.
        checkpoint_dir: where resumable checkpoints go (``<dir>/last``); a complete checkpoint of
            the same run found there is resumed, whatever the checkpoint settings (weights, optimizer,
            scheduler, position, RNGs,
            best-checkpoint state, log).
        resume_key: extra identity of the run (e.g. the stage key); a checkpoint saved under another
            key is ignored.
        dev: the dev set re-ranked every ``eval_every`` steps (None: no dev evaluation).
        tracker: TensorBoard / W&B sink for the same scalars (rank 0's; None: none).
        dist: the data-parallel group (None: a single process).
        features: the texts and teacher embeddings of a feature loss (``loss_fn.uses_features``);
            ``train.feature_batch_size`` of them join every micro-batch. Required by a feature
            loss, ignored by any other.
    """
    dist = dist or WHOLE
    tracker = tracker or Tracker()
    student = as_student(student)
    pools = as_pools(pools)
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed + dist.rank)
    device = runtime.device
    student.to(device).train()
    if cfg.scheduler not in SCHEDULES:
        raise ConfigError(f"train.scheduler={cfg.scheduler!r}; expected one of {sorted(SCHEDULES)}")
    accum = max(int(cfg.grad_accum_steps), 1)
    wants_features = bool(getattr(loss_fn, "uses_features", False))
    if wants_features:
        if features is None:
            raise ConfigError("the loss distils embeddings (a feature term) but no feature texts were given")
        if not student.supports_features:
            raise ConfigError(
                f"the loss distils embeddings, which a {student.kind} student does not have (one vector per "
                "text); use a ranking loss for it, or a bi_encoder / colbert student"
            )
        if hasattr(loss_fn, "setup"):
            loss_fn.setup(student.embedding_dim, features.dim)
        loss_fn.to(device)
    else:
        features = None
    ranking = uses_scores(loss_fn)
    if not ranking:
        pools = Pools.empty()
    feature_batch_size = int(cfg.get("feature_batch_size") or cfg.batch_size)
    n_per_epoch = examples_per_epoch(pools, cfg.negatives_per_example)
    rank_batches = math.ceil(n_per_epoch / cfg.batch_size)
    feat_batches = features.n_batches(feature_batch_size) if features is not None else 0
    micro_per_epoch = max(rank_batches, feat_batches)
    steps_per_epoch = math.ceil(micro_per_epoch / accum)
    total_steps = steps_per_epoch * cfg.epochs
    if cfg.max_steps:
        total_steps = min(total_steps, int(cfg.max_steps))
    if total_steps == 0:
        raise DistillrankError("no training examples: every query lacks a positive or a negative")
    optimizer = _optimizer(student, cfg, loss_fn)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    scheduler = SCHEDULES[cfg.scheduler](optimizer, int(cfg.warmup_ratio * total_steps), total_steps)

    wants_in_batch = bool(getattr(loss_fn, "uses_in_batch", False))
    in_batch = wants_in_batch and student.supports_in_batch
    if wants_in_batch and not in_batch:
        log.warning(
            "the loss asks for in-batch negatives, which a %s student cannot score; it uses each "
            "example's own hard negatives only",
            student.kind,
        )
    gather = bool(cfg.get("gather_negatives", False)) and dist.group > 1
    if gather and not in_batch:
        log.warning("train.gather_negatives: the loss uses no in-batch negatives; nothing is gathered")
        gather = False
    if gather and not student.supports_gather:
        raise ConfigError(
            f"train.gather_negatives gathers passage embeddings over the ranks, which a {student.kind} "
            "student does not have (one vector per passage); use a bi_encoder student or turn it off"
        )

    eval_every = int(cfg.get("eval_every", 0) or 0) if dev is not None and len(dev) else 0
    measure = str(cfg.get("dev_measure", "nDCG@10"))
    patience = int(cfg.get("early_stopping_patience", 0) or 0)
    dev_batch_size = int(cfg.get("dev_batch_size", 64) or 64)

    checkpoint_every = int(cfg.get("checkpoint_every", 0) or 0) if checkpoint_dir is not None else 0
    minutes = cfg.get("checkpoint_minutes", DEFAULT_CHECKPOINT_MINUTES)
    checkpoint_s = 60.0 * float(minutes or 0) if checkpoint_dir is not None else 0.0
    if checkpoint_every < 0 or checkpoint_s < 0:
        raise ConfigError(
            f"train.checkpoint_every={checkpoint_every}, train.checkpoint_minutes={minutes}: "
            "expected >= 0 (0 = that trigger off)"
        )
    identity = _run_identity(cfg, pools, seed, runtime.precision, resume_key)
    step = seen = 0
    first_epoch = first_offset = 0
    loss_value = float("nan")
    best = _Best()
    epoch_rng_override: dict[str, Any] | None = None
    if dist.main:
        log_path.parent.mkdir(parents=True, exist_ok=True)
    log_mode = "w"
    state = _load_checkpoint(checkpoint_dir, identity)
    if state is not None:
        student.load_state_dict(state["model"])
        if state.get("loss"):
            loss_fn.load_state_dict(state["loss"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        pos = _Position(**state["position"])
        best = _Best(**state["best"])
        step, seen, loss_value = pos.step, pos.seen, pos.loss_value
        first_epoch, first_offset, epoch_rng_override = pos.epoch, pos.offset, pos.epoch_rng
        if len(state["rngs"]) == dist.group:
            _set_rng_states(state["rngs"][dist.rank])
        else:  # saved by another number of ranks: the position is global, the dropout RNGs per rank
            torch.manual_seed(int(np.random.SeedSequence([seed, dist.rank, step]).generate_state(1)[0]))
            log.info(
                "train: a checkpoint of %d ranks resumed by %d; dropout RNGs reseeded",
                len(state["rngs"]),
                dist.group,
            )
        if dist.main:  # the log as it was at the checkpoint; later lines dropped
            log_path.write_bytes(state["log"])
        log_mode = "a"
        log.info("train: resuming from step %d", step)

    step_loss = _Step(
        student, loss_fn, query_text, passage_text, runtime, in_batch, wants_features, features, dist
    )
    ddp: DistributedDataParallel | None = None
    if dist.group > 1:  # after loading a checkpoint: DDP broadcasts rank 0's weights
        ddp = DistributedDataParallel(
            step_loss,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=True,  # the pooler; a loss term without its inputs in a micro-batch
        )
    compute_loss = ddp if ddp is not None else step_loss

    def run_dev() -> dict[str, float]:
        """Evaluate, update the best weights; the metrics (every rank gets the same)."""
        metrics = evaluate_dev(student, dev, passage_text, [measure], dist, dev_batch_size, runtime)
        value = metrics[measure]
        best.history.append({"step": step, **metrics})
        if value > best.metric:
            best.metric, best.step, best.metrics, best.bad_evals = value, step, metrics, 0
            best.model = _cpu_state(student)
        else:
            best.bad_evals += 1
        return metrics

    seen_at_start = seen
    start = time.perf_counter()
    last_checkpoint = start
    stopped_early = False
    bar = tqdm(total=total_steps, initial=step, desc="train", unit="step", disable=not dist.main)
    log_file = open(log_path, log_mode, encoding="utf-8") if dist.main else None  # noqa: SIM115
    masks = contextlib.ExitStack()  # the student's dropout, restored when training ends
    try:
        masks.enter_context(for_training(student, cfg.get("dropout_masks", "fast"), device))
        for epoch in range(first_epoch, cfg.epochs):
            if step >= total_steps or stopped_early:
                break
            if epoch_rng_override is not None:
                rng.bit_generator.state = epoch_rng_override
                epoch_rng_override = None
            epoch_rng = copy.deepcopy(rng.bit_generator.state)
            plan = held = None  # the previous epoch's plan and rows, freed before this epoch's are made
            part = (dist.rank, dist.group, cfg.batch_size) if dist.group > 1 else None
            plan = epoch_plan(pools, cfg.negatives_per_example, rng, part)
            # the rows this epoch reads (one process: every row, one pass over the file)
            held = pools.holding(plan.rows_needed(pools, in_batch) if part is not None and not pools.whole else None)
            feature_ids = features.batches(feature_batch_size, rng) if features is not None else []
            step_size = cfg.batch_size * accum
            offset = first_offset if epoch == first_epoch else 0
            # micro-batch j: ranking examples batch j and feature batch j, the shorter stream cycling
            for b in range(offset, micro_per_epoch * cfg.batch_size, step_size):
                if step >= total_steps:
                    break
                optimizer.zero_grad(set_to_none=True)
                first = b // cfg.batch_size
                micro = range(first, min(first + accum, micro_per_epoch))
                # this rank's share of each global micro-batch (its plan holds only that), the
                # global batch's size, whether the share is a stand-in, the feature batch
                micro_batches = [
                    (
                        *plan.batch(held, j, cfg.batch_size),
                        feature_ids[j % len(feature_ids)] if feature_ids else None,
                    )
                    for j in micro
                ]
                # each micro-batch's share of the step: by ranking examples, else by feature texts
                n_step = sum(size if ranking else len(fb) for _, _, size, _, fb in micro_batches)
                local_loss = 0.0
                for k, (shard, shard_queries, _, stand_in, feature_batch) in enumerate(micro_batches):
                    feature_shard = dist.split(list(feature_batch)) if feature_batch is not None else []
                    real = [] if stand_in else shard  # a stand-in backpropagates with weight 0
                    share = (len(real) if ranking else len(feature_shard)) / n_step
                    if ddp is None and not shard and not feature_shard:
                        continue
                    if ddp is not None and not ranking and not feature_shard:  # every rank joins every
                        feature_shard = list(feature_batch)[:1]  # reduction: one text with weight 0
                    positives = held.positives(shard_queries) if in_batch else None
                    # the global batch's passages (every rank's share, in rank order): gathered
                    global_docids = (
                        [d for part_ids in sharding.gather(dist, [d for ex in real for d in ex.docids]) for d in part_ids]
                        if gather
                        else None
                    )
                    last = k == len(micro_batches) - 1
                    with ddp.no_sync() if ddp is not None and not last else contextlib.nullcontext():
                        loss = compute_loss(shard, feature_shard, positives, global_docids)
                        (loss * (share * dist.group if ddp is not None else share)).backward()
                    local_loss += loss.item() * share
                loss_value = sharding.total(dist, local_loss, device)
                if not math.isfinite(loss_value):
                    raise DistillrankError(
                        f"loss is {loss_value} at step {step + 1} (epoch {epoch + 1}, batch of queries "
                        f"{[ex.qid for ex in micro_batches[0][0][:5]]}…); lower train.lr or check the teacher "
                        "scores; the last checkpoint (if any) is kept"
                    )
                grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                optimizer.step()
                scheduler.step()
                step += 1
                seen += n_step
                record: dict[str, Any] = {}
                if step % cfg.log_every == 0 or step == total_steps:
                    record = {
                        "step": step,
                        "epoch": epoch + 1,
                        "loss": loss_value,
                        "lr": scheduler.get_last_lr()[0],
                        "grad_norm": float(grad_norm),
                    }
                    tracker.log(
                        {
                            "train/loss": loss_value,
                            "train/lr": record["lr"],
                            "train/grad_norm": record["grad_norm"],
                        },
                        step,
                    )
                if eval_every and (step % eval_every == 0 or step == total_steps):
                    metrics = run_dev()
                    record = {"step": step, "epoch": epoch + 1, **record, "dev": metrics}
                    tracker.log({f"dev/{k}": v for k, v in metrics.items()}, step)
                    if patience and best.bad_evals >= patience:
                        stopped_early = True
                        log.info(
                            "train: early stop at step %d (%s best %.4f at step %s)",
                            step,
                            measure,
                            best.metric,
                            best.step,
                        )
                if record and log_file is not None:
                    log_file.write(json.dumps(record) + "\n")
                    log_file.flush()
                due = bool(checkpoint_every and step % checkpoint_every == 0)
                if checkpoint_s and not due:  # rank 0's clock decides for every rank
                    late = time.perf_counter() - last_checkpoint >= checkpoint_s if dist.main else False
                    due = sharding.total(dist, float(late), device) > 0 if dist.group > 1 else late
                if due and step < total_steps and not stopped_early:
                    assert checkpoint_dir is not None
                    position = _Position(step, epoch, b + step_size, seen, loss_value, epoch_rng)
                    _save_checkpoint(
                        checkpoint_dir,
                        identity,
                        student,
                        loss_fn,
                        optimizer,
                        scheduler,
                        position,
                        best,
                        log_path,
                        dist,
                    )
                    last_checkpoint = time.perf_counter()
                rate = (seen - seen_at_start) / max(time.perf_counter() - start, 1e-9)
                bar.set_postfix(loss=f"{loss_value:.4f}", ex_s=f"{rate:.1f}")
                bar.update(1)
                if stopped_early:
                    break
    finally:
        masks.close()
        bar.close()
        if log_file is not None:
            log_file.close()
    if best.model is not None:
        student.load_state_dict(best.model)  # the exported model is the best dev one
    elapsed = max(time.perf_counter() - start, 1e-9)
    rate = (seen - seen_at_start) / elapsed
    return TrainResult(
        steps=step,
        examples=seen,
        final_loss=loss_value,
        examples_per_s=rate,
        best_step=best.step,
        best_dev=best.metrics,
        dev_history=list(best.history),
        stopped_early=stopped_early,
        in_batch=in_batch,
    )
