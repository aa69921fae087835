"""Distillation losses over [batch × list] scores (config group ``loss/``).

Every loss is an ``nn.Module`` with ``forward(student [B, L], teacher [B, L], labels [B, L] | None)``
returning a scalar; column 0 holds the positive where a loss needs one.
"""

from distillrank.losses.margin_mse import MarginMSELoss

__all__ = ["MarginMSELoss"]
