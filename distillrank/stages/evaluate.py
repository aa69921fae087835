"""Stage 4, evaluate: each system on the test split — TREC run, ir_measures metrics, speed.

Systems: ``bm25``; ``teacher``; ``student_init`` (the student before training); ``student`` (the
trained checkpoint of this experiment); and any ``evaluate.checkpoints`` (name -> folder). A
bi-encoder retrieves over the whole corpus (exact dense search); every other kind (cross-encoder,
ColBERT, monoT5, ensemble, precomputed scores) re-ranks the first stage (``evaluate.first_stage``:
``bm25``, or ``dense`` with ``evaluate.first_stage_model``) to ``evaluate.rerank_depth``. With
``evaluate.mode=rerank`` bi-encoders re-rank too. Each system's results are kept in
``evaluate/<system>/`` under their own key (:func:`distillrank.keys.system_key`), so a new student
does not re-evaluate the teacher. Outputs: ``metrics.json``, ``results.md`` and one run file per
system.

With ``evaluate.baseline`` set, every other system is compared with it per measure by a two-sided
Student's paired t-test over the test queries, with Holm's (1979) step-down correction across the
systems at ``evaluate.alpha``; ``results.md`` marks significantly better (†) and worse (‡) values.
``evaluate.collections`` names extra collections (``conf/data`` options or BEIR folders) evaluated
beside ``data`` on their own test split, each in ``evaluate/<collection>/``, with a macro mean
(:mod:`distillrank.evaluation.summary`). With a retrieving bi-encoder ``student`` and ``bm25``, the
hybrid systems fuse the two (:mod:`distillrank.evaluation.hybrid_systems`; docs/EVALUATION.md).

The parts: what is evaluated comes from :mod:`distillrank.builders.evaluation`, the systems from
:mod:`distillrank.builders.systems`, their runs and caching from :mod:`distillrank.evaluation.systems`.
When ``student`` is evaluated, the ``## Evaluation`` section of the trained model's card
(``train/model/README.md``) is written or replaced (:mod:`distillrank.reporting.model_card`).
"""

from __future__ import annotations

import logging
import time

import numpy as np
from omegaconf import DictConfig, OmegaConf

from distillrank import artifacts, keys
from distillrank.builders import evaluation, hardware
from distillrank.builders.systems import ConfigSystems, system_folder
from distillrank.evaluation.metrics import parse_measures
from distillrank.evaluation.summary import Summary, summarise
from distillrank.evaluation.systems import evaluate_target
from distillrank.evaluation.targets import Target
from distillrank.reporting import model_card
from distillrank.workspace import (
    Manifest,
    atomic_write_json,
    atomic_write_text,
    current_manifest,
    locked_stage,
    stage_dir,
    to_plain,
)

log = logging.getLogger(__name__)

STAGE = artifacts.EVALUATE


def stage_key(cfg: DictConfig) -> str:
    """This stage's key (:mod:`distillrank.keys`)."""
    return keys.stage_key(cfg, STAGE)


@locked_stage(STAGE)
def run(cfg: DictConfig) -> Manifest:
    """Evaluate every configured system on every collection; results that are current are reused."""
    baseline = evaluation.baseline(cfg)
    evaluation.check_hybrid(cfg)
    folder = stage_dir(cfg, STAGE)
    key = stage_key(cfg)
    if (done := current_manifest(cfg, STAGE, key)) is not None:
        print((folder / artifacts.RESULTS).read_text())
        return done
    measures = list(cfg.evaluate.measures)
    parse_measures(measures)
    start = time.perf_counter()
    evaluated = evaluation.targets(cfg)
    names = evaluation.system_names(cfg)
    settings = evaluation.settings(cfg)
    per_collection: dict[str, dict[str, dict]] = {}
    systems = ConfigSystems(cfg, folder / artifacts.SCRATCH)
    for target in evaluated:
        system_keys = {n: keys.system_key(cfg, n, target) for n in names}
        per_collection[target.name] = evaluate_target(target, names, system_keys, systems, settings, bool(cfg.force))
    summary = summarise(evaluated, per_collection, measures, baseline, float(cfg.evaluate.alpha))
    atomic_write_text(folder / artifacts.RESULTS, summary.text)
    atomic_write_json(folder / artifacts.METRICS, summary.metrics)
    print(summary.text)
    main = evaluated[0]
    if "student" in per_collection[main.name]:
        _write_card(cfg, evaluated, per_collection, summary, baseline)
    manifest = Manifest(
        stage=STAGE,
        key=key,
        config={"evaluate": to_plain(cfg.evaluate), "data": to_plain(cfg.data)},
        inputs={
            (n if t.rel == "." else f"{t.rel}/{n}"): r["key"]
            for t in evaluated
            for n, r in per_collection[t.name].items()
        },
        counts={
            **_counts(evaluated, per_collection, summary, measures, baseline),
            **hardware.report(cfg, *({"teacher": "teacher"}.get(n, "student") for n in names if n != "bm25")),
        },
        outputs=[
            artifacts.METRICS,
            artifacts.RESULTS,
            *[f"{n}/{part}" if t.rel == "." else f"{t.rel}/{n}/{part}" for t in evaluated
              for n in per_collection[t.name] for part in (artifacts.RUN, artifacts.METRICS)],
        ],
        wall_time_s=time.perf_counter() - start,
    )
    manifest.write(folder)
    return manifest


def _counts(
    evaluated: list[Target], per_collection: dict[str, dict[str, dict]], summary: Summary, measures: list[str],
    baseline: str | None,
) -> dict:
    """The manifest's counts: queries, systems, the best system on the first measure, the hybrid α."""
    main = evaluated[0]
    ranked = summary.mean if summary.mean is not None else per_collection[main.name]
    best = max(ranked, key=lambda n: ranked[n]["metrics"].get(measures[0], np.nan))
    counts = {"queries": len(main.queries), "systems": list(per_collection[main.name]), "best": best,
              "baseline": baseline}
    if summary.mean is not None:
        counts["collections"] = {t.name: len(t.queries) for t in evaluated}
    alphas = {  # the convex hybrid's α per collection
        t.name: info["alpha"]
        for t in evaluated
        if "alpha" in (info := per_collection[t.name].get("hybrid", {}).get("hybrid", {}))
    }
    if alphas:
        counts["hybrid_alpha"] = alphas
    return counts


def _write_card(
    cfg: DictConfig, evaluated: list[Target], per_collection: dict[str, dict[str, dict]], summary: Summary,
    baseline: str | None,
) -> None:
    """The ``## Evaluation`` section of the trained student's model card: its measures per collection
    and split (with † / ‡ against the baseline), the macro mean, how it was run, and the command."""
    ev = cfg.evaluate
    rows = [
        (t.name, t.split, len(t.queries), per_collection[t.name]["student"],
         (summary.significance[t.name] or {}).get("student"))
        for t in evaluated
    ]
    section = model_card.evaluation_section(
        evaluation.student_how(cfg),
        rows,
        list(ev.measures),
        summary.mean.get("student") if summary.mean else None,
        baseline,
        ev.alpha,
        evaluation.hydra_command(),
        OmegaConf.to_yaml(OmegaConf.create({"evaluate": to_plain(ev)})),
    )
    model_card.write_evaluation(system_folder(cfg, "student") / artifacts.MODEL_CARD, section)
