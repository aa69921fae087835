"""``distillrank run``: every stage in order, each skipped when its manifest is current."""

from __future__ import annotations

import logging

from omegaconf import DictConfig

from distillrank.stages import evaluate, mine, queries, score, train
from distillrank.workspace import Manifest

log = logging.getLogger(__name__)

STAGES = (mine, score, train, evaluate)
SCORING = (mine, score)  # skipped when the loss learns from embeddings only (loss=feature)


def run(cfg: DictConfig) -> dict[str, Manifest]:
    """Run mine, score, train and evaluate (after the ``queries`` stage when synthetic queries are on).

    A loss of feature terms only (``loss=feature``) trains on the collection's texts: mine and
    score are skipped. A stage's key chains the keys of the stages before it, so a changed config reruns the first
    stage it affects and every later one; ``force=true`` reruns all.
    """
    stages = ((queries,) if queries.enabled(cfg) else ()) + STAGES
    if not train.needs_scores(cfg):
        stages = tuple(s for s in stages if s not in SCORING)
    return {stage.STAGE: stage.run(cfg) for stage in stages}
