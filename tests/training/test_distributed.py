"""Data parallelism on CPU: two gloo processes end with identical weights, equal to one process
training on the same global batches (gradients summed over the ranks)."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from omegaconf import OmegaConf

from distillrank.losses import MarginMSELoss
from distillrank.runtime import Runtime
from distillrank.sharding import WHOLE, Share
from distillrank.training.loop import train_student

from .test_loop import PASSAGES, QUERIES, _pools, _student

CFG = {
    "epochs": 1,
    "max_steps": 4,
    "batch_size": 4,  # the global micro-batch: 2 examples per rank
    "grad_accum_steps": 1,
    "negatives_per_example": 1,
    "lr": 1e-3,
    "weight_decay": 0.01,
    "warmup_ratio": 0.25,
    "scheduler": "linear",
    "max_grad_norm": 1.0,
    "log_every": 1,
}


def _train(model: Path, out: Path, group: Share) -> dict[str, torch.Tensor]:
    torch.set_num_threads(1)
    student = _student(model)
    train_student(
        student,
        MarginMSELoss(),
        _pools(),
        QUERIES,
        lambda ids: [PASSAGES[d] for d in ids],
        OmegaConf.create(CFG),
        Runtime(),
        seed=3,
        log_path=out / "log.jsonl",
        dist=group,
    )
    return {k: v.detach().clone() for k, v in student.state_dict().items()}


def _worker(rank: int, world: int, model: Path, work: Path) -> None:
    dist.init_process_group("gloo", init_method=f"file://{work / 'rendezvous'}", rank=rank, world_size=world)
    try:
        state = _train(model, work, Share.rank_of(rank, world))
        torch.save(state, work / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_equal_one_process(tiny_bi_encoder, tmp_path):
    work = tmp_path / "ddp"
    work.mkdir()
    mp.spawn(_worker, args=(2, tiny_bi_encoder, work), nprocs=2, join=True)
    rank0 = torch.load(work / "rank0.pt")
    rank1 = torch.load(work / "rank1.pt")
    single = _train(tiny_bi_encoder, tmp_path, WHOLE)
    untrained = _student(tiny_bi_encoder).state_dict()
    assert any(not torch.allclose(single[k], untrained[k]) for k in single)
    for name in single:
        torch.testing.assert_close(rank0[name], rank1[name], atol=0, rtol=0, msg=name)
        torch.testing.assert_close(rank0[name], single[name], atol=1e-5, rtol=1e-4, msg=name)
    assert (work / "log.jsonl").read_text().count("\n") == 4  # rank 0 alone writes the log
