"""WeightedSum: Hydra recursive instantiation of conf/loss/kl_infonce.yaml, hand-weighted sums."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from distillrank.config import conf_dir
from distillrank.losses import InfoNCELoss, KLDivergenceLoss, ListNetLoss, MarginMSELoss, WeightedSum


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(14)
    return torch.randn(4, 8, generator=gen), torch.randn(4, 8, generator=gen)


def test_kl_infonce_config_builds_the_weighted_sum() -> None:
    loss = instantiate(OmegaConf.load(conf_dir() / "loss" / "kl_infonce.yaml"))
    assert isinstance(loss, WeightedSum)
    assert set(loss.terms) == {"kl", "infonce"}
    assert isinstance(loss.terms["kl"], KLDivergenceLoss)
    assert loss.terms["kl"].teacher_temperature == 0.3
    assert loss.terms["kl"].student_temperature == 0.05
    assert isinstance(loss.terms["infonce"], InfoNCELoss)
    assert loss.terms["infonce"].temperature == 0.01
    assert loss.weights == {"kl": 1.0, "infonce": 0.1}
    student, teacher = _inputs()
    expected = 1.0 * KLDivergenceLoss(teacher_temperature=0.3, student_temperature=0.05)(
        student, teacher
    ) + 0.1 * InfoNCELoss(temperature=0.01)(student, teacher)
    torch.testing.assert_close(loss(student, teacher), expected)


def test_plain_dicts_and_bare_modules() -> None:
    student, teacher = _inputs()
    loss = WeightedSum({"mse": {"loss": MarginMSELoss(), "weight": 2.0}, "listnet": ListNetLoss()})
    expected = 2.0 * MarginMSELoss()(student, teacher) + ListNetLoss()(student, teacher)
    torch.testing.assert_close(loss(student, teacher), expected)


def test_hand_computed_weights() -> None:
    # MarginMSE on [[3, 1]] vs [[5, 4]] is (2 - 1)^2 = 1; two copies weighted 0.25 and 3 sum to 3.25.
    student = torch.tensor([[3.0, 1.0]])
    teacher = torch.tensor([[5.0, 4.0]])
    terms = {"a": {"loss": MarginMSELoss(), "weight": 0.25}, "b": {"loss": MarginMSELoss(), "weight": 3}}
    loss = WeightedSum(terms)
    assert loss(student, teacher).item() == pytest.approx(3.25)


def test_gradient_is_the_weighted_sum_of_gradients() -> None:
    student, teacher = _inputs()
    parts = {"kl": (KLDivergenceLoss(0.3, 0.05), 1.0), "infonce": (InfoNCELoss(0.01), 0.1)}
    leaf = student.clone().requires_grad_(True)
    WeightedSum({k: {"loss": m, "weight": w} for k, (m, w) in parts.items()})(leaf, teacher).backward()
    expected = torch.zeros_like(student)
    for module, weight in parts.values():
        single = student.clone().requires_grad_(True)
        (weight * module(single, teacher)).backward()
        expected += single.grad
    torch.testing.assert_close(leaf.grad, expected)


def test_unbuilt_or_empty_terms_raise() -> None:
    with pytest.raises(ValueError, match="at least one"):
        WeightedSum({})
    with pytest.raises(ValueError, match="nn.Module"):
        WeightedSum({"kl": {"loss": {"_target_": "distillrank.losses.KLDivergenceLoss"}, "weight": 1.0}})
    with pytest.raises(ValueError, match="finite"):
        WeightedSum({"kl": {"loss": KLDivergenceLoss(), "weight": float("nan")}})
    with pytest.raises(ValueError, match="mapping"):
        WeightedSum({"kl": 1.0})
