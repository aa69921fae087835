"""Evaluation systems on one collection: each system's TREC run, its measures and its speed.

A system retrieves over the whole corpus (BM25; a bi-encoder, by exact dense search over a scratch
index of its corpus embeddings) or re-ranks the first stage's candidates (every other ranker,
through :meth:`~distillrank.ranking.Ranker.score_pairs`;
:class:`~distillrank.mining.first_stage.RerankCandidates`). Its results are kept in
``<target folder>/<system>/`` (``run.trec``, ``metrics.json``, sealed) under the system's key, so
a system whose key has not changed is read back instead of run again. The hybrid systems follow
from the ``student`` and ``bm25`` runs (:mod:`distillrank.evaluation.hybrid_systems`).

Plain arguments only: the builders (:mod:`distillrank.builders.systems`) make the systems from the
config and hand them over as a :class:`Systems`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Protocol

import numpy as np

from distillrank.artifacts import METRICS, RUN
from distillrank.evaluation.dense import ScratchIndex, latency_ms
from distillrank.evaluation.hybrid_systems import HYBRID, chooses_alpha, evaluate_hybrid
from distillrank.evaluation.metrics import compute_metrics
from distillrank.evaluation.runs import write_trec_run
from distillrank.evaluation.targets import Settings, Target
from distillrank.mining.first_stage import RerankCandidates
from distillrank.ranking import Pairs, Ranker, RankerKind
from distillrank.runtime import Runtime
from distillrank.workspace import atomic_write_json, drop_unreadable, seal, usable_entry

log = logging.getLogger(__name__)


class Systems(Protocol):
    """The systems of an evaluation, built (:class:`distillrank.builders.systems.ConfigSystems`),
    each run under ``runtime_for(name)``; ``cache_root``: the workspace cache (where a BM25
    teacher's index lies)."""

    cache_root: Path

    def runtime_for(self, name: str) -> Runtime:
        """The runtime the system's model runs in."""

    def reranks(self, name: str) -> bool:
        """Whether the system re-ranks the first stage's candidates instead of retrieving."""

    def candidates(self, coll, queries: list[tuple[str, str]]) -> RerankCandidates:
        """The first stage's candidates for the re-rankers."""

    def ranker(self, name: str) -> Ranker:
        """The system's ranker (a teacher or a student)."""

    def dense(self, name: str, coll, stack: ExitStack) -> tuple[ScratchIndex, Path | None]:
        """A bi-encoder's corpus index, living as long as ``stack``, and its model folder."""

    def bm25(self, coll) -> KeptRuns:
        """The BM25 index of ``coll``, loaded once, its whole-query-set runs kept."""


class KeptRuns:
    """A first-stage index (BM25) whose runs over a whole query set are kept for the evaluation:
    BM25 as a system, as the re-rankers' first stage and as the hybrid systems' half runs once
    when they ask for the same queries at the same depth (``evaluate.top_k`` and
    ``evaluate.rerank_depth`` are both 100 by default). A run at another depth is its own search,
    as before: the top of a deeper list may order equal scores differently. Single queries
    (:meth:`search`, timed for the latency) are searched each time."""

    def __init__(self, index) -> None:
        self.index = index
        self._runs: dict[tuple[tuple[str, ...], int], tuple[np.ndarray, np.ndarray]] = {}
        self.searches = 0  # whole-set searches made (the rest were kept runs)

    def run(self, texts: Sequence[str], depth: int, progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Rows and scores [Q, depth] of ``texts`` (:meth:`search`), searched once per evaluation."""
        key = (tuple(texts), int(depth))
        if key not in self._runs:
            self.searches += 1
            self._runs[key] = self.index.search(list(texts), int(depth), progress=progress)
        return self._runs[key]

    def search(self, texts: Sequence[str], depth: int, progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """The index's own search, not kept."""
        return self.index.search(texts, depth, progress=progress)


def params(model) -> int:
    """The parameter count of a torch module."""
    return sum(p.numel() for p in model.parameters())


_WEIGHT_FILES = ("*.safetensors", "*.bin", "*.pt", "*.npy")


def disk_mb(folder: Path | None) -> float | None:
    """On-disk size of a model's (or index's) weight files in MB; None when it lives in memory only."""
    if folder is None or not Path(folder).is_dir():
        return None
    files = {f for pattern in _WEIGHT_FILES for f in Path(folder).rglob(pattern) if f.is_file()}
    return sum(f.stat().st_size for f in files) / 1e6


def _rerank(systems: Systems, name: str, coll, queries, first: RerankCandidates, settings: Settings) -> dict:
    """Re-rank the first stage's candidates with one system."""
    ranker, runtime = systems.ranker(name), systems.runtime_for(name)
    # the parameters of its float weights (an int8 copy keeps its linear weights outside parameters();
    # a bf16 one counts the same, and asking for fp32 would load a frozen teacher's weights twice)
    module = ranker.module(dataclasses.replace(runtime, precision="fp32") if runtime.int8 else runtime)
    if module is not None:
        module.to(runtime.device)
    batch = None if name == "teacher" else settings.batch_size  # a teacher batches as configured

    def score_fn(queries, passages, pair_q, pair_p, qids, docids, progress=True) -> np.ndarray:
        pairs = Pairs(queries, passages, pair_q, pair_p, qids=qids, docids=docids, collection=coll,
                      cache_root=systems.cache_root)
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
    if ranker.kind is not RankerKind.PRECOMPUTED:  # looked-up scores have no query of their own to time
        latency = latency_ms(rerank_one, [t for _, t in queries], settings.latency_queries)
    return {
        "run": run,
        "passages_per_s": rate,  # (query, passage) pairs re-ranked per second
        "parameters": params(module) if module is not None else None,
        "latency": latency,
        "disk_mb": disk_mb(ranker.weights_folder()),
    }


def _bm25(index: KeptRuns, coll, queries, settings: Settings) -> dict:
    """BM25 retrieving over the whole corpus (its run kept for the re-rankers' first stage)."""
    texts = [t for _, t in queries]
    rows, scores = index.run(texts, settings.top_k)
    doc_ids = coll.doc_ids()
    run = {
        qid: {doc_ids[r]: float(s) for r, s in zip(rows[i], scores[i], strict=True) if r >= 0}
        for i, (qid, _) in enumerate(queries)
    }
    latency = latency_ms(lambda t: index.search([t], settings.top_k, progress=False), texts, settings.latency_queries)
    return {"run": run, "passages_per_s": None, "parameters": None, "latency": latency, "disk_mb": None}


def dense_result(index: ScratchIndex, folder: Path | None, queries, settings: Settings) -> dict:
    """A bi-encoder's run over its index, encoding rate, single-query latency (encode + exact search)."""
    run = index.retrieve(queries, settings.top_k)
    texts = [t for _, t in queries]
    latency = latency_ms(lambda text: index.search([text], settings.top_k, 1), texts, settings.latency_queries)
    return {
        "run": run,
        "passages_per_s": index.rate,
        "parameters": params(index.encoder),
        "latency": latency,
        "disk_mb": disk_mb(folder),
    }


def _evaluate_system(systems: Systems, name: str, coll, queries, first: RerankCandidates, settings: Settings) -> dict:
    """Run one system; returns its run, the encoding (or re-ranking) rate and the parameter count."""
    if systems.reranks(name):
        return _rerank(systems, name, coll, queries, first, settings)
    if name == "bm25":
        return _bm25(systems.bm25(coll), coll, queries, settings)
    with ExitStack() as stack:
        index, folder = systems.dense(name, coll, stack)
        return dense_result(index, folder, queries, settings)


def cached(sys_dir: Path, key: str, force: bool = False) -> dict | None:
    """A system's saved results when they carry ``key`` (and ``force`` is off), else None.

    The system's folder (``metrics.json``, ``run.trec``) is a cache entry sealed by :func:`record`:
    one that does not match its checksums (a truncated run file) or cannot be read is dropped with a
    warning and measured again. The evaluate stage's lock covers it.
    """
    saved = sys_dir / METRICS
    if force or not usable_entry(sys_dir, "saved evaluation"):
        return None
    try:
        previous = json.loads(saved.read_text(encoding="utf-8"))
        if (sys_dir / RUN).is_file() and previous.get("key") == key:
            return previous
    except (OSError, ValueError, AttributeError) as err:
        drop_unreadable(sys_dir, "saved evaluation", err)
    return None


def record(target: Target, name: str, key: str, out: dict, measures: Sequence[str]) -> dict:
    """Measure a system's run, write ``<system>/run.trec`` and ``<system>/metrics.json``; the result."""
    sys_dir = target.folder / name
    aggregate, per_query = compute_metrics(target.qrels, out["run"], list(measures))
    write_trec_run(sys_dir / RUN, out["run"], tag=f"distillrank-{name}")
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
    atomic_write_json(sys_dir / METRICS, result)
    seal(sys_dir)  # last: a system killed before this has no seal and is measured again
    return result


def evaluate_target(
    target: Target, names: list[str], keys: dict[str, str], systems: Systems, settings: Settings, force: bool = False
) -> dict[str, dict]:
    """Every system ``names`` on one collection; a system whose saved results carry its key is reused.

    The hybrid systems come after the others, from their ``student`` and ``bm25`` run files; when one
    of them is to be computed, the student's corpus matrix (encoded once, for its own run) is kept
    for the dev queries and the latency, or encoded when the student's results were reused.

    Returns ``{system: {"key", "metrics", "per_query", "passages_per_s", "parameters", "latency",
    "disk_mb", "queries"}}`` (and ``"hybrid"`` for the hybrid systems), also saved as
    ``<target.folder>/<system>/metrics.json`` with the run file.
    """
    saved = {n: cached(target.folder / n, keys[n], force) for n in names}
    pending = [n for n in names if n in HYBRID and saved[n] is None]
    results: dict[str, dict] = {}
    first = systems.candidates(target.coll, target.queries)
    with ExitStack() as stack:
        student: ScratchIndex | None = None
        for name in names:
            if saved[name] is not None:
                log.info("evaluate: %s on %s up to date, reused", name, target.name)
                results[name] = saved[name]
                continue
            if name in HYBRID:
                continue
            log.info("evaluate: %s on %s/%s (%d queries)", name, target.name, target.split, len(target.queries))
            if name == "student" and pending:  # keep the student's corpus matrix for the hybrid systems
                student, folder = systems.dense(name, target.coll, stack)
                out = dense_result(student, folder, target.queries, settings)
            else:
                out = _evaluate_system(systems, name, target.coll, target.queries, first, settings)
            results[name] = record(target, name, keys[name], out, settings.measures)
        if pending:
            if student is None and (settings.latency_queries or chooses_alpha(settings, target, pending)):
                student, _ = systems.dense("student", target.coll, stack)
            log.info("evaluate: %s on %s/%s", " and ".join(pending), target.name, target.split)
            bm25 = systems.bm25(target.coll)
            for name, out in evaluate_hybrid(target, pending, results, student, bm25, settings).items():
                results[name] = record(target, name, keys[name], out, settings.measures)
    return {n: results[n] for n in names}
