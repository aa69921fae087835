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

Several collections: ``evaluate.collections`` names extra collections (``conf/data`` options such
as ``vaswani``, or BEIR folders) evaluated beside ``data`` on their own ``test_split``, e.g. a
student trained on SciFact evaluated on SciFact and, out of domain, on Vaswani. Each extra
collection's systems are cached in ``evaluate/<collection>/<system>/``; ``results.md`` then holds one
table per collection (significance tested within each) and a mean table, the macro average of
each measure over the collections (each collection weighs the same, whatever its query count).
``metrics.json`` becomes ``{"collections": {name: {"split", "queries", "passages", "folder",
"systems": {system: result}}}, "mean": {"over": [names], "systems": {system: {"metrics"}}}}``;
without extra collections it stays ``{system: result}``.

Model card: when ``student`` is evaluated, the ``## Evaluation`` section of the trained model's
``README.md`` (``train/model/README.md``) is written (or replaced): the student's measures per
collection and split, and the command that produced them.
"""

from __future__ import annotations

import json
import logging
import re
import shlex
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from distillrank.config import DataConfig, conf_dir
from distillrank.data.collection import Collection
from distillrank.errors import ConfigError
from distillrank.evaluation.dense import dense_retrieve, latency_ms
from distillrank.evaluation.metrics import compute_metrics, parse_measures
from distillrank.evaluation.runs import write_trec_run
from distillrank.evaluation.significance import compare_to_baseline
from distillrank.evaluation.tables import results_table, student_card_table
from distillrank.models.bi_encoder import BiEncoder
from distillrank.models.hub import resolve_model
from distillrank.runtime import autocast, hardware
from distillrank.stages import context, mine, train
from distillrank.teachers import BiEncoderTeacher
from distillrank.workspace import (
    Manifest,
    atomic_write_json,
    atomic_write_text,
    cache_dir,
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


def system_key(cfg: DictConfig, name: str, coll: Collection | None = None, split: str | None = None) -> str:
    """What decides one system's results on a collection's test split (default: ``data``'s)."""
    if name == "bm25":
        what = {k: cfg.mining[k] for k in ("k1", "b", "stemmer", "stopwords")}
    elif name == "teacher":
        what = {"teacher": context.teacher_fingerprint(cfg)}
    elif name == "student_init":
        what = {
            "student": train.student_identity(cfg, training=False),
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
            "collection": (coll or context.collection(cfg)).fingerprint,
            "split": split or _split(cfg),
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
    what = {
        "stage": STAGE,
        "systems": {n: system_key(cfg, n) for n in _system_names(cfg)},
        "baseline": cfg.evaluate.baseline,
        "alpha": cfg.evaluate.alpha,
    }
    extras = extra_collections(cfg)
    if extras:  # absent otherwise, so single-collection keys stay as they were
        what["collections"] = {}
        for name, data in extras:
            coll, split = _extra_split(cfg, name, data)
            what["collections"][name] = {n: system_key(cfg, n, coll, split) for n in _system_names(cfg)}
    return fingerprint(what)


# --------------------------------------------------------------------------- several collections
_RESERVED = {".scratch", "metrics.json", "results.md"}


def extra_data(cfg: DictConfig, entry: str) -> DictConfig:
    """The data config of one ``evaluate.collections`` entry.

    ``entry`` is a ``conf/data`` option (``vaswani`` → ``conf/data/vaswani.yaml``, merged over the
    :class:`~distillrank.config.DataConfig` schema, as ``data=vaswani`` would compose it) or a BEIR
    folder (name: the folder's name, split ``test``). ``data.root`` (the local mirror) is inherited
    from the main ``data`` config when the option does not set it.

    Raises:
        ConfigError: the entry is neither, or its option leaves a mandatory value (``???``) unset.
    """
    option = conf_dir() / "data" / f"{entry}.yaml"
    schema = OmegaConf.structured(DataConfig)
    if "/" not in entry and option.is_file():
        node = OmegaConf.load(option)
    elif Path(entry).expanduser().is_dir():
        folder = Path(entry).expanduser().absolute()  # not resolved: a link names its collection
        node = OmegaConf.create({"name": folder.name, "source": "beir", "path": str(folder), "train_split": None})
    else:
        options = sorted(p.stem for p in (conf_dir() / "data").glob("*.yaml"))
        raise ConfigError(
            f"evaluate.collections: {entry!r} is neither a data option (conf/data/: {options}) "
            "nor an existing BEIR folder"
        )
    missing = [str(k) for k in node if OmegaConf.is_missing(node, k)]  # merge would drop `???`
    try:
        data = OmegaConf.merge(schema, node)
    except Exception as err:  # noqa: BLE001 - OmegaConf's validation errors
        raise ConfigError(f"evaluate.collections: {option} does not fit the data schema: {err}") from None
    missing += [str(k) for k in data if OmegaConf.is_missing(data, k) and str(k) not in missing]
    if missing:
        raise ConfigError(
            f"evaluate.collections: {option} leaves {missing} unset (???); "
            "give a BEIR folder path instead, or a data option that sets them"
        )
    if data.root is None and cfg.data.get("root"):
        data.root = cfg.data.root
    return data


def extra_collections(cfg: DictConfig) -> list[tuple[str, DictConfig]]:
    """``[(name, data config)]`` of ``evaluate.collections``, names checked to be distinct folders.

    Raises:
        ConfigError: two collections share a name (the main one included), or a name cannot be a
            folder of ``evaluate/`` beside the systems' folders.
    """
    out: list[tuple[str, DictConfig]] = []
    taken = {str(cfg.data.name)}
    systems = set(_system_names(cfg))
    for entry in cfg.evaluate.get("collections") or []:
        data = extra_data(cfg, str(entry))
        name = str(data.name)
        if name in taken:
            raise ConfigError(
                f"evaluate.collections: {entry!r} is named {name!r}, like another collection evaluated "
                f"({sorted(taken)}); each collection needs its own name (data.name)"
            )
        if name in systems or name in _RESERVED or name.startswith(".") or "/" in name or "\\" in name:
            raise ConfigError(
                f"evaluate.collections: the collection name {name!r} cannot be the folder "
                f"evaluate/{name}/ (it clashes with a system {sorted(systems)} or is not a plain name)"
            )
        taken.add(name)
        out.append((name, data))
    return out


def _extra_split(cfg: DictConfig, name: str, data: DictConfig) -> tuple[Collection, str]:
    """An extra collection (loaded through the workspace cache) and its test split, checked."""
    split = data.test_split
    if not split:
        raise ConfigError(
            f"evaluate.collections: collection {name!r} has no test split to evaluate on (data.test_split is null)"
        )
    if data.path:  # a BEIR folder without that split's qrels: say so before loading it
        qrels = Path(data.path) / "qrels"
        if not (qrels / f"{split}.tsv").is_file():
            raise ConfigError(
                f"evaluate.collections: collection {name!r} has no test split to evaluate on "
                f"({qrels / f'{split}.tsv'} is missing; its qrels splits are "
                f"{sorted(f.stem for f in qrels.glob('*.tsv'))})"
            )
    coll = context.collection(OmegaConf.create({"workspace": cfg.workspace, "data": data}))
    if not split or split not in coll.splits():
        raise ConfigError(
            f"evaluate.collections: collection {name!r} has no test split to evaluate on "
            f"(data.test_split={split!r}; its qrels splits are {coll.splits()})"
        )
    return coll, split


@dataclass
class Target:
    """One collection evaluated: its judged test queries and the folder of its systems' results."""

    name: str
    coll: Collection
    split: str
    queries: list[tuple[str, str]]  # (qid, text) of the queries with at least one relevant document
    qrels: dict[str, dict[str, int]]
    folder: Path  # evaluate/ for the main collection, evaluate/<name>/ for an extra one
    rel: str  # folder relative to evaluate/ ("." or the name)

    @property
    def header(self) -> str:
        return f"{self.name} / {self.split}: {len(self.queries)} queries, {len(self.coll.corpus):,} passages"


def _target(name: str, coll: Collection, split: str, folder: Path, rel: str) -> Target:
    qrels = {q: docs for q, docs in coll.qrels[split].items() if any(r > 0 for r in docs.values())}
    queries = [(q, t) for q, t in coll.split_queries(split) if q in qrels]
    if not queries:
        raise ConfigError(f"collection {name!r} has no {split!r} query with a relevant document to evaluate")
    return Target(name, coll, split, queries, qrels, folder, rel)


def targets(cfg: DictConfig) -> list[Target]:
    """The main collection (``data``, split ``evaluate.split`` or its test split), then the extras."""
    folder = stage_dir(cfg, STAGE)
    coll = context.collection(cfg)
    split = _split(cfg)
    if split not in coll.splits():
        raise ConfigError(
            f"evaluate split {split!r} is not among the qrels splits {coll.splits()} of '{coll.name}'"
        )
    out = [_target(str(cfg.data.name), coll, split, folder, ".")]
    for name, data in extra_collections(cfg):
        extra, extra_split = _extra_split(cfg, name, data)
        out.append(_target(name, extra, extra_split, folder / name, name))
    return out


def macro_average(per_collection: dict[str, dict[str, dict]], measures: list[str]) -> dict[str, dict]:
    """Each system's mean of each measure over the collections (macro: every collection weighs 1).

    Args:
        per_collection: ``{collection: {system: {"metrics": {measure: value}, "parameters", "disk_mb"}}}``.
        measures: the measures averaged.

    Returns:
        ``{system: {"metrics": {measure: mean}, "collections": n, "parameters", "disk_mb"}}`` for the
        systems of the first collection; a measure missing (or NaN) in any collection is left out.
        Speed and latency depend on each corpus and are not averaged; parameters and disk size are
        the model's (taken from the first collection).
    """
    names = list(per_collection)
    if not names:
        return {}
    out: dict[str, dict] = {}
    for system, first in per_collection[names[0]].items():
        rows = [per_collection[c].get(system) for c in names]
        metrics = {}
        for m in measures:
            values = [r["metrics"].get(m) for r in rows if r is not None]
            if len(values) == len(names) and all(v is not None and np.isfinite(v) for v in values):
                metrics[m] = float(np.mean(values))
        out[system] = {
            "metrics": metrics,
            "collections": len(names),
            "parameters": first.get("parameters"),
            "disk_mb": first.get("disk_mb"),
        }
    return out


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


def _pair_scorer(cfg: DictConfig, name: str, device, precision, coll):
    """``score(queries, passages, pair_q, pair_p, qids, docids) -> scores``, the module, its folder.

    ``coll``: the collection evaluated, bound to teachers that score over corpus statistics (BM25).
    """
    if name == "teacher":
        teacher = context.bind_collection(context.teacher(cfg), coll, cache_dir(cfg))
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
    score_fn, module, folder = _pair_scorer(cfg, name, device, precision, coll)
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
        encoder = teacher.encoder(device, precision)
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


def _evaluate_target(cfg: DictConfig, target: Target, device, precision, scratch: Path) -> dict[str, dict]:
    """Every system on one collection; a system whose saved results carry its current key is reused.

    Returns ``{system: {"key", "metrics", "per_query", "passages_per_s", "parameters", "latency",
    "disk_mb", "queries"}}``, also saved as ``<target.folder>/<system>/metrics.json`` with the run file.
    """
    results: dict[str, dict] = {}
    first = _FirstStage(cfg, target.coll, target.queries)
    for name in _system_names(cfg):
        sys_dir = target.folder / name
        sys_key = system_key(cfg, name, target.coll, target.split)
        saved = sys_dir / "metrics.json"
        if not cfg.force and saved.is_file() and (sys_dir / "run.trec").is_file():
            previous = json.loads(saved.read_text())
            if previous.get("key") == sys_key:
                log.info("evaluate: %s on %s up to date, reused", name, target.name)
                results[name] = previous
                continue
        log.info("evaluate: %s on %s/%s (%d queries)", name, target.name, target.split, len(target.queries))
        out = _evaluate_system(cfg, name, target.coll, target.queries, device, precision, scratch, first)
        aggregate, per_query = compute_metrics(target.qrels, out["run"], list(cfg.evaluate.measures))
        write_trec_run(sys_dir / "run.trec", out["run"], tag=f"distillrank-{name}")
        results[name] = {
            "key": sys_key,
            "metrics": aggregate,
            "per_query": per_query,
            "passages_per_s": out["passages_per_s"],
            "parameters": out["parameters"],
            "latency": out["latency"],
            "disk_mb": out["disk_mb"],
            "queries": len(target.queries),
        }
        atomic_write_json(saved, results[name])
    return results


def _summary(results: dict[str, dict], significance: dict | None) -> dict[str, dict]:
    """What ``metrics.json`` keeps of each system: all but the per-query values, plus its tests."""
    return {
        n: {
            **{k: v for k, v in r.items() if k != "per_query"},
            **({"significance": significance[n]} if significance and n in significance else {}),
        }
        for n, r in results.items()
    }


def run(cfg: DictConfig) -> Manifest:
    """Evaluate every configured system on every collection; results that are current are reused."""
    baseline = _baseline(cfg)
    folder = stage_dir(cfg, STAGE)
    key = stage_key(cfg)
    if (done := current_manifest(cfg, STAGE, key)) is not None:
        print((folder / "results.md").read_text())
        return done
    measures = list(cfg.evaluate.measures)
    parse_measures(measures)
    start = time.perf_counter()
    evaluated = targets(cfg)
    per_collection: dict[str, dict[str, dict]] = {}
    significance: dict[str, dict | None] = {}
    with hardware(cfg.hardware) as (device, precision):
        for target in evaluated:
            results = _evaluate_target(cfg, target, device, precision, folder / ".scratch")
            per_collection[target.name] = results
            significance[target.name] = (
                compare_to_baseline(
                    {n: r.get("per_query", {}) for n, r in results.items()}, baseline, measures, cfg.evaluate.alpha
                )
                if baseline is not None
                else None
            )

    def table(name: str) -> str:
        return results_table(
            per_collection[name], measures, significance[name], baseline=baseline, alpha=cfg.evaluate.alpha
        )

    main = evaluated[0]
    mean = macro_average(per_collection, measures) if len(evaluated) > 1 else None
    if mean is None:
        text = f"{main.header}\n\n{table(main.name)}"
        metrics = _summary(per_collection[main.name], significance[main.name])
    else:
        sections = [f"## {t.header}\n\n{table(t.name)}" for t in evaluated]
        sections.append(
            f"## Mean over {len(evaluated)} collections ({', '.join(per_collection)})\n\n"
            "Macro average: each measure averaged over the collections, each collection weighing the same "
            "whatever its number of queries; significance is tested within each collection only.\n\n"
            + results_table(mean, measures)
        )
        text = "\n".join(sections)
        metrics = {
            "collections": {
                t.name: {
                    "split": t.split,
                    "queries": len(t.queries),
                    "passages": len(t.coll.corpus),
                    "folder": t.rel,
                    "systems": _summary(per_collection[t.name], significance[t.name]),
                }
                for t in evaluated
            },
            "mean": {"over": list(per_collection), "average": "macro", "systems": mean},
        }
    atomic_write_text(folder / "results.md", text)
    atomic_write_json(folder / "metrics.json", metrics)
    print(text)
    if "student" in per_collection[main.name]:
        write_model_card_evaluation(
            _system_folder(cfg, "student") / "README.md",
            evaluation_section(cfg, evaluated, per_collection, significance, mean, baseline),
        )
    ranked = mean if mean is not None else per_collection[main.name]
    best = max(ranked, key=lambda n: ranked[n]["metrics"].get(measures[0], np.nan))
    counts = {"queries": len(main.queries), "systems": list(per_collection[main.name]), "best": best,
              "baseline": baseline}
    if mean is not None:
        counts["collections"] = {t.name: len(t.queries) for t in evaluated}
    manifest = Manifest(
        stage=STAGE,
        key=key,
        config={"evaluate": to_plain(cfg.evaluate), "data": to_plain(cfg.data)},
        inputs={
            (n if t.rel == "." else f"{t.rel}/{n}"): r["key"]
            for t in evaluated
            for n, r in per_collection[t.name].items()
        },
        counts=counts,
        outputs=[
            "metrics.json",
            "results.md",
            *[f"{n}/run.trec" if t.rel == "." else f"{t.rel}/{n}/run.trec" for t in evaluated
              for n in per_collection[t.name]],
        ],
        wall_time_s=time.perf_counter() - start,
    )
    manifest.write(folder)
    return manifest


# --------------------------------------------------------------------------- model card
CARD_HEADING = "## Evaluation"


def _command(cfg: DictConfig) -> str:
    """The command that ran this evaluation: the Hydra job's stage and overrides (no date, no
    folder of logs), or, outside a Hydra job (the Python API), the config it ran with."""
    from hydra.core.hydra_config import HydraConfig

    try:
        hc = HydraConfig.get()
    except ValueError:  # not inside a Hydra job
        return ""
    stage = hc.job.name if hc.job.name and hc.job.name != "distillrank" else STAGE
    return " ".join(["distillrank", shlex.quote(stage), *(shlex.quote(o) for o in hc.overrides.task)])


def evaluation_section(
    cfg: DictConfig,
    evaluated: list[Target],
    per_collection: dict[str, dict[str, dict]],
    significance: dict[str, dict | None],
    mean: dict[str, dict] | None,
    baseline: str | None,
) -> str:
    """The model card's ``## Evaluation`` section (Markdown, ends with a newline, no dates): the
    student's measures per collection and split (with † / ‡ against the baseline), the macro mean
    with several collections, how the student was run, and the command."""
    ev = cfg.evaluate
    if reranks(cfg, "student"):
        how = f"re-ranking the top {ev.rerank_depth} of the {ev.first_stage} first stage"
        if ev.first_stage == "dense":
            how += f" (`{ev.first_stage_model}`)"
    else:
        how = f"exact dense retrieval over the whole corpus (top {ev.top_k})"
    rows = [
        (t.name, t.split, len(t.queries), per_collection[t.name]["student"],
         (significance[t.name] or {}).get("student"))
        for t in evaluated
    ]
    mean_row = mean.get("student") if mean else None
    table = student_card_table(rows, list(ev.measures), mean_row, baseline=baseline, alpha=ev.alpha)
    command = _command(cfg)
    run_with = (
        f"Produced by:\n\n```bash\n{command}\n```\n"
        if command
        else f"Produced by `distillrank.stages.evaluate.run` with:\n\n```yaml\n"
        f"{OmegaConf.to_yaml(OmegaConf.create({'evaluate': to_plain(ev)}))}```\n"
    )
    return (
        f"{CARD_HEADING}\n\n"
        f"Measured by `distillrank evaluate` on the judged queries of each collection's test split, "
        f"{how}.\n\n{table}\n{run_with}"
    )


def replace_section(text: str, heading: str, section: str) -> str:
    """``text`` with the Markdown section starting at the line ``heading`` (up to the next heading of
    the same or a higher level, or the end) replaced by ``section``; appended when absent."""
    level = len(heading) - len(heading.lstrip("#"))
    lines = text.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.rstrip() == heading), None)
    if start is None:
        body = text if not text or text.endswith("\n") else text + "\n"
        return body + ("\n" if body else "") + section
    end = len(lines)
    fence = False
    for i in range(start + 1, len(lines)):
        if lines[i].startswith("```"):
            fence = not fence
        match = re.match(r"^(#+)\s", lines[i])
        if not fence and match and len(match.group(1)) <= level:
            end = i
            break
    tail = "".join(lines[end:])
    return "".join(lines[:start]) + section + ("\n" + tail if tail else "")


def write_model_card_evaluation(readme: Path, section: str) -> None:
    """Write ``section`` into a model folder's ``README.md`` atomically, replacing an older
    ``## Evaluation`` section (the rest of the card, written by ``train``, is kept)."""
    old = readme.read_text(encoding="utf-8") if readme.is_file() else ""
    atomic_write_text(readme, replace_section(old, CARD_HEADING, section))
