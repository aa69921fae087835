"""The pipeline: every stage in order (``distillrank run``), each skipped when its manifest is current.

:data:`STAGES` is the one ordered list of stages; the report (:mod:`distillrank.reporting`) reads
it to find and order an experiment's stage folders. Adding a stage: its module in
``distillrank/stages/``, its place in :data:`STAGES`, its key in :mod:`distillrank.keys`, and its
names in :mod:`distillrank.artifacts`.
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from distillrank.builders import components
from distillrank.stages import evaluate, mine, queries, score, train
from distillrank.workspace import Manifest, locked

log = logging.getLogger(__name__)

STAGES = (queries, mine, score, train, evaluate)  # in the order they run
STAGE_NAMES = tuple(stage.STAGE for stage in STAGES)
SCORING = (mine, score)  # skipped when the loss learns from embeddings only (loss=feature)
# the stages before training: a sweep job over training settings finds them in its parent experiment
UPSTREAM = STAGE_NAMES[: STAGE_NAMES.index(train.STAGE)]


def stages(cfg: DictConfig) -> tuple:
    """The stages ``cfg`` runs, in order: ``queries`` only with synthetic queries, ``mine`` and
    ``score`` only when the loss learns from teacher scores."""
    chosen = tuple(s for s in STAGES if s is not queries or components.queries_enabled(cfg))
    if not components.needs_scores(cfg):
        chosen = tuple(s for s in chosen if s not in SCORING)
    return chosen


def run(cfg: DictConfig) -> dict[str, Manifest]:
    """Run mine, score, train and evaluate (after the ``queries`` stage when synthetic queries are on).

    A loss of feature terms only (``loss=feature``) trains on the collection's texts: mine and
    score are skipped. A stage's key chains the keys of the stages before it, so a changed config reruns the first
    stage it affects and every later one; ``force=true`` reruns all.

    The whole run holds the experiment's lock (besides each stage's): a second ``run`` of the same
    experiment waits until this one is done, so it never replaces a stage of this run's chain
    between two others.
    """
    chosen = stages(cfg)
    with locked(Path(cfg.workspace) / str(cfg.experiment), "the experiment"):
        return {stage.STAGE: stage.run(cfg) for stage in chosen}
