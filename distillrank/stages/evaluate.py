"""Stage 4, evaluate: each system on the test split — TREC run, ir_measures metrics, speed.

Systems: ``bm25``; ``teacher`` (dense retrieval for a bi-encoder, re-ranking of BM25's top
``rerank_depth`` for a cross-encoder); ``student_init`` (the student before training); ``student``
(the trained checkpoint of this experiment); and any ``evaluate.checkpoints`` (name -> folder).
Each system's results are kept in ``evaluate/<system>/`` under their own key, so a new student does
not re-evaluate the teacher. Outputs: ``metrics.json``, ``results.md`` and one run file per system.

With ``evaluate.baseline`` set, every other system is compared with it per measure by a two-sided
Student's paired t-test over the test queries, with Holm's (1979) step-down correction across the
systems at ``evaluate.alpha``; ``metrics.json`` keeps the result under each system's
``"significance"`` and ``results.md`` marks significantly better (†) and worse (‡) values.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig

from distillrank.errors import ConfigError
from distillrank.evaluation.dense import dense_retrieve, latency_ms
from distillrank.evaluation.metrics import compute_metrics, parse_measures
from distillrank.evaluation.runs import write_trec_run
from distillrank.evaluation.significance import compare_to_baseline
from distillrank.evaluation.tables import results_table
from distillrank.models.bi_encoder import BiEncoder
from distillrank.models.hub import resolve_model
from distillrank.runtime import autocast, hardware
from distillrank.stages import context, mine, train
from distillrank.teachers import BiEncoderTeacher, CrossEncoderTeacher
from distillrank.workspace import (
    Manifest,
    atomic_write_json,
    atomic_write_text,
    current_manifest,
    dir_fingerprint,
    fingerprint,
    require_stage,
    stage_dir,
    to_plain,
)

log = logging.getLogger(__name__)

STAGE = "evaluate"
BUILTIN = ("bm25", "teacher", "student_init", "student")


def _split(cfg: DictConfig) -> str:
    return cfg.evaluate.split or cfg.data.test_split


def _system_names(cfg: DictConfig) -> list[str]:
    names = list(cfg.evaluate.systems) + list(cfg.evaluate.checkpoints)
    unknown = [s for s in cfg.evaluate.systems if s not in BUILTIN]
    if unknown:
        raise ConfigError(
            f"evaluate.systems has unknown {unknown}; built-in systems are {list(BUILTIN)} "
            "and extra bi-encoders go in evaluate.checkpoints (name: path)"
        )
    return names


def system_key(cfg: DictConfig, name: str) -> str:
    """What decides one system's results on the test split."""
    if name == "bm25":
        what = {k: cfg.mining[k] for k in ("k1", "b", "stemmer", "stopwords")}
    elif name == "teacher":
        what = {"teacher": context.teacher_fingerprint(cfg), "rerank_depth": cfg.evaluate.rerank_depth}
        if cfg.teacher._target_.endswith("CrossEncoderTeacher"):
            what["bm25"] = {k: cfg.mining[k] for k in ("k1", "b", "stemmer", "stopwords")}
    elif name == "student_init":
        what = {
            "student": to_plain(cfg.student),
            "weights": dir_fingerprint(resolve_model(cfg.student.model)),
        }
    elif name == "student":
        what = {"train": train.stage_key(cfg)}
    else:
        what = {"checkpoint": dir_fingerprint(resolve_model(cfg.evaluate.checkpoints[name]))}
    return fingerprint(
        {
            "system": what,
            "collection": context.collection(cfg).fingerprint,
            "split": _split(cfg),
            "measures": list(cfg.evaluate.measures),
            "top_k": cfg.evaluate.top_k,
            "precision": cfg.hardware.precision,
        }
    )


def _baseline(cfg: DictConfig) -> str | None:
    """``evaluate.baseline``, checked to be one of the evaluated systems (``None``: no tests)."""
    baseline = cfg.evaluate.baseline
    if baseline is None:
        return None
    names = _system_names(cfg)
    if baseline not in names:
        raise ConfigError(
            f"evaluate.baseline {baseline!r} is not among the evaluated systems {names}; "
            "add it to evaluate.systems / evaluate.checkpoints or set evaluate.baseline=null"
        )
    if not 0.0 < cfg.evaluate.alpha < 1.0:
        raise ConfigError(f"evaluate.alpha must be in (0, 1), got {cfg.evaluate.alpha}")
    return baseline


def stage_key(cfg: DictConfig) -> str:
    """The whole stage: every system's key, plus the significance settings (they change the table)."""
    return fingerprint(
        {
            "stage": STAGE,
            "systems": {n: system_key(cfg, n) for n in _system_names(cfg)},
            "baseline": cfg.evaluate.baseline,
            "alpha": cfg.evaluate.alpha,
        }
    )


def _params(model) -> int:
    return sum(p.numel() for p in model.parameters())


_WEIGHT_FILES = ("*.safetensors", "*.bin", "*.pt", "*.npy")


def _disk_mb(folder: Path | None) -> float | None:
    """On-disk size of a model's (or index's) weight files in MB; None when it lives in memory only."""
    if folder is None or not Path(folder).is_dir():
        return None
    files = {f for pattern in _WEIGHT_FILES for f in Path(folder).rglob(pattern) if f.is_file()}
    return sum(f.stat().st_size for f in files) / 1e6


def _evaluate_system(cfg: DictConfig, name: str, coll, queries, device, precision, scratch: Path) -> dict:
    """Run one system; returns its run, the encoding rate and the parameter count."""
    ev = cfg.evaluate
    if name == "bm25" or (name == "teacher" and isinstance(context.teacher(cfg), CrossEncoderTeacher)):
        index = mine.bm25_index(cfg, coll)
        depth = ev.rerank_depth if name == "teacher" else ev.top_k
        rows, scores = index.search([t for _, t in queries], depth)
        texts = [t for _, t in queries]
        doc_ids = coll.doc_ids()
        run = {
            qid: {doc_ids[r]: float(s) for r, s in zip(rows[i], scores[i], strict=True) if r >= 0}
            for i, (qid, _) in enumerate(queries)
        }
        if name == "bm25":
            latency = latency_ms(
                lambda t: index.search([t], depth, progress=False), texts, ev.latency_queries
            )
            return {
                "run": run,
                "passages_per_s": None,
                "parameters": None,
                "latency": latency,
                "disk_mb": None,
            }
        teacher = context.teacher(cfg)
        pairs = [(qid, d) for qid in run for d in run[qid]]
        qtext = dict(queries)
        model = teacher.cross_encoder(device)
        start = time.perf_counter()
        scores = model.predict(
            [qtext[q] for q, _ in pairs],
            coll.passage_texts([coll.doc_row(d) for _, d in pairs]),
            batch_size=teacher.batch_size,
            autocast=lambda: autocast(device, precision),
            progress=True,
            desc="teacher: re-rank",
        )
        rate = len(pairs) / max(time.perf_counter() - start, 1e-9)
        reranked: dict[str, dict[str, float]] = {}
        for (qid, d), s in zip(pairs, scores.tolist(), strict=True):
            reranked.setdefault(qid, {})[d] = s

        def rerank_one(text: str) -> None:  # BM25 for one query, then the cross-encoder over its list
            one_rows, _ = index.search([text], depth, progress=False)
            kept = [int(r) for r in one_rows[0] if r >= 0]
            model.predict(
                [text] * len(kept),
                coll.passage_texts(kept),
                batch_size=teacher.batch_size,
                autocast=lambda: autocast(device, precision),
            )

        return {
            "run": reranked,
            "passages_per_s": rate,
            "parameters": _params(model),
            "latency": latency_ms(rerank_one, texts, ev.latency_queries),
            "disk_mb": _disk_mb(resolve_model(teacher.model)),
        }
    if name == "teacher":
        teacher = context.teacher(cfg)
        if not isinstance(teacher, BiEncoderTeacher):
            raise ConfigError(
                f"cannot evaluate teacher {cfg.teacher._target_}: not a bi-encoder or cross-encoder"
            )
        encoder = teacher.encoder(device)
        folder = resolve_model(teacher.model)
    elif name == "student_init":
        encoder, folder = instantiate(cfg.student), None  # truncated in memory, never saved
    elif name == "student":
        _, train_dir = require_stage(cfg, train.STAGE, train.stage_key(cfg))
        folder = train_dir / train.MODEL
        encoder = BiEncoder.load(folder)
    else:
        folder = resolve_model(cfg.evaluate.checkpoints[name])
        encoder = BiEncoder.load(folder)
    run, rate, latency = dense_retrieve(
        encoder,
        coll,
        queries,
        ev.top_k,
        ev.batch_size,
        ev.chunk_size,
        device,
        precision,
        scratch,
        name,
        latency_queries=ev.latency_queries,
    )
    return {
        "run": run,
        "passages_per_s": rate,
        "parameters": _params(encoder),
        "latency": latency,
        "disk_mb": _disk_mb(folder),
    }


def run(cfg: DictConfig) -> Manifest:
    """Evaluate every configured system; systems whose results are current are reused."""
    baseline = _baseline(cfg)
    folder = stage_dir(cfg, STAGE)
    key = stage_key(cfg)
    if (done := current_manifest(cfg, STAGE, key)) is not None:
        print((folder / "results.md").read_text())
        return done
    parse_measures(list(cfg.evaluate.measures))
    start = time.perf_counter()
    coll = context.collection(cfg)
    split = _split(cfg)
    if split not in coll.splits():
        raise ConfigError(
            f"evaluate split {split!r} is not among the qrels splits {coll.splits()} of '{coll.name}'"
        )
    qrels = {q: docs for q, docs in coll.qrels[split].items() if any(r > 0 for r in docs.values())}
    queries = [(q, t) for q, t in coll.split_queries(split) if q in qrels]
    results: dict[str, dict] = {}
    with hardware(cfg.hardware) as (device, precision):
        for name in _system_names(cfg):
            sys_dir = folder / name
            sys_key = system_key(cfg, name)
            saved = sys_dir / "metrics.json"
            if not cfg.force and saved.is_file() and (sys_dir / "run.trec").is_file():
                previous = json.loads(saved.read_text())
                if previous.get("key") == sys_key:
                    log.info("evaluate: %s up to date, reused", name)
                    results[name] = previous
                    continue
            log.info("evaluate: %s on %s/%s (%d queries)", name, coll.name, split, len(queries))
            out = _evaluate_system(cfg, name, coll, queries, device, precision, folder / ".scratch")
            aggregate, per_query = compute_metrics(qrels, out["run"], list(cfg.evaluate.measures))
            write_trec_run(sys_dir / "run.trec", out["run"], tag=f"distillrank-{name}")
            results[name] = {
                "key": sys_key,
                "metrics": aggregate,
                "per_query": per_query,
                "passages_per_s": out["passages_per_s"],
                "parameters": out["parameters"],
                "latency": out["latency"],
                "disk_mb": out["disk_mb"],
                "queries": len(queries),
            }
            atomic_write_json(saved, results[name])
    measures = list(cfg.evaluate.measures)
    significance = None
    if baseline is not None:
        significance = compare_to_baseline(
            {n: r.get("per_query", {}) for n, r in results.items()}, baseline, measures, cfg.evaluate.alpha
        )
    table = results_table(results, measures, significance, baseline=baseline, alpha=cfg.evaluate.alpha)
    header = f"{coll.name} / {split}: {len(queries)} queries, {len(coll.corpus):,} passages\n\n"
    atomic_write_text(folder / "results.md", header + table)
    atomic_write_json(
        folder / "metrics.json",
        {
            n: {
                **{k: v for k, v in r.items() if k != "per_query"},
                **({"significance": significance[n]} if significance and n in significance else {}),
            }
            for n, r in results.items()
        },
    )
    print(header + table)
    best = max(results, key=lambda n: results[n]["metrics"].get(cfg.evaluate.measures[0], np.nan))
    manifest = Manifest(
        stage=STAGE,
        key=key,
        config={"evaluate": to_plain(cfg.evaluate), "data": to_plain(cfg.data)},
        inputs={n: r["key"] for n, r in results.items()},
        counts={"queries": len(queries), "systems": list(results), "best": best, "baseline": baseline},
        outputs=["metrics.json", "results.md", *[f"{n}/run.trec" for n in results]],
        wall_time_s=time.perf_counter() - start,
    )
    manifest.write(folder)
    return manifest
