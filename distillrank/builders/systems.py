"""The evaluate stage's systems built from the config, for :func:`distillrank.evaluation.systems.evaluate_target`:
the first stage re-rankers score, each system's pair scorer or corpus index, and its model folder."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from distillrank import artifacts, keys
from distillrank.builders import components
from distillrank.builders.evaluation import reranks
from distillrank.errors import ConfigError
from distillrank.evaluation.dense import ScratchIndex, cached_corpus_embeddings, encoding_rate, scratch_index
from distillrank.mining.dense import dense_search
from distillrank.mining.first_stage import RerankCandidates
from distillrank.models.bi_encoder import BiEncoder
from distillrank.models.hub import resolve_model
from distillrank.runtime import autocast
from distillrank.students.factory import as_student, load_student
from distillrank.teachers import BiEncoderTeacher
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


def _teacher_module(teacher, device):
    """The teacher's torch module when it has one (for the parameter count); None otherwise."""
    for attr in ("cross_encoder", "encoder", "colbert", "seq2seq"):
        if hasattr(teacher, attr):
            return getattr(teacher, attr)(device)
    return None


class ConfigSystems:
    """The systems of ``cfg``'s evaluation, run on ``device`` in ``precision`` (inside the ``hardware``
    block); bi-encoders encode their corpus into ``scratch``."""

    def __init__(self, cfg: DictConfig, device, precision: str, scratch: Path) -> None:
        self.cfg, self.device, self.precision, self.scratch = cfg, device, precision, scratch

    def reranks(self, name: str) -> bool:
        return reranks(self.cfg, name)

    def bm25(self, coll):
        return components.bm25_index(self.cfg, coll)

    def candidates(self, coll, queries) -> RerankCandidates:
        """BM25 or a bi-encoder (``evaluate.first_stage``), top ``evaluate.rerank_depth``."""
        ev = self.cfg.evaluate
        if ev.first_stage not in ("bm25", "dense"):
            raise ConfigError(f"evaluate.first_stage={ev.first_stage!r}; expected bm25 or dense")
        if ev.first_stage == "dense" and not ev.first_stage_model:
            raise ConfigError("evaluate.first_stage=dense needs evaluate.first_stage_model (a bi-encoder)")

        def search(texts: list[str], depth: int, progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
            if ev.first_stage == "bm25":
                return self.bm25(coll).search(texts, depth, progress=progress)
            dense_cfg = OmegaConf.create(OmegaConf.to_container(self.cfg, resolve=True))
            dense_cfg.mining.model = ev.first_stage_model
            rows, scores, _ = dense_search(dense_cfg, coll, texts, depth, progress=progress)
            return rows, scores

        return RerankCandidates(search, int(ev.rerank_depth), coll, queries)

    def pair_scorer(self, name: str, coll):
        """``score(queries, passages, pair_q, pair_p, qids, docids) -> scores``, the module, its folder.

        ``coll``: the collection evaluated, bound to teachers that score over corpus statistics (BM25).
        """
        cfg, device, precision = self.cfg, self.device, self.precision
        if name == "teacher":
            teacher = components.bind_collection(components.teacher(cfg), coll, cache_dir(cfg))
            module = _teacher_module(teacher, device)

            def score_teacher(queries, passages, pair_q, pair_p, qids, docids, progress=True):
                return teacher.score(queries, passages, np.asarray(pair_q), np.asarray(pair_p), device, precision,
                                     progress, qids=qids, docids=docids)

            model_path = getattr(teacher, "model", None)
            folder = resolve_model(model_path) if isinstance(model_path, str) else None
            return score_teacher, module, folder
        folder = system_folder(cfg, name)
        student = as_student(instantiate_checked(cfg.student, "student", allows_external(cfg))) if folder is None else load_student(folder)
        student = student.to(device).eval()

        def score_student(queries, passages, pair_q, pair_p, qids, docids, progress=True):
            return student.rerank_scores(queries, passages, pair_q, pair_p, cfg.evaluate.batch_size,
                                         lambda: autocast(device, precision))

        return score_student, student, folder

    def times_rerank_latency(self, name: str) -> bool:
        return not self.cfg.teacher._target_.endswith("PrecomputedTeacher") or name != "teacher"

    def dense(self, name: str, coll, stack: ExitStack) -> tuple[ScratchIndex, Path | None]:
        """A bi-encoder system's corpus encoded into a scratch index that lives as long as ``stack``;
        also the model's folder (None for a model built in memory)."""
        cfg, device, precision = self.cfg, self.device, self.precision
        ev = cfg.evaluate
        if name == "teacher":
            teacher = components.teacher(cfg)
            if not isinstance(teacher, BiEncoderTeacher):
                raise ConfigError(f"cannot run teacher {cfg.teacher._target_} as a dense retriever")
            encoder = teacher.encoder(device, precision)
            # the frozen teacher's corpus embeddings are shared through the workspace cache with the
            # score stage and feature distillation: encoded once; the rate is then timed on a sample
            matrix, rate, _ = cached_corpus_embeddings(
                encoder, coll, cache_dir(cfg), components.teacher_fingerprint(cfg), ev.batch_size, ev.chunk_size,
                device, precision, name=name,
            )
            if rate is None:
                rate = encoding_rate(encoder, coll, ev.batch_size, device, precision, seed=cfg.seed)
            index = ScratchIndex(encoder, coll, matrix, rate, ev.batch_size, ev.chunk_size, device, precision)
            return index, resolve_model(teacher.model)
        if name == "student_init":
            encoder = instantiate_checked(cfg.student, "student", allows_external(cfg))  # truncated in memory, never saved
            folder = None
        else:
            folder = system_folder(cfg, name)
            encoder = BiEncoder.load(folder)
        index = stack.enter_context(
            scratch_index(encoder, coll, ev.batch_size, ev.chunk_size, device, precision, self.scratch, name)
        )
        return index, folder
