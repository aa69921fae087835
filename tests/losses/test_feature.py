"""FeatureDistillationLoss: the formula, the projection, and its routing inside WeightedSum."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from distillrank.config import conf_dir
from distillrank.losses import FeatureDistillationLoss, Features, MarginMSELoss, WeightedSum, uses_scores


def _features(d_s: int = 8, d_t: int = 8, n: int = 5) -> Features:
    gen = torch.Generator().manual_seed(3)
    return Features(torch.randn(n, d_s, generator=gen), torch.randn(n, d_t, generator=gen))


def test_formula_at_equal_widths() -> None:
    f = _features()
    loss = FeatureDistillationLoss(mse_weight=2.0, cosine_weight=0.5)
    loss.setup(8, 8)
    assert loss.projection is None
    expected = 2.0 * ((f.student - f.teacher) ** 2).mean() + 0.5 * (
        1 - torch.nn.functional.cosine_similarity(f.student, f.teacher, dim=-1)
    ).mean()
    torch.testing.assert_close(loss(features=f), expected)


def test_identical_embeddings_cost_nothing() -> None:
    f = _features()
    loss = FeatureDistillationLoss()
    loss.setup(8, 8)
    assert loss(features=Features(f.teacher.clone(), f.teacher)).item() == pytest.approx(0.0, abs=1e-6)


def test_projection_maps_widths_and_learns() -> None:
    f = _features(d_s=4, d_t=6, n=32)
    loss = FeatureDistillationLoss(mse_weight=1.0, cosine_weight=0.0)
    loss.setup(4, 6)
    assert isinstance(loss.projection, torch.nn.Linear)
    assert (loss.projection.in_features, loss.projection.out_features) == (4, 6)
    target = f.student @ torch.randn(4, 6, generator=torch.Generator().manual_seed(1))  # a linear map exists
    opt = torch.optim.Adam(loss.parameters(), lr=0.05)
    first = None
    for _ in range(300):
        opt.zero_grad()
        value = loss(features=Features(f.student, target))
        first = value.item() if first is None else first
        value.backward()
        opt.step()
    assert value.item() < 0.01 * first


def test_always_starts_at_the_identity_and_never_refuses_other_widths() -> None:
    f = _features()
    always = FeatureDistillationLoss(projection="always")
    always.setup(8, 8)
    plain = FeatureDistillationLoss()
    plain.setup(8, 8)
    torch.testing.assert_close(always(features=f), plain(features=f))
    with pytest.raises(ValueError, match="projection=auto"):
        FeatureDistillationLoss(projection="never").setup(4, 6)
    with pytest.raises(ValueError, match="projection="):
        FeatureDistillationLoss(projection="sometimes")
    with pytest.raises(ValueError, match="not both 0"):
        FeatureDistillationLoss(mse_weight=0.0, cosine_weight=0.0)


def test_without_features_the_loss_is_zero() -> None:
    assert FeatureDistillationLoss()(torch.zeros(2, 3), torch.zeros(2, 3)).item() == 0.0


def test_weighted_sum_routes_scores_and_features() -> None:
    gen = torch.Generator().manual_seed(5)
    student, teacher = torch.randn(4, 3, generator=gen), torch.randn(4, 3, generator=gen)
    f = _features()
    loss = instantiate(OmegaConf.load(conf_dir() / "loss" / "margin_mse_feature.yaml"))
    assert isinstance(loss, WeightedSum) and loss.uses_features and loss.uses_scores
    loss.setup(8, 8)
    feature = FeatureDistillationLoss()
    feature.setup(8, 8)
    both = loss(student, teacher, features=f)
    torch.testing.assert_close(both, MarginMSELoss()(student, teacher) + feature(features=f))
    # a step with only ranking scores: the feature term is skipped; only features: the ranking term is
    torch.testing.assert_close(loss(student, teacher), MarginMSELoss()(student, teacher))
    torch.testing.assert_close(loss(None, None, features=f), feature(features=f))
    with pytest.raises(ValueError, match="neither scores"):
        loss(None, None)


def test_uses_scores_tells_feature_only_losses_apart() -> None:
    assert not uses_scores(instantiate(OmegaConf.load(conf_dir() / "loss" / "feature.yaml")))
    assert uses_scores(instantiate(OmegaConf.load(conf_dir() / "loss" / "margin_mse_feature.yaml")))
    assert uses_scores(MarginMSELoss())
    assert not uses_scores(WeightedSum({"f": FeatureDistillationLoss()}))
