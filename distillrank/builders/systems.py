"""The evaluate stage's systems built from the config, for :func:`distillrank.evaluation.systems.evaluate_target`:
the first stage re-rankers score, each system's :class:`~distillrank.ranking.Ranker` or corpus index,
and its model folder."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from distillrank import artifacts, keys, sharding
from distillrank.builders import components, hardware
from distillrank.builders.evaluation import reranks
from distillrank.builders.mining import dense_candidates
from distillrank.errors import ConfigError
from distillrank.evaluation.dense import (
    ScratchIndex,
    cached_corpus_embeddings,
    encoding_rate,
    model_key,
    scratch_index,
)
from distillrank.evaluation.systems import KeptRuns
from distillrank.mining.first_stage import RerankCandidates
from distillrank.models.half_weights import frozen
from distillrank.models.hub import resolve_model
from distillrank.ranking import Ranker
from distillrank.runtime import Runtime
from distillrank.students.factory import as_student, load_student
from distillrank.validation import allows_external, instantiate_checked
from distillrank.workspace import cache_dir


def system_folder(cfg: DictConfig, name: str) -> Path | None:
    """The saved weights of a student system (None for the untrained student, built in memory)."""
    if name == "student":
        _, train_dir = keys.require(cfg, artifacts.TRAIN)
        return train_dir / artifacts.MODEL
    if name in ("student_init", "bm25", "teacher"):
        return None
    return resolve_model(cfg.evaluate.checkpoints[name])


class ConfigSystems:
    """The systems of ``cfg``'s evaluation, each run under its model's runtime (:meth:`runtime_for`:
    ``hardware``, resolved per model under ``hardware=auto``); bi-encoders encode their corpus into
    ``scratch``."""

    def __init__(self, cfg: DictConfig, scratch: Path) -> None:
        self.cfg, self.scratch = cfg, scratch
        self.cache_root = cache_dir(cfg)
        self._bm25: dict[str, KeptRuns] = {}  # collection fingerprint -> its index, loaded once
        self._runtimes: dict[str, Runtime] = {}

    def runtime_for(self, name: str) -> Runtime:
        """The runtime of a system: the teacher's for ``teacher``, the student's (the precision it
        trained in) for every other."""
        role = "teacher" if name == "teacher" else "student"
        if role not in self._runtimes:
            self._runtimes[role] = hardware.runtime(self.cfg, role)
        return self._runtimes[role]

    def reranks(self, name: str) -> bool:
        return reranks(self.cfg, name)

    def bm25(self, coll) -> KeptRuns:
        """The collection's BM25 index, loaded once per evaluation; its runs are kept (:class:`KeptRuns`)."""
        if coll.fingerprint not in self._bm25:
            self._bm25[coll.fingerprint] = KeptRuns(components.bm25_index(self.cfg, coll))
        return self._bm25[coll.fingerprint]

    def candidates(self, coll, queries) -> RerankCandidates:
        """BM25 or a bi-encoder (``evaluate.first_stage``), top ``evaluate.rerank_depth``."""
        ev = self.cfg.evaluate
        if ev.first_stage == "dense" and not ev.first_stage_model:
            raise ConfigError("evaluate.first_stage=dense needs evaluate.first_stage_model (a bi-encoder)")

        def search(texts: list[str], depth: int, progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
            if ev.first_stage == "bm25":
                return self.bm25(coll).search(texts, depth, progress=progress)
            dense_cfg = OmegaConf.create(OmegaConf.to_container(self.cfg, resolve=True))
            dense_cfg.mining.model = ev.first_stage_model
            dense_cfg = hardware.for_role(dense_cfg, "mining")
            rows, scores, _ = dense_candidates(dense_cfg, coll, texts, depth, progress, sharding.from_env())
            return rows, scores

        run_search = None
        if ev.first_stage == "bm25":  # BM25's run of these queries at this depth, when made already

            def run_search(texts: list[str], depth: int, progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
                return self.bm25(coll).run(texts, depth, progress=progress)

        return RerankCandidates(search, int(ev.rerank_depth), coll, queries, run_search)

    def ranker(self, name: str) -> Ranker:
        """The ranker of a system: the teacher, the untrained student (built in memory), or a saved
        student (``student``, a checkpoint), loaded on the CPU in eval mode.

        A student is frozen here, as the teachers are: it is only evaluated, and under a bf16 / fp16
        runtime (:meth:`runtime_for`) its linear weights are stored in that dtype once
        (:func:`~distillrank.models.half_weights.frozen`: the same scores as autocast's
        casts every forward, bit for bit)."""
        cfg = self.cfg
        if name == "teacher":
            return components.teacher(cfg)
        folder = system_folder(cfg, name)
        if folder is None:
            student = as_student(instantiate_checked(cfg.student, "student", allows_external(cfg)))
        else:
            student = load_student(folder)
        return frozen(student, self.runtime_for(name).precision)

    def dense(self, name: str, coll, stack: ExitStack) -> tuple[ScratchIndex, Path | None]:
        """A retrieving system's corpus encoded into a scratch index that lives as long as ``stack``;
        also the model's folder (None for a model built in memory)."""
        cfg, runtime = self.cfg, self.runtime_for(name)
        ev = cfg.evaluate
        ranker = self.ranker(name)
        if not ranker.retrieves:
            raise ConfigError(f"cannot run {name} ({ranker.kind}) as a dense retriever")
        encoder = ranker.encoder(runtime)
        folder = None if name == "teacher" else system_folder(cfg, name)
        if name == "teacher" or (folder is not None and runtime.backend == "torch"):
            # corpus embeddings through the workspace cache, encoded once per model and settings:
            # the frozen teacher's are shared with the score stage and feature distillation, a saved
            # student's (keyed by its weights, as the dense miner keys mining.model) with a
            # re-mining by it and with later evaluations; the rate is then timed on a sample
            model_fp = components.teacher_fingerprint(cfg) if name == "teacher" else model_key(folder)
            matrix, rate, _ = cached_corpus_embeddings(
                encoder, coll, self.cache_root, model_fp, ev.batch_size, ev.chunk_size, runtime, name=name,
                share=sharding.from_env(),  # under torchrun each rank encodes its part
            )  # fmt: skip
            if rate is None:
                rate = encoding_rate(encoder, coll, ev.batch_size, runtime, seed=cfg.seed)
            index = ScratchIndex(encoder, coll, matrix, rate, ev.batch_size, ev.chunk_size, runtime)
            return index, ranker.weights_folder()
        # the untrained student (built in memory, no weights to key it by)
        index = stack.enter_context(
            scratch_index(encoder, coll, ev.batch_size, ev.chunk_size, runtime, self.scratch, name)
        )
        return index, ranker.weights_folder()
