"""DistributedDataParallel on CPU (two gloo processes): gradient accumulation with an empty share,
in-batch negatives gathered over the ranks, and checkpoints resumed under another world size all
end at the weights of one process on the same global batches."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from omegaconf import OmegaConf
from torch import nn

from distillrank.losses import MarginMSELoss
from distillrank.losses.infonce import InfoNCELoss
from distillrank.runtime import Runtime
from distillrank.sharding import WHOLE, Share
from distillrank.training.batching import pool_layout
from distillrank.training.loop import train_student

from .test_loop import PASSAGES, QUERIES, _pools, _student

BASE = {
    "epochs": 2,
    "max_steps": None,
    "batch_size": 4,
    "grad_accum_steps": 1,
    "negatives_per_example": 1,
    "lr": 1e-3,
    "weight_decay": 0.01,
    "warmup_ratio": 0.2,
    "scheduler": "linear",
    "max_grad_norm": 1.0,
    "log_every": 1,
    "checkpoint_every": 0,
    "checkpoint_minutes": 0,
}
# 6 queries x 3 negatives, n=2: 6 examples; batch 5 and 2 micro-batches a step: [5, 1], so rank 0's
# share of the second is empty (it backpropagates one example with weight 0); 3 epochs = 3 steps
ACCUM = {"negatives_per_example": 2, "batch_size": 5, "grad_accum_steps": 2, "epochs": 3}


class KillAfter(nn.Module):
    """A loss that raises KeyboardInterrupt on call ``n + 1`` (every rank at the same step)."""

    def __init__(self, inner: nn.Module, n: int | None) -> None:
        super().__init__()
        self.inner, self.n, self.calls = inner, n, 0
        self.uses_in_batch = getattr(inner, "uses_in_batch", False)

    def forward(self, *args, **kwargs) -> torch.Tensor:
        self.calls += 1
        if self.n is not None and self.calls > self.n:
            raise KeyboardInterrupt(f"killed at call {self.calls}")
        return self.inner(*args, **kwargs)


def _score_file(path: Path) -> Path:
    """The test pools as a ``scores.parquet`` (positives label 1), the queries' rows interleaved
    (every query's first row, then every second row, ...: each query's in its order)."""
    per_query = [
        [(pool.qid, d, label, score) for label, group in ((1, pool.positives), (0, pool.negatives)) for d, score in group]
        for pool in _pools()
    ]
    rows = [row for k in range(max(map(len, per_query))) for q in per_query if k < len(q) for row in [q[k]]]
    qid, docid, label, teacher = zip(*rows, strict=True)
    pq.write_table(pa.table({"qid": qid, "docid": docid, "label": label, "teacher": teacher}), path)
    return path


def _train(model: Path, work: Path, spec: dict, group: Share) -> dict[str, torch.Tensor] | None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    student = _student(model)
    inner = InfoNCELoss(temperature=0.5) if spec.get("loss") == "infonce" else MarginMSELoss()
    # "layout": the train stage's pools, no rows held until each epoch reads this rank's from the file
    pools = pool_layout(_score_file(work / f"scores-{group.rank}.parquet"))[0] if spec.get("layout") else _pools()
    try:
        train_student(
            student,
            KillAfter(inner, spec.get("kill_after")),
            pools,
            QUERIES,
            lambda ids: [PASSAGES[d] for d in ids],
            OmegaConf.create({**BASE, **spec.get("cfg", {})}),
            Runtime(),
            seed=3,
            log_path=work / "log.jsonl",
            checkpoint_dir=work / "checkpoints",
            dist=group,
        )
    except KeyboardInterrupt:
        return None
    return {k: v.detach().clone() for k, v in student.state_dict().items()}


def _worker(rank: int, world: int, model: Path, work: Path, spec: dict, rendezvous: Path) -> None:
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world)
    try:
        state = _train(model, work, spec, Share.rank_of(rank, world))
        torch.save(state if state is not None else {}, work / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _run(model: Path, work: Path, spec: dict, world: int) -> dict[str, torch.Tensor] | None:
    """Train with ``world`` processes (1: this one); the weights, or None when killed."""
    work.mkdir(parents=True, exist_ok=True)
    if world == 1:
        return _train(model, work, spec, WHOLE)
    rendezvous = work / f"rendezvous-{len(list(work.glob('rendezvous-*')))}"
    mp.spawn(_worker, args=(world, model, work, spec, rendezvous), nprocs=world, join=True)
    states = [torch.load(work / f"rank{r}.pt") for r in range(world)]
    for name in states[0]:  # every rank holds the same weights
        torch.testing.assert_close(states[1][name], states[0][name], atol=0, rtol=0, msg=name)
    return states[0] or None


def _assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-5, rtol=0, msg=name)


def _differs(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return any(not torch.allclose(a[k], b[k], atol=1e-5, rtol=0) for k in a)


def test_accumulation_with_an_empty_share_equals_one_process(tiny_bi_encoder, tmp_path):
    spec = {"cfg": ACCUM}
    two = _run(tiny_bi_encoder, tmp_path / "two", spec, 2)
    one = _run(tiny_bi_encoder, tmp_path / "one", spec, 1)
    assert _differs(one, dict(_student(tiny_bi_encoder).state_dict()))  # it trained
    _assert_close(two, one)
    assert (tmp_path / "two" / "log.jsonl").read_text().count("\n") == 3


def test_gathered_negatives_span_the_global_batch(tiny_bi_encoder, tmp_path):
    spec = {"loss": "infonce", "cfg": {"batch_size": 6, "max_steps": 4}}
    one = _run(tiny_bi_encoder, tmp_path / "one", spec, 1)
    gathered = _run(
        tiny_bi_encoder, tmp_path / "gathered", {**spec, "cfg": {**spec["cfg"], "gather_negatives": True}}, 2
    )
    _assert_close(gathered, one)
    # without gathering, each rank's in-batch negatives are its own share's: another objective
    assert _differs(_run(tiny_bi_encoder, tmp_path / "local", spec, 2), one)


@pytest.mark.parametrize("spec", [{"cfg": ACCUM}, {"loss": "infonce", "cfg": {"batch_size": 6, "max_steps": 4, "gather_negatives": True}}])
def test_ranks_reading_their_rows_from_the_score_file_equal_one_process_holding_them(tiny_bi_encoder, tmp_path, spec):
    """Each rank holds only the rows of its share of each epoch (read from scores.parquet), with a
    stand-in where its share is empty (ACCUM) and the global batch's passages gathered for in-batch
    negatives: the weights of one process holding every row."""
    one = _run(tiny_bi_encoder, tmp_path / "one", spec, 1)
    assert _differs(one, dict(_student(tiny_bi_encoder).state_dict()))  # it trained
    layout_one = _run(tiny_bi_encoder, tmp_path / "layout-one", {**spec, "layout": True}, 1)
    for name in one:  # one process: the same examples in the same order, the same arithmetic
        torch.testing.assert_close(layout_one[name], one[name], atol=0, rtol=0, msg=name)
    _assert_close(_run(tiny_bi_encoder, tmp_path / "layout-two", {**spec, "layout": True}, 2), one)


@pytest.mark.parametrize(("killed_world", "resumed_world", "layout"), [(2, 1, False), (1, 2, False), (2, 1, True)])
def test_resume_under_another_world_size(tiny_bi_encoder, tmp_path, killed_world, resumed_world, layout):
    # 18 examples, batch 4: 5 steps an epoch, 10 in all; a checkpoint every 2 steps. layout: the
    # pools read from scores.parquet by each rank (the run's identity is the file's, on any world)
    spec = {"cfg": {"checkpoint_every": 2}, "layout": layout}
    whole = _run(tiny_bi_encoder, tmp_path / "whole", spec, 1)
    work = tmp_path / "killed"
    assert (
        _run(tiny_bi_encoder, work, {**spec, "kill_after": 5}, killed_world) is None
    )  # a checkpoint at step 4
    resumed = _run(tiny_bi_encoder, work, spec, resumed_world)
    _assert_close(resumed, whole)
    assert (work / "log.jsonl").read_text().count("\n") == 10  # steps 1-4 kept, 5-10 written on resume
