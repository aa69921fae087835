"""Distillation losses over [batch × list] scores (config group ``loss/``).

Every loss is an ``nn.Module`` with ``forward(student [B, L], teacher [B, L])`` returning a scalar;
column 0 holds the positive where a loss needs one. The feature loss
(:class:`FeatureDistillationLoss`) learns from embeddings instead (``features=``), alone or in a
:class:`WeightedSum` with a ranking loss.
"""

from distillrank.losses.approx_ndcg import ApproxNDCGLoss
from distillrank.losses.combined import WeightedSum, uses_scores
from distillrank.losses.feature import FeatureDistillationLoss, Features
from distillrank.losses.infonce import InfoNCELoss
from distillrank.losses.kl import KLDivergenceLoss
from distillrank.losses.lambdaloss import LambdaLoss
from distillrank.losses.listmle import ListMLELoss
from distillrank.losses.listnet import ListNetLoss
from distillrank.losses.margin_mse import MarginMSELoss
from distillrank.losses.pld import PLDLoss
from distillrank.losses.ranknet import RankNetLoss

__all__ = [
    "ApproxNDCGLoss",
    "FeatureDistillationLoss",
    "Features",
    "InfoNCELoss",
    "KLDivergenceLoss",
    "LambdaLoss",
    "ListMLELoss",
    "ListNetLoss",
    "MarginMSELoss",
    "PLDLoss",
    "RankNetLoss",
    "WeightedSum",
    "uses_scores",
]
