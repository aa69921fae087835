"""Properties every loss shares: scalar output, finite non-zero gradients on [B, 2] and [B, 8],
ValueError on bad shapes; and every conf/loss/*.yaml instantiating to a working loss."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from distillrank.config import conf_dir
from distillrank.losses import (
    ApproxNDCGLoss,
    Features,
    InfoNCELoss,
    KLDivergenceLoss,
    LambdaLoss,
    ListMLELoss,
    ListNetLoss,
    PLDLoss,
    RankNetLoss,
    WeightedSum,
)

LOSSES: dict[str, nn.Module] = {
    "kl": KLDivergenceLoss(),
    "kl_tempered": KLDivergenceLoss(teacher_temperature=0.3, student_temperature=0.05),
    "infonce": InfoNCELoss(),
    "infonce_margin": InfoNCELoss(temperature=0.1, false_negative_margin=0.5),
    "ranknet": RankNetLoss(),
    "ranknet_rank": RankNetLoss(weighting="rank"),
    "ranknet_score_diff": RankNetLoss(weighting="score_diff"),
    "listnet": ListNetLoss(),
    "listmle": ListMLELoss(),
    "listmle_top1": ListMLELoss(top_k=1),
    "pld": PLDLoss(),
    "lambdaloss": LambdaLoss(),
    "lambdaloss_k1": LambdaLoss(k=1),
    "approx_ndcg": ApproxNDCGLoss(),
    "weighted_sum": WeightedSum({"kl": {"loss": KLDivergenceLoss(), "weight": 1.0}, "nce": InfoNCELoss()}),
}
CONFIGS = sorted((conf_dir() / "loss").glob("*.yaml"))


@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize("list_size", [2, 8])
def test_finite_scalar_and_nonzero_gradient(name: str, list_size: int) -> None:
    gen = torch.Generator().manual_seed(list_size)
    student = torch.randn(5, list_size, generator=gen, requires_grad=True)
    teacher = torch.randn(5, list_size, generator=gen)
    loss = LOSSES[name](student, teacher)
    assert loss.dim() == 0
    assert loss.dtype == torch.float32
    assert torch.isfinite(loss)
    loss.backward()
    assert student.grad is not None
    assert torch.isfinite(student.grad).all()
    assert student.grad.abs().sum() > 0


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_teacher_dtype_is_cast(name: str) -> None:
    gen = torch.Generator().manual_seed(15)
    student = torch.randn(3, 4, generator=gen)
    teacher = torch.randn(3, 4, generator=gen, dtype=torch.float64)
    loss = LOSSES[name]
    value = loss(student, teacher)
    assert value.dtype == torch.float32
    torch.testing.assert_close(value, loss(student, teacher.float()))


@pytest.mark.parametrize("name", sorted(LOSSES))
@pytest.mark.parametrize(
    ("student_shape", "teacher_shape"),
    [
        ((2, 3), (2, 4)),  # different list lengths
        ((3, 3), (2, 3)),  # different batch sizes
        ((2, 1), (2, 1)),  # a single item
        ((4,), (4,)),  # not 2-D
        ((2, 3, 1), (2, 3, 1)),  # 3-D
    ],
)
def test_bad_shapes_raise(name: str, student_shape: tuple[int, ...], teacher_shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=r"\[B, "):
        LOSSES[name](torch.zeros(student_shape), torch.zeros(teacher_shape))


def test_every_loss_has_a_config() -> None:
    names = {path.stem for path in CONFIGS}
    assert {
        "margin_mse",
        "kl",
        "infonce",
        "ranknet",
        "listnet",
        "listmle",
        "pld",
        "lambdaloss",
        "approx_ndcg",
        "kl_infonce",
    } <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_instantiates_to_a_finite_scalar(path: Path) -> None:
    loss = instantiate(OmegaConf.load(path))
    assert isinstance(loss, nn.Module)
    gen = torch.Generator().manual_seed(16)
    student = torch.randn(4, 8, generator=gen, requires_grad=True)
    teacher = torch.randn(4, 8, generator=gen)
    if getattr(loss, "uses_features", False):  # a feature term: embeddings too (conf/loss/feature.yaml, ...)
        loss.setup(8, 6)
        embeddings = torch.randn(5, 8, generator=gen, requires_grad=True)
        value = loss(student, teacher, features=Features(embeddings, torch.randn(5, 6, generator=gen)))
        value.backward()
        assert torch.isfinite(embeddings.grad).all() and embeddings.grad.abs().sum() > 0
        return
    value = loss(student, teacher)
    assert value.dim() == 0
    assert torch.isfinite(value)
    value.backward()
    assert torch.isfinite(student.grad).all()
