"""``distillrank run``: every stage in order, each skipped when its manifest is current."""

from __future__ import annotations

import logging

from omegaconf import DictConfig

from distillrank.stages import evaluate, mine, queries, score, train
from distillrank.workspace import Manifest

log = logging.getLogger(__name__)

STAGES = (mine, score, train, evaluate)


def run(cfg: DictConfig) -> dict[str, Manifest]:
    """Run mine, score, train and evaluate (after the ``queries`` stage when synthetic queries are on).

    A stage's key chains the keys of the stages before it, so a changed config reruns the first
    stage it affects and every later one; ``force=true`` reruns all.
    """
    stages = ((queries,) if queries.enabled(cfg) else ()) + STAGES
    return {stage.STAGE: stage.run(cfg) for stage in stages}
