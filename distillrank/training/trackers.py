"""Experiment trackers for the training loop: ``train.logger: none | tensorboard | wandb``.

Every tracker takes scalar dictionaries per optimizer step (``train/loss``, ``train/lr``,
``train/grad_norm``, ``dev/nDCG@10``, …). TensorBoard event files go to ``<stage>/tensorboard``;
Weights & Biases is used only when the ``wandb`` package is installed (its project comes from
``WANDB_PROJECT``, default ``distillrank``, the run name from the experiment).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from distillrank.errors import ConfigError

LOGGERS = ("none", "tensorboard", "wandb")


class Tracker:
    """The no-op tracker (``train.logger=none``)."""

    def log(self, metrics: dict[str, float], step: int) -> None:
        """Record scalars at an optimizer step."""

    def close(self) -> None:
        """Flush and release."""


class TensorBoardTracker(Tracker):
    def __init__(self, log_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(log_dir))

    def log(self, metrics: dict[str, float], step: int) -> None:
        for name, value in metrics.items():
            self.writer.add_scalar(name, value, step)

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()


class WandbTracker(Tracker):
    def __init__(self, name: str, config: dict[str, Any], log_dir: Path) -> None:
        import os

        import wandb

        log_dir.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "distillrank"), name=name, config=config, dir=str(log_dir)
        )

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(metrics, step=step)

    def close(self) -> None:
        self.run.finish()


def check_logger(kind: str) -> None:
    """Fail before training when ``train.logger`` is unknown or its package is missing."""
    if kind not in LOGGERS:
        raise ConfigError(f"train.logger={kind!r}; expected one of {', '.join(LOGGERS)}")
    if kind == "tensorboard" and importlib.util.find_spec("tensorboard") is None:
        raise ConfigError("train.logger=tensorboard but the tensorboard package is not installed")
    if kind == "wandb" and importlib.util.find_spec("wandb") is None:
        raise ConfigError(
            "train.logger=wandb but the wandb package is not installed (pip install wandb), "
            "or choose train.logger=tensorboard / none"
        )


def make_tracker(kind: str, log_dir: Path, name: str = "distillrank", config: dict | None = None) -> Tracker:
    """The tracker for ``train.logger`` (checked by :func:`check_logger`)."""
    check_logger(kind)
    if kind == "tensorboard":
        return TensorBoardTracker(log_dir)
    if kind == "wandb":
        return WandbTracker(name, config or {}, log_dir)
    return Tracker()
