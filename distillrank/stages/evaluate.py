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

Hybrid systems: with ``evaluate.hybrid`` (default on), when ``bm25`` and a retrieving bi-encoder
``student`` are both evaluated, their run files are fused query by query into ``hybrid_rrf``
(reciprocal-rank fusion, ``evaluate.hybrid_rrf_k``) and ``hybrid`` (α·minmax(student) +
(1−α)·minmax(bm25), :mod:`distillrank.evaluation.hybrid`), top ``evaluate.top_k`` of the union.
α is ``evaluate.hybrid_alpha``, or, when that is null, chosen by a grid on up to
``evaluate.hybrid_dev_queries`` judged queries (sampled with ``seed``) of the collection's dev split,
else its train split, which both retrievers then run; without either split it is
:data:`~distillrank.evaluation.hybrid.DEFAULT_ALPHA`. How α was set is kept under the system's
``"hybrid"``. With a baseline other than ``bm25`` the hybrid systems are also tested against ``bm25``
(``"significance_bm25"``, marked ▲ / ▼). Their latency times BM25, the student's query encoding and
search, and the fusion, one query at a time; passages/s, parameters and disk are the student's.

Model card: when ``student`` is evaluated, the ``## Evaluation`` section of the trained model's
``README.md`` (``train/model/README.md``) is written (or replaced): the student's measures per
collection and split, and the command that produced them.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import shlex
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from hydra.utils import get_object
from omegaconf import DictConfig, OmegaConf

from distillrank.config import DataConfig, conf_dir
from distillrank.data.collection import Collection
from distillrank.errors import ConfigError
from distillrank.evaluation.dense import (
    ScratchIndex,
    cached_corpus_embeddings,
    encoding_rate,
    latency_ms,
    scratch_index,
)
from distillrank.evaluation.hybrid import (
    ALPHA_GRID,
    DEFAULT_ALPHA,
    choose_alpha,
    convex_runs,
    ranking,
    rrf_runs,
)
from distillrank.evaluation.metrics import compute_metrics, parse_measures
from distillrank.evaluation.runs import read_trec_run, write_trec_run
from distillrank.evaluation.significance import compare_to_baseline
from distillrank.evaluation.tables import hybrid_note, results_table, student_card_table
from distillrank.mining.fusion import convex_fuse, rrf_fuse
from distillrank.models.hub import resolve_model
from distillrank.ranking import Pairs, Ranker, RankerKind
from distillrank.runtime import Runtime, configure
from distillrank.stages import context, mine, train
from distillrank.validation import allows_external, check_instantiable, instantiate_checked
from distillrank.workspace import (
    Manifest,
    atomic_write_json,
    atomic_write_text,
    cache_dir,
    current_manifest,
    dir_fingerprint,
    drop_unreadable,
    fingerprint,
    locked_stage,
    require_stage,
    seal,
    stage_dir,
    to_plain,
    usable_entry,
)

log = logging.getLogger(__name__)

STAGE = "evaluate"
HYBRID = ("hybrid_rrf", "hybrid")  # the student fused with BM25: reciprocal ranks, convex scores


def _split(cfg: DictConfig) -> str:
    return cfg.evaluate.split or cfg.data.test_split


def hybrid_enabled(cfg: DictConfig) -> bool:
    """Whether the hybrid systems are evaluated: ``evaluate.hybrid`` on, ``bm25`` and ``student``
    among ``evaluate.systems``, and the student a bi-encoder that retrieves (not re-ranks)."""
    ev = cfg.evaluate
    systems = list(ev.systems)
    if not ev.get("hybrid", False) or "bm25" not in systems or "student" not in systems:
        return False
    return not reranks(cfg, "student")


def _system_names(cfg: DictConfig) -> list[str]:
    hybrid = list(HYBRID) if hybrid_enabled(cfg) else []
    clash = [n for n in cfg.evaluate.checkpoints if n in hybrid]
    if clash:
        raise ConfigError(
            f"evaluate.checkpoints {clash} clash with the hybrid systems {list(HYBRID)}; "
            "rename them or set evaluate.hybrid=false"
        )
    return list(cfg.evaluate.systems) + hybrid + list(cfg.evaluate.checkpoints)


def _check_hybrid(cfg: DictConfig) -> None:
    """The hybrid settings, checked before any work (only when the hybrid systems are evaluated)."""
    if not hybrid_enabled(cfg):
        return
    ev = cfg.evaluate
    if ev.hybrid_alpha is not None and not 0.0 <= float(ev.hybrid_alpha) <= 1.0:
        raise ConfigError(
            f"evaluate.hybrid_alpha must be in [0, 1] or null (chosen on dev queries), got {ev.hybrid_alpha}"
        )
    if ev.hybrid_dev_queries is not None and int(ev.hybrid_dev_queries) < 1:
        raise ConfigError(
            f"evaluate.hybrid_dev_queries must be a positive number or null (all), got {ev.hybrid_dev_queries}"
        )
    if int(ev.hybrid_rrf_k) < 0:
        raise ConfigError(f"evaluate.hybrid_rrf_k must be >= 0, got {ev.hybrid_rrf_k}")
    try:
        parse_measures([str(ev.hybrid_measure)])
    except ConfigError:
        raise ConfigError(
            f"evaluate.hybrid_measure: {ev.hybrid_measure!r} is not an ir_measures measure (e.g. nDCG@10, RR@10)"
        ) from None


def dev_split(data: DictConfig, coll: Collection, test_split: str) -> str | None:
    """The split α is chosen on: the collection's ``dev_split``, else its ``train_split``, the first
    that is loaded, has a judged query with a relevant document and is not the test split; None
    when there is none (then α is the default, 0.5)."""
    for split in (data.get("dev_split"), data.get("train_split")):
        if not split or split == test_split or split not in coll.splits():
            continue
        if any(any(r > 0 for r in docs.values()) for docs in coll.qrels[split].values()):
            return str(split)
    return None


def _hybrid_what(cfg: DictConfig, name: str, coll: Collection, split: str, data: DictConfig) -> dict:
    """What decides a hybrid system's run: its parts' keys and the fusion (α, or how it is chosen)."""
    ev = cfg.evaluate
    what: dict = {
        "hybrid": name,
        "bm25": system_key(cfg, "bm25", coll, split, data),
        "student": system_key(cfg, "student", coll, split, data),
    }
    if name == "hybrid_rrf":
        return {**what, "k": int(ev.hybrid_rrf_k)}
    if ev.hybrid_alpha is not None:
        return {**what, "alpha": float(ev.hybrid_alpha)}
    dev = dev_split(data, coll, split)
    trained_on = data.name == cfg.data.name and trains_on(cfg, dev)
    if dev is None or trained_on and not holds_out(cfg):
        return {**what, "alpha": "default", "default": DEFAULT_ALPHA}
    return {
        **what,
        "alpha": "dev",
        "dev_split": dev,
        "dev_queries": ev.hybrid_dev_queries,
        "seed": cfg.seed,
        "measure": str(ev.hybrid_measure),
        "grid": list(ALPHA_GRID),
        "default": DEFAULT_ALPHA,
        "held_out": trained_on,  # on the main collection's training split: only the held-out queries
    }


def trains_on(cfg: DictConfig, split: str | None) -> bool:
    """Whether the student is trained on the judged queries of the main collection's ``split``
    (its training split, unless the training queries are synthetic)."""
    return split is not None and str(cfg.queries.method) == "none" and split == cfg.data.train_split


def holds_out(cfg: DictConfig) -> bool:
    """Whether training sets training queries aside (``train.dev_queries`` / ``train.dev_fraction``)."""
    return bool(cfg.train.dev_queries or cfg.train.dev_fraction)


def system_key(
    cfg: DictConfig,
    name: str,
    coll: Collection | None = None,
    split: str | None = None,
    data: DictConfig | None = None,
) -> str:
    """What decides one system's results on a collection's test split (default: ``data``'s).

    ``data``: that collection's data config (default ``cfg.data``), for the hybrid systems' dev split.
    """
    coll = coll if coll is not None else context.collection(cfg)
    split = split or _split(cfg)
    if name in HYBRID:
        what = _hybrid_what(cfg, name, coll, split, data if data is not None else cfg.data)
    elif name == "bm25":
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
            "collection": coll.fingerprint,
            "split": split,
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
            what["collections"][name] = {n: system_key(cfg, n, coll, split, data) for n in _system_names(cfg)}
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
    data: DictConfig | None = None  # the collection's data config (the hybrid systems' dev split)
    dev_split: str | None = None  # the split the hybrid α is chosen on (None: the default α)
    # when dev_split is the split the student trained on: the queries train.dev_queries /
    # train.dev_fraction held out of training, α's only dev queries
    held_out: list[str] | None = None
    default_why: str | None = None  # why α is the default (dev_split None)

    @property
    def header(self) -> str:
        return f"{self.name} / {self.split}: {len(self.queries)} queries, {len(self.coll.corpus):,} passages"


def _judged(coll: Collection, split: str) -> tuple[list[tuple[str, str]], dict[str, dict[str, int]]]:
    """The (qid, text) of a split's queries with at least one relevant document, and their qrels."""
    qrels = {q: docs for q, docs in coll.qrels[split].items() if any(r > 0 for r in docs.values())}
    queries = [(q, t) for q, t in coll.split_queries(split) if q in qrels]
    return queries, {q: qrels[q] for q, _ in queries}


def _target(name: str, coll: Collection, split: str, folder: Path, rel: str, data: DictConfig) -> Target:
    qrels = {q: docs for q, docs in coll.qrels[split].items() if any(r > 0 for r in docs.values())}
    queries = [(q, t) for q, t in coll.split_queries(split) if q in qrels]
    if not queries:
        raise ConfigError(f"collection {name!r} has no {split!r} query with a relevant document to evaluate")
    return Target(name, coll, split, queries, qrels, folder, rel, data, dev_split(data, coll, split))


def targets(cfg: DictConfig) -> list[Target]:
    """The main collection (``data``, split ``evaluate.split`` or its test split), then the extras."""
    folder = stage_dir(cfg, STAGE)
    coll = context.collection(cfg)
    split = _split(cfg)
    if split not in coll.splits():
        raise ConfigError(
            f"evaluate split {split!r} is not among the qrels splits {coll.splits()} of '{coll.name}'"
        )
    main = _target(str(cfg.data.name), coll, split, folder, ".", cfg.data)
    if trains_on(cfg, main.dev_split):  # the student's own training queries are no dev queries
        held = stage_dir(cfg, train.STAGE) / train.DEV_QUERIES
        if holds_out(cfg) and held.is_file():
            main.held_out = held.read_text().split()
        else:
            main.default_why = (
                f"the judged {main.dev_split} queries of {main.name} are the student's training queries; "
                "train.dev_fraction holds some out to choose α on"
            )
            main.dev_split = None
    out = [main]
    for name, data in extra_collections(cfg):
        extra, extra_split = _extra_split(cfg, name, data)
        out.append(_target(name, extra, extra_split, folder / name, name, data))
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
    if name == "bm25" or name in HYBRID:  # the hybrid systems fuse two retrievers' runs
        return False
    if cfg.evaluate.mode == "rerank":
        return True
    if name == "teacher":
        return not context.teacher(cfg).retrieves
    from distillrank.students.factory import detect, kind_of_builder

    if name in ("student_init", "student"):  # the kind the student config builds
        check_instantiable(cfg.student, "student", allows_external(cfg))
        return not kind_of_builder(get_object(str(cfg.student._target_))).retrieves
    return not detect(resolve_model(cfg.evaluate.checkpoints[name])).retrieves


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


def _ranker(cfg: DictConfig, name: str) -> Ranker:
    """The ranker of a system: the teacher, the untrained student (built in memory), or a saved
    student (``student``, a checkpoint), loaded on the CPU in eval mode."""
    if name == "teacher":
        return context.teacher(cfg)
    from distillrank.students.factory import as_student, load_student

    folder = _system_folder(cfg, name)
    if folder is None:
        return as_student(instantiate_checked(cfg.student, "student", allows_external(cfg))).eval()
    return load_student(folder)


def _rerank(cfg: DictConfig, name: str, coll, queries, first: _FirstStage, runtime: Runtime) -> dict:
    """Re-rank the first stage's top ``rerank_depth`` with one system."""
    ranker = _ranker(cfg, name)
    # the parameters of its float weights (an int8 copy keeps its linear weights outside parameters())
    module = ranker.module(dataclasses.replace(runtime, precision="fp32"))
    if module is not None:
        module.to(runtime.device)
    batch = None if name == "teacher" else cfg.evaluate.batch_size  # a teacher batches as configured

    def score(queries, passages, pair_q, pair_p, qids, docids, progress=True) -> np.ndarray:
        pairs = Pairs(queries, passages, pair_q, pair_p, qids=qids, docids=docids, collection=coll,
                      cache_root=cache_dir(cfg))
        return ranker.score_pairs(pairs, runtime, batch_size=batch, progress=progress)

    candidates = first.run()
    qtext = dict(queries)
    qids = [q for q, _ in queries]
    docids = sorted({d for q in qids for d, _ in candidates[q]})
    col = {d: i for i, d in enumerate(docids)}
    pair_q = np.array([i for i, q in enumerate(qids) for _ in candidates[q]], dtype=np.int64)
    pair_p = np.array([col[d] for q in qids for d, _ in candidates[q]], dtype=np.int64)
    passages = coll.passage_texts([coll.doc_row(d) for d in docids])
    start = time.perf_counter()
    scores = score([qtext[q] for q in qids], passages, pair_q, pair_p, qids, docids)
    rate = len(pair_q) / max(time.perf_counter() - start, 1e-9)
    run: dict[str, dict[str, float]] = {q: {} for q in qids}
    for qi, pi, sc in zip(pair_q.tolist(), pair_p.tolist(), np.asarray(scores).tolist(), strict=True):
        run[qids[qi]][docids[pi]] = float(sc)

    doc_ids = coll.doc_ids()

    def rerank_one(text: str) -> None:  # the first stage for one query, then the re-ranker over its list
        rows, _ = first.search([text], progress=False)
        kept = [int(r) for r in rows[0] if r >= 0]
        score([text], coll.passage_texts(kept), np.zeros(len(kept), np.int64), np.arange(len(kept)),
              ["latency"], [doc_ids[r] for r in kept], False)

    latency = None
    if ranker.kind is not RankerKind.PRECOMPUTED:  # looked-up scores have no query of their own to time
        latency = latency_ms(rerank_one, [t for _, t in queries], cfg.evaluate.latency_queries)
    return {
        "run": run,
        "passages_per_s": rate,  # (query, passage) pairs re-ranked per second
        "parameters": _params(module) if module is not None else None,
        "latency": latency,
        "disk_mb": _disk_mb(ranker.weights_folder()),
    }


def _evaluate_system(cfg: DictConfig, name: str, coll, queries, runtime: Runtime, scratch: Path,
                     first: _FirstStage | None = None) -> dict:
    """Run one system; returns its run, the encoding (or re-ranking) rate and the parameter count."""
    ev = cfg.evaluate
    if reranks(cfg, name):
        return _rerank(cfg, name, coll, queries, first or _FirstStage(cfg, coll, queries), runtime)
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
    with ExitStack() as stack:
        index, folder = _open_dense(cfg, name, coll, runtime, scratch, stack)
        return _dense_result(cfg, index, folder, queries)


def _open_dense(
    cfg: DictConfig, name: str, coll, runtime: Runtime, scratch: Path, stack: ExitStack
) -> tuple[ScratchIndex, Path | None]:
    """A retrieving system's corpus encoded into a scratch index that lives as long as ``stack``;
    also the model's folder (None for a model built in memory)."""
    ev = cfg.evaluate
    ranker = _ranker(cfg, name)
    if not ranker.retrieves:
        raise ConfigError(f"cannot run {name} ({ranker.kind}) as a dense retriever")
    encoder = ranker.encoder(runtime)
    if name == "teacher":
        # the frozen teacher's corpus embeddings are shared through the workspace cache with the
        # score stage and feature distillation: encoded once; the rate is then timed on a sample
        matrix, rate, _ = cached_corpus_embeddings(
            encoder, coll, cache_dir(cfg), context.teacher_fingerprint(cfg), ev.batch_size, ev.chunk_size,
            runtime, name=name,
        )
        if rate is None:
            rate = encoding_rate(encoder, coll, ev.batch_size, runtime, seed=cfg.seed)
        index = ScratchIndex(encoder, coll, matrix, rate, ev.batch_size, ev.chunk_size, runtime)
        return index, ranker.weights_folder()
    index = stack.enter_context(
        scratch_index(encoder, coll, ev.batch_size, ev.chunk_size, runtime, scratch, name)
    )
    return index, ranker.weights_folder()


def _dense_result(cfg: DictConfig, index: ScratchIndex, folder: Path | None, queries) -> dict:
    """A bi-encoder's run over its index, encoding rate, single-query latency (encode + exact search)."""
    ev = cfg.evaluate
    run = index.retrieve(queries, ev.top_k)
    texts = [t for _, t in queries]
    latency = latency_ms(lambda text: index.search([text], ev.top_k, 1), texts, ev.latency_queries)
    return {
        "run": run,
        "passages_per_s": index.rate,
        "parameters": _params(index.encoder),
        "latency": latency,
        "disk_mb": _disk_mb(folder),
    }


# --------------------------------------------------------------------------- hybrid systems
def _dev_set(cfg: DictConfig, target: Target) -> tuple[list[tuple[str, str]], dict[str, dict[str, int]]]:
    """The judged queries α is chosen on: ``evaluate.hybrid_dev_queries`` of ``target.dev_split``,
    sampled with ``seed`` (kept in the split's order), and their qrels."""
    queries, qrels = _judged(target.coll, target.dev_split)
    if target.held_out is not None:
        held = set(target.held_out)
        queries = [(q, t) for q, t in queries if q in held]
    n = cfg.evaluate.hybrid_dev_queries
    if n is not None and int(n) < len(queries):
        keep = sorted(np.random.default_rng(cfg.seed).permutation(len(queries))[: int(n)].tolist())
        queries = [queries[i] for i in keep]
    return queries, {q: qrels[q] for q, _ in queries}


def _chooses_alpha(cfg: DictConfig, target: Target, names: list[str]) -> bool:
    return "hybrid" in names and cfg.evaluate.hybrid_alpha is None and target.dev_split is not None


def _bm25_run(index, queries: list[tuple[str, str]], depth: int, doc_ids: list[str]) -> dict[str, dict]:
    """BM25's run ``{qid: {docid: score}}`` of ``(qid, text)`` queries, top ``depth`` each."""
    rows, scores = index.search([t for _, t in queries], depth, progress=False)
    return {
        qid: {doc_ids[r]: float(s) for r, s in zip(rows[i], scores[i], strict=True) if r >= 0}
        for i, (qid, _) in enumerate(queries)
    }


def _alpha(cfg: DictConfig, target: Target, student: ScratchIndex | None, bm25) -> tuple[float, dict]:
    """The convex system's α and how it was set: fixed, chosen on dev queries, or the default."""
    ev = cfg.evaluate
    if ev.hybrid_alpha is not None:
        return float(ev.hybrid_alpha), {"alpha": float(ev.hybrid_alpha), "alpha_from": "fixed"}
    if target.dev_split is None:
        why = target.default_why or f"{target.name} has no judged dev or train split besides {target.split!r}"
        log.info("evaluate: hybrid α = %g, the default: %s", DEFAULT_ALPHA, why)
        return DEFAULT_ALPHA, {"alpha": DEFAULT_ALPHA, "alpha_from": "default", "why": why}
    queries, qrels = _dev_set(cfg, target)
    held_out = target.held_out is not None
    log.info(
        "evaluate: hybrid α on %d %s%s queries of %s",
        len(queries), "held-out " if held_out else "", target.dev_split, target.name,
    )
    dense_dev = student.retrieve(queries, ev.top_k)
    bm25_dev = _bm25_run(bm25, queries, ev.top_k, target.coll.doc_ids())
    choice = choose_alpha(dense_dev, bm25_dev, qrels, str(ev.hybrid_measure), depth=ev.top_k)
    record = choice.to_dict()
    return choice.alpha, {
        "alpha": choice.alpha,
        "alpha_from": "dev",
        "dev_split": target.dev_split,
        "dev_queries": record.pop("queries"),
        "dev_held_out": held_out,
        "measure": record.pop("measure"),
        "dev_value": record.pop("value"),
        "curve": record.pop("curve"),
    }


def _evaluate_hybrid(
    cfg: DictConfig, target: Target, names: list[str], results: dict[str, dict], student: ScratchIndex | None
) -> dict[str, dict]:
    """The hybrid systems ``names`` from the ``student`` and ``bm25`` run files of ``target``.

    ``student``: the student's corpus index, needed to choose α on dev queries and to time queries
    (None when neither is to be done).
    """
    ev = cfg.evaluate
    depth = int(ev.top_k)
    dense_run = read_trec_run(target.folder / "student" / "run.trec")
    bm25_run = read_trec_run(target.folder / "bm25" / "run.trec")
    bm25 = mine.bm25_index(cfg, target.coll)
    doc_ids = target.coll.doc_ids()
    texts = [t for _, t in target.queries]
    parts = results["student"]
    out: dict[str, dict] = {}
    for name in names:
        if name == "hybrid_rrf":
            k = int(ev.hybrid_rrf_k)
            run = rrf_runs(dense_run, bm25_run, k, depth)
            info = {"method": "rrf", "k": k}

            def fuse(dense: dict, lexical: dict, k: int = k) -> list:
                return rrf_fuse([ranking(dense), ranking(lexical)], k, depth)
        else:
            alpha, info = _alpha(cfg, target, student, bm25)
            run = convex_runs(dense_run, bm25_run, alpha, depth)
            info = {"method": "convex", **info}

            def fuse(dense: dict, lexical: dict, alpha: float = alpha) -> list:
                return convex_fuse(dense, lexical, alpha, depth)

        latency = None
        if student is not None and ev.latency_queries:
            def answer(text: str, fuse=fuse) -> list:  # BM25, the student (encode + search), fusion
                lexical = _bm25_run(bm25, [("q", text)], depth, doc_ids)["q"]
                return fuse(student.search_one(text, depth), lexical)

            latency = latency_ms(answer, texts, ev.latency_queries)
        out[name] = {
            "run": run,
            "passages_per_s": parts.get("passages_per_s"),  # the student's corpus encoding
            "parameters": parts.get("parameters"),
            "latency": latency,
            "disk_mb": parts.get("disk_mb"),
            "hybrid": {**info, "fused": ["student", "bm25"], "depth": depth},
        }
    return out


def _cached(cfg: DictConfig, sys_dir: Path, key: str) -> dict | None:
    """A system's saved results when they carry ``key`` (and ``force`` is off), else None.

    The system's folder (``metrics.json``, ``run.trec``) is a cache entry sealed by :func:`_record`:
    one that does not match its checksums (a truncated run file) or cannot be read is dropped with a
    warning and measured again. The evaluate stage's lock covers it.
    """
    saved = sys_dir / "metrics.json"
    if cfg.force or not usable_entry(sys_dir, "saved evaluation"):
        return None
    try:
        previous = json.loads(saved.read_text(encoding="utf-8"))
        if (sys_dir / "run.trec").is_file() and previous.get("key") == key:
            return previous
    except (OSError, ValueError, AttributeError) as err:
        drop_unreadable(sys_dir, "saved evaluation", err)
    return None


def _record(cfg: DictConfig, target: Target, name: str, key: str, out: dict) -> dict:
    """Measure a system's run, write ``<system>/run.trec`` and ``<system>/metrics.json``; the result."""
    sys_dir = target.folder / name
    aggregate, per_query = compute_metrics(target.qrels, out["run"], list(cfg.evaluate.measures))
    write_trec_run(sys_dir / "run.trec", out["run"], tag=f"distillrank-{name}")
    result = {
        "key": key,
        "metrics": aggregate,
        "per_query": per_query,
        "passages_per_s": out["passages_per_s"],
        "parameters": out["parameters"],
        "latency": out["latency"],
        "disk_mb": out["disk_mb"],
        "queries": len(target.queries),
    }
    if "hybrid" in out:
        result["hybrid"] = out["hybrid"]
    atomic_write_json(sys_dir / "metrics.json", result)
    seal(sys_dir)  # last: a system killed before this has no seal and is measured again
    return result


def _evaluate_target(cfg: DictConfig, target: Target, runtime: Runtime, scratch: Path) -> dict[str, dict]:
    """Every system on one collection; a system whose saved results carry its current key is reused.

    The hybrid systems come after the others, from their ``student`` and ``bm25`` run files; when one
    of them is to be computed, the student's corpus matrix (encoded once, for its own run) is kept
    for the dev queries and the latency, or encoded when the student's results were reused.

    Returns ``{system: {"key", "metrics", "per_query", "passages_per_s", "parameters", "latency",
    "disk_mb", "queries"}}`` (and ``"hybrid"`` for the hybrid systems), also saved as
    ``<target.folder>/<system>/metrics.json`` with the run file.
    """
    names = _system_names(cfg)
    keys = {n: system_key(cfg, n, target.coll, target.split, target.data) for n in names}
    cached = {n: _cached(cfg, target.folder / n, keys[n]) for n in names}
    pending = [n for n in names if n in HYBRID and cached[n] is None]
    results: dict[str, dict] = {}
    first = _FirstStage(cfg, target.coll, target.queries)
    with ExitStack() as stack:
        student: ScratchIndex | None = None
        for name in names:
            if cached[name] is not None:
                log.info("evaluate: %s on %s up to date, reused", name, target.name)
                results[name] = cached[name]
                continue
            if name in HYBRID:
                continue
            log.info("evaluate: %s on %s/%s (%d queries)", name, target.name, target.split, len(target.queries))
            if name == "student" and pending:  # keep the student's corpus matrix for the hybrid systems
                student, folder = _open_dense(cfg, name, target.coll, runtime, scratch, stack)
                out = _dense_result(cfg, student, folder, target.queries)
            else:
                out = _evaluate_system(cfg, name, target.coll, target.queries, runtime, scratch, first)
            results[name] = _record(cfg, target, name, keys[name], out)
        if pending:
            if student is None and (cfg.evaluate.latency_queries or _chooses_alpha(cfg, target, pending)):
                student, _ = _open_dense(cfg, "student", target.coll, runtime, scratch, stack)
            log.info("evaluate: %s on %s/%s", " and ".join(pending), target.name, target.split)
            for name, out in _evaluate_hybrid(cfg, target, pending, results, student).items():
                results[name] = _record(cfg, target, name, keys[name], out)
    return {n: results[n] for n in names}


def hybrid_against_bm25(
    results: dict[str, dict], baseline: str | None, measures: list[str], alpha: float
) -> dict[str, dict] | None:
    """The hybrid systems tested against ``bm25`` when the baseline is another system (with the
    baseline ``bm25`` the main tests already are; with none, nothing is tested): Student's paired
    t-test, Holm across the hybrid systems. None when there is nothing to add."""
    fused = [n for n in HYBRID if n in results]
    if baseline is None or baseline == "bm25" or not fused or "bm25" not in results:
        return None
    per_query = {n: results[n].get("per_query", {}) for n in ("bm25", *fused)}
    return compare_to_baseline(per_query, "bm25", measures, alpha)


def _summary(
    results: dict[str, dict], significance: dict | None, against_bm25: dict | None = None
) -> dict[str, dict]:
    """What ``metrics.json`` keeps of each system: all but the per-query values, plus its tests
    (``significance`` against the baseline; ``significance_bm25`` for the hybrid systems)."""
    return {
        n: {
            **{k: v for k, v in r.items() if k != "per_query"},
            **({"significance": significance[n]} if significance and n in significance else {}),
            **({"significance_bm25": against_bm25[n]} if against_bm25 and n in against_bm25 else {}),
        }
        for n, r in results.items()
    }


@locked_stage(STAGE)
def run(cfg: DictConfig) -> Manifest:
    """Evaluate every configured system on every collection; results that are current are reused."""
    baseline = _baseline(cfg)
    _check_hybrid(cfg)
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
    against_bm25: dict[str, dict | None] = {}
    runtime = configure(cfg.hardware)
    for target in evaluated:
        results = _evaluate_target(cfg, target, runtime, folder / ".scratch")
        per_collection[target.name] = results
        significance[target.name] = (
            compare_to_baseline(
                {n: r.get("per_query", {}) for n, r in results.items()}, baseline, measures, cfg.evaluate.alpha
            )
            if baseline is not None
            else None
        )
        against_bm25[target.name] = hybrid_against_bm25(results, baseline, measures, cfg.evaluate.alpha)

    def table(name: str) -> str:
        text = results_table(
            per_collection[name], measures, significance[name], baseline=baseline, alpha=cfg.evaluate.alpha,
            bm25_significance=against_bm25[name],
        )
        note = hybrid_note(per_collection[name])
        return text + (f"\n{note}\n" if note else "")

    main = evaluated[0]
    mean = macro_average(per_collection, measures) if len(evaluated) > 1 else None
    if mean is None:
        text = f"{main.header}\n\n{table(main.name)}"
        metrics = _summary(per_collection[main.name], significance[main.name], against_bm25[main.name])
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
                    "systems": _summary(per_collection[t.name], significance[t.name], against_bm25[t.name]),
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
    alphas = {  # the convex hybrid's α per collection
        t.name: info["alpha"]
        for t in evaluated
        if "alpha" in (info := per_collection[t.name].get("hybrid", {}).get("hybrid", {}))
    }
    if alphas:
        counts["hybrid_alpha"] = alphas
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
            *[f"{n}/{part}" if t.rel == "." else f"{t.rel}/{n}/{part}" for t in evaluated
              for n in per_collection[t.name] for part in ("run.trec", "metrics.json")],
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
    ``## Evaluation`` section (the rest of the card, written by ``train``, is kept). The temporary
    file goes beside the model folder, never into it."""
    old = readme.read_text(encoding="utf-8") if readme.is_file() else ""
    atomic_write_text(readme, replace_section(old, CARD_HEADING, section), tmp_dir=readme.parent.parent)
