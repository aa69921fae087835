"""``distillrank run``: every stage in order, each skipped when its manifest is current."""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from distillrank.stages import evaluate, mine, queries, score, train
from distillrank.workspace import Manifest, locked

log = logging.getLogger(__name__)

STAGES = (mine, score, train, evaluate)
SCORING = (mine, score)  # skipped when the loss learns from embeddings only (loss=feature)


def run(cfg: DictConfig) -> dict[str, Manifest]:
    """Run mine, score, train and evaluate (after the ``queries`` stage when synthetic queries are on).

    A loss of feature terms only (``loss=feature``) trains on the collection's texts: mine and
    score are skipped. A stage's key chains the keys of the stages before it, so a changed config reruns the first
    stage it affects and every later one; ``force=true`` reruns all.

    The whole run holds the experiment's lock (besides each stage's): a second ``run`` of the same
    experiment waits until this one is done, so it never replaces a stage of this run's chain
    between two others.
    """
    stages = ((queries,) if queries.enabled(cfg) else ()) + STAGES
    if not train.needs_scores(cfg):
        stages = tuple(s for s in stages if s not in SCORING)
    with locked(Path(cfg.workspace) / str(cfg.experiment), "the experiment"):
        return {stage.STAGE: stage.run(cfg) for stage in stages}
