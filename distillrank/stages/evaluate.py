"""Stage 4, evaluate: each system on the test split — TREC run, ir_measures metrics, speed.

Systems: ``bm25``; ``teacher``; ``student_init`` (the student before training); ``student`` (the
trained checkpoint of this experiment); and any ``evaluate.checkpoints`` (name -> folder). A
bi-encoder retrieves over the whole corpus (exact dense search); every other kind (cross-encoder,
ColBERT, monoT5, ensemble, precomputed scores) re-ranks the first stage (``evaluate.first_stage``:
``bm25``, or ``dense`` with ``evaluate.first_stage_model``) to ``evaluate.rerank_depth``. With
``evaluate.mode=rerank`` bi-encoders re-rank too. A re-ranker's ``passages/s`` counts pairs scored
per second and its latency covers the first stage and the re-ranking of one query.
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
from distillrank.teachers import BiEncoderTeacher
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
        what = {"teacher": context.teacher_fingerprint(cfg)}
    elif name == "student_init":
        what = {
            "student": to_plain(cfg.student),
            "weights": dir_fingerprint(resolve_model(cfg.student.model)),
        }
    elif name == "student":
        what = {"train": train.stage_key(cfg)}
    else:
        what = {"checkpoint": dir_fingerprint(resolve_model(cfg.evaluate.checkpoints[name]))}
    if reranks(cfg, name):  # a re-ranker's results depend on its candidates
        what = {**what, "first_stage": _first_stage_key(cfg)}
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


def _is_bi_encoder_target(target: str) -> bool:
    return target.endswith(("students.bi_encoder", "BiEncoder.from_backbone", "BiEncoder.load", "BiEncoder"))


def _system_folder(cfg: DictConfig, name: str) -> Path | None:
    """The saved weights of a student system (None for the untrained student, built in memory)."""
    if name == "student":
        _, train_dir = require_stage(cfg, train.STAGE, train.stage_key(cfg))
        return train_dir / train.MODEL
    if name in ("student_init", "bm25", "teacher"):
        return None
    return resolve_model(cfg.evaluate.checkpoints[name])


def reranks(cfg: DictConfig, name: str) -> bool:
    """Whether a system re-ranks the first stage (``evaluate.first_stage``) instead of retrieving.

    ``evaluate.mode=auto``: bi-encoders retrieve over the whole corpus; cross-encoders, ColBERT,
    monoT5, ensembles and precomputed teachers re-rank. ``evaluate.mode=rerank``: every system but
    BM25 re-ranks (bi-encoders too, to compare them as re-rankers).
    """
    if cfg.evaluate.mode not in ("auto", "rerank"):
        raise ConfigError(f"evaluate.mode={cfg.evaluate.mode!r}; expected auto or rerank")
    if name == "bm25":
        return False
    if cfg.evaluate.mode == "rerank":
        return True
    if name == "teacher":
        return not cfg.teacher._target_.endswith("BiEncoderTeacher")
    if name == "student_init":
        return not _is_bi_encoder_target(cfg.student._target_)
    if name == "student":
        return not _is_bi_encoder_target(cfg.student._target_)
    from distillrank.students.factory import student_kind

    return student_kind(resolve_model(cfg.evaluate.checkpoints[name])) != "bi_encoder"


def _first_stage_key(cfg: DictConfig) -> dict:
    ev = cfg.evaluate
    if ev.first_stage == "bm25":
        return {"bm25": {k: cfg.mining[k] for k in ("k1", "b", "stemmer", "stopwords")}, "depth": ev.rerank_depth}
    return {"dense": dir_fingerprint(resolve_model(ev.first_stage_model)), "depth": ev.rerank_depth}


class _FirstStage:
    """The candidates re-rankers score: BM25 or a bi-encoder (``evaluate.first_stage``), top
    ``evaluate.rerank_depth``; computed once per evaluate run, and for one query at a time (latency)."""

    def __init__(self, cfg: DictConfig, coll, queries) -> None:
        self.cfg, self.coll, self.queries = cfg, coll, queries
        self._run: dict[str, list[tuple[str, float]]] | None = None
        ev = cfg.evaluate
        if ev.first_stage not in ("bm25", "dense"):
            raise ConfigError(f"evaluate.first_stage={ev.first_stage!r}; expected bm25 or dense")
        if ev.first_stage == "dense" and not ev.first_stage_model:
            raise ConfigError("evaluate.first_stage=dense needs evaluate.first_stage_model (a bi-encoder)")

    def _dense_cfg(self) -> DictConfig:
        from omegaconf import OmegaConf

        cfg = OmegaConf.create(OmegaConf.to_container(self.cfg, resolve=True))
        cfg.mining.model = self.cfg.evaluate.first_stage_model
        return cfg

    def search(self, texts: list[str], progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
        depth = int(self.cfg.evaluate.rerank_depth)
        if self.cfg.evaluate.first_stage == "bm25":
            return mine.bm25_index(self.cfg, self.coll).search(texts, depth, progress=progress)
        from distillrank.mining.dense import dense_search

        rows, scores, _ = dense_search(self._dense_cfg(), self.coll, texts, depth, progress=progress)
        return rows, scores

    def run(self) -> dict[str, list[tuple[str, float]]]:
        if self._run is None:
            rows, scores = self.search([t for _, t in self.queries])
            doc_ids = self.coll.doc_ids()
            self._run = {
                qid: [(doc_ids[r], float(sc)) for r, sc in zip(rows[i], scores[i], strict=True) if r >= 0]
                for i, (qid, _) in enumerate(self.queries)
            }
        return self._run


def _pair_scorer(cfg: DictConfig, name: str, device, precision):
    """``score(queries, passages, pair_q, pair_p, qids, docids) -> scores``, the module, its folder."""
    if name == "teacher":
        teacher = context.teacher(cfg)
        module = _teacher_module(teacher, device)

        def score_teacher(queries, passages, pair_q, pair_p, qids, docids, progress=True):
            return teacher.score(queries, passages, np.asarray(pair_q), np.asarray(pair_p), device, precision,
                                 progress, qids=qids, docids=docids)

        model_path = getattr(teacher, "model", None)
        folder = resolve_model(model_path) if isinstance(model_path, str) else None
        return score_teacher, module, folder
    from distillrank.students.factory import as_student, load_student

    folder = _system_folder(cfg, name)
    student = as_student(instantiate(cfg.student)) if folder is None else load_student(folder)
    student = student.to(device).eval()

    def score_student(queries, passages, pair_q, pair_p, qids, docids, progress=True):
        return student.rerank_scores(queries, passages, pair_q, pair_p, cfg.evaluate.batch_size,
                                     lambda: autocast(device, precision))

    return score_student, student, folder


def _teacher_module(teacher, device):
    """The teacher's torch module when it has one (for the parameter count); None otherwise."""
    for attr in ("cross_encoder", "encoder", "colbert", "seq2seq"):
        if hasattr(teacher, attr):
            return getattr(teacher, attr)(device)
    return None


def _rerank(cfg: DictConfig, name: str, coll, queries, first: _FirstStage, device, precision) -> dict:
    """Re-rank the first stage's top ``rerank_depth`` with one system."""
    score_fn, module, folder = _pair_scorer(cfg, name, device, precision)
    candidates = first.run()
    qtext = dict(queries)
    qids = [q for q, _ in queries]
    docids = sorted({d for q in qids for d, _ in candidates[q]})
    col = {d: i for i, d in enumerate(docids)}
    pair_q = np.array([i for i, q in enumerate(qids) for _ in candidates[q]], dtype=np.int64)
    pair_p = np.array([col[d] for q in qids for d, _ in candidates[q]], dtype=np.int64)
    passages = coll.passage_texts([coll.doc_row(d) for d in docids])
    start = time.perf_counter()
    scores = score_fn([qtext[q] for q in qids], passages, pair_q, pair_p, qids, docids)
    rate = len(pair_q) / max(time.perf_counter() - start, 1e-9)
    run: dict[str, dict[str, float]] = {q: {} for q in qids}
    for qi, pi, sc in zip(pair_q.tolist(), pair_p.tolist(), np.asarray(scores).tolist(), strict=True):
        run[qids[qi]][docids[pi]] = float(sc)

    doc_ids = coll.doc_ids()

    def rerank_one(text: str) -> None:  # the first stage for one query, then the re-ranker over its list
        rows, _ = first.search([text], progress=False)
        kept = [int(r) for r in rows[0] if r >= 0]
        score_fn([text], coll.passage_texts(kept), np.zeros(len(kept), np.int64), np.arange(len(kept)),
                 ["latency"], [doc_ids[r] for r in kept], False)

    latency = None
    if not cfg.teacher._target_.endswith("PrecomputedTeacher") or name != "teacher":
        latency = latency_ms(rerank_one, [t for _, t in queries], cfg.evaluate.latency_queries)
    return {
        "run": run,
        "passages_per_s": rate,  # (query, passage) pairs re-ranked per second
        "parameters": _params(module) if module is not None else None,
        "latency": latency,
        "disk_mb": _disk_mb(folder),
    }


def _evaluate_system(cfg: DictConfig, name: str, coll, queries, device, precision, scratch: Path,
                     first: _FirstStage | None = None) -> dict:
    """Run one system; returns its run, the encoding (or re-ranking) rate and the parameter count."""
    ev = cfg.evaluate
    if reranks(cfg, name):
        return _rerank(cfg, name, coll, queries, first or _FirstStage(cfg, coll, queries), device, precision)
    if name == "bm25":
        index = mine.bm25_index(cfg, coll)
        texts = [t for _, t in queries]
        rows, scores = index.search(texts, ev.top_k)
        doc_ids = coll.doc_ids()
        run = {
            qid: {doc_ids[r]: float(s) for r, s in zip(rows[i], scores[i], strict=True) if r >= 0}
            for i, (qid, _) in enumerate(queries)
        }
        latency = latency_ms(lambda t: index.search([t], ev.top_k, progress=False), texts, ev.latency_queries)
        return {"run": run, "passages_per_s": None, "parameters": None, "latency": latency, "disk_mb": None}
    if name == "teacher":
        teacher = context.teacher(cfg)
        if not isinstance(teacher, BiEncoderTeacher):
            raise ConfigError(f"cannot run teacher {cfg.teacher._target_} as a dense retriever")
        encoder = teacher.encoder(device)
        folder = resolve_model(teacher.model)
    elif name == "student_init":
        encoder, folder = instantiate(cfg.student), None  # truncated in memory, never saved
    else:
        folder = _system_folder(cfg, name)
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
    first = _FirstStage(cfg, coll, queries)
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
            out = _evaluate_system(cfg, name, coll, queries, device, precision, folder / ".scratch", first)
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
