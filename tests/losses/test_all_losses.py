"""Properties every loss shares (every ``nn.Module`` of :mod:`distillrank.losses`, found by walking
the package): scalar output, finite non-zero gradients on [B, 2] and [B, 8], ValueError on bad
shapes, a config in conf/loss/; and every conf/loss/*.yaml instantiating to a working loss."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

import distillrank.losses
from distillrank.config import conf_dir
from distillrank.losses import (
    Features,
    InfoNCELoss,
    KLDivergenceLoss,
    LambdaLoss,
    ListMLELoss,
    MarginMSELoss,
    RankNetLoss,
    WeightedSum,
    uses_scores,
)


def _loss_classes() -> list[type[nn.Module]]:
    """Every ``nn.Module`` defined in a module of :mod:`distillrank.losses`: a new loss is covered
    by every test below without editing this file."""
    found = []
    for info in pkgutil.iter_modules(distillrank.losses.__path__):
        module = importlib.import_module(f"{distillrank.losses.__name__}.{info.name}")
        found += [
            obj
            for obj in vars(module).values()
            if inspect.isclass(obj) and issubclass(obj, nn.Module) and obj.__module__ == module.__name__
        ]
    return sorted(found, key=lambda cls: cls.__name__)


LOSS_CLASSES = _loss_classes()
# how to build the losses that have no default for every argument (a new one fails here until added)
BUILD = {WeightedSum: lambda: WeightedSum({"kl": {"loss": KLDivergenceLoss(), "weight": 1.0}, "nce": InfoNCELoss()})}


def _build(cls: type[nn.Module]) -> nn.Module:
    return BUILD[cls]() if cls in BUILD else cls()


# losses of teacher scores, each with its defaults (a pure feature loss learns from embeddings
# instead: tests/losses/test_feature.py, and the config test below), and configured variants
LOSSES: dict[str, nn.Module] = {
    **{cls.__name__: loss for cls in LOSS_CLASSES if uses_scores(loss := _build(cls))},
    "kl_tempered": KLDivergenceLoss(teacher_temperature=0.3, student_temperature=0.05),
    "infonce_margin": InfoNCELoss(temperature=0.1, false_negative_margin=0.5),
    "ranknet_rank": RankNetLoss(weighting="rank"),
    "ranknet_score_diff": RankNetLoss(weighting="score_diff"),
    "listmle_top1": ListMLELoss(top_k=1),
    "lambdaloss_k1": LambdaLoss(k=1),
    "margin_mse_learned_scale": MarginMSELoss(learn_scale=True),
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


def test_the_loss_list_is_the_package():
    names = {cls.__name__ for cls in LOSS_CLASSES}
    assert {"MarginMSELoss", "KLDivergenceLoss", "FeatureDistillationLoss", "WeightedSum"} <= names
    assert {"MarginMSELoss", "KLDivergenceLoss", "InfoNCELoss", "WeightedSum"} <= set(LOSSES)


def _targets(node) -> set[str]:
    """The ``_target_`` values at any depth of a loaded YAML."""
    if isinstance(node, dict):
        own = {node["_target_"]} if "_target_" in node else set()
        return own.union(*(_targets(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(_targets(v) for v in node))
    return set()


def test_every_loss_has_a_config() -> None:
    targets = set().union(*(_targets(OmegaConf.to_container(OmegaConf.load(path))) for path in CONFIGS))
    # a config names the class by its module (distillrank.losses.<module>.<Class>: a new loss is its
    # module and its YAML, CONTRIBUTING.md) or by the package's re-export (distillrank.losses.<Class>)
    missing = [
        cls.__name__
        for cls in LOSS_CLASSES
        if not {f"{cls.__module__}.{cls.__name__}", f"distillrank.losses.{cls.__name__}"} & targets
        or f"distillrank.losses.{cls.__name__}" in targets and getattr(distillrank.losses, cls.__name__, None) is not cls
    ]
    assert not missing, f"no conf/loss/*.yaml builds {missing}"


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
