"""Distillation losses over [batch × list] scores (config group ``loss/``).

Every loss is an ``nn.Module`` with ``forward(student [B, L], teacher [B, L], labels [B, L] | None)``
returning a scalar; column 0 holds the positive where a loss needs one.
"""

from distillrank.losses.approx_ndcg import ApproxNDCGLoss
from distillrank.losses.combined import WeightedSum
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
    "InfoNCELoss",
    "KLDivergenceLoss",
    "LambdaLoss",
    "ListMLELoss",
    "ListNetLoss",
    "MarginMSELoss",
    "PLDLoss",
    "RankNetLoss",
    "WeightedSum",
]
