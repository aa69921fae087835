"""Student scores of (query, passage) pairs for the report, and the sample of training pairs.

Hofstätter et al. (2020, "Improving Efficient Neural Ranking Models with Cross-Architecture
Knowledge Distillation") observe that rankers of different architectures score on different scales;
only the *margin* between a positive and a negative is comparable, hence Margin-MSE. The report
shows this on a sample of the scored training triples (query, positive, negative): teacher vs student
scores, and the teacher's vs the student's margins.

A student kind plugs in through :func:`register_scorer`: a loader takes the trained model folder
(``train/model``) and the student's config (the ``student`` section of the train manifest) and
returns a :data:`PairScorer`, or None when the folder is not its kind. Bi-encoders are built in.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch

from distillrank.errors import DistillrankError
from distillrank.ranking import Pairs
from distillrank.runtime import Runtime

PairScorer = Callable[[Sequence[str], Sequence[str]], np.ndarray]
"""``scorer(queries, passages) -> scores`` of aligned pairs: two lists of N texts -> float array [N]."""

ScorerLoader = Callable[[Path, Mapping[str, Any]], "PairScorer | None"]
"""``loader(model_dir, student_config) -> PairScorer``, or None when the model is not of its kind."""

_LOADERS: list[tuple[str, ScorerLoader]] = []


class StudentUnavailable(DistillrankError):
    """The student cannot score pairs here (no loader for its kind, or it failed to load)."""


def register_scorer(name: str, loader: ScorerLoader) -> None:
    """Add a loader for one student kind (tried in registration order; a name registered again is replaced)."""
    _LOADERS[:] = [(n, f) for n, f in _LOADERS if n != name]
    _LOADERS.append((name, loader))


def load_pair_scorer(model_dir: Path, student_config: Mapping[str, Any] | None = None) -> PairScorer:
    """The first registered loader's scorer for this model folder.

    Raises:
        StudentUnavailable: the folder is missing, no loader accepts it, or loading failed (the
            message says which, for the report to print).
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise StudentUnavailable(f"the trained model folder {model_dir} does not exist")
    config = dict(student_config or {})
    for name, loader in _LOADERS:
        try:
            scorer = loader(model_dir, config)
        except Exception as err:  # a report degrades to a sentence; whatever a loader raised is in it
            raise StudentUnavailable(f"loading {model_dir} as a {name} failed: {err}") from err
        if scorer is not None:
            return scorer
    kinds = [n for n, _ in _LOADERS]
    raise StudentUnavailable(
        f"no report scorer for the student {config.get('_target_', '?')} in {model_dir} (known kinds: {kinds})"
    )


def _bi_encoder_loader(model_dir: Path, config: Mapping[str, Any]) -> PairScorer | None:
    """Dot product (cosine when the model normalises) of the query and passage embeddings."""
    from distillrank.models.bi_encoder import META_FILE, BiEncoder

    target = str(config.get("_target_", ""))
    if target and "bi_encoder" not in target.lower() and "biencoder" not in target.lower():
        return None
    if not ((model_dir / META_FILE).is_file() or (model_dir / "modules.json").is_file()):
        return None
    encoder = BiEncoder.load(model_dir).cpu()

    def score(queries: Sequence[str], passages: Sequence[str]) -> np.ndarray:
        q_slot = {t: i for i, t in enumerate(dict.fromkeys(queries))}  # each distinct text encoded once
        p_slot = {t: i for i, t in enumerate(dict.fromkeys(passages))}
        q_emb = encoder.encode(list(q_slot), "query", batch_size=64)
        p_emb = encoder.encode(list(p_slot), "passage", batch_size=64)
        qi = torch.as_tensor([q_slot[q] for q in queries], dtype=torch.long)
        pi = torch.as_tensor([p_slot[p] for p in passages], dtype=torch.long)
        return (q_emb[qi] * p_emb[pi]).sum(-1).numpy().astype(np.float64)

    return score


def _student_loader(model_dir: Path, config: Mapping[str, Any]) -> PairScorer | None:
    """Any student :func:`distillrank.students.load_student` reads (cross-encoder, ColBERT, …), scored
    by its ``score_pairs``; None when that API is not there (older installs)."""
    try:
        from distillrank.students import load_student
    except ImportError:
        return None
    student = load_student(model_dir)

    def score(queries: Sequence[str], passages: Sequence[str]) -> np.ndarray:
        scores = student.score_pairs(Pairs.aligned(queries, passages), Runtime())
        return np.asarray(scores, dtype=np.float64)

    return score


register_scorer("bi_encoder", _bi_encoder_loader)
register_scorer("student", _student_loader)


@dataclass
class PairSample:
    """A seeded sample of training triples from ``scores.parquet``: ``qids[i]``, ``pos[i]`` (a
    positive docid) and ``neg[i]`` (a negative not dropped by de-noising), with their teacher scores."""

    qids: list[str]
    pos: list[str]
    neg: list[str]
    teacher_pos: np.ndarray  # [n] float64
    teacher_neg: np.ndarray  # [n] float64

    def __len__(self) -> int:
        return len(self.qids)


def sample_pairs(scores_path: Path, n: int, seed: int) -> PairSample:
    """Up to ``n`` distinct (query, positive, negative) triples, uniformly over all triples.

    Args:
        scores_path: ``score/scores.parquet`` (``qid, docid, label, teacher`` and optionally ``dropped``).
        n: the cap on the sample size.
        seed: of the numpy generator (the same seed gives the same sample).
    """
    table = pq.read_table(scores_path)
    qids = np.asarray(table["qid"].to_pylist(), dtype=object)
    docids = np.asarray(table["docid"].to_pylist(), dtype=object)
    labels = table["label"].to_numpy()
    teacher = table["teacher"].to_numpy().astype(np.float64)
    dropped = (
        np.asarray(table["dropped"].to_pylist(), dtype=bool)
        if "dropped" in table.column_names
        else np.zeros(len(qids), bool)
    )
    order = np.argsort(qids, kind="stable")
    uq, starts = np.unique(qids[order], return_index=True)
    bounds = list(starts) + [len(order)]
    pos_lists, neg_lists = [], []
    for i in range(len(uq)):
        rows = order[bounds[i] : bounds[i + 1]]
        pos_lists.append(rows[labels[rows] > 0])
        neg_lists.append(rows[(labels[rows] <= 0) & ~dropped[rows]])
    sizes = np.array([len(p) * len(g) for p, g in zip(pos_lists, neg_lists, strict=True)], dtype=np.int64)
    total = int(sizes.sum())
    empty = np.zeros(0)
    if total == 0 or n <= 0:
        return PairSample([], [], [], empty, empty)
    rng = np.random.default_rng(seed)
    picks = np.sort(rng.choice(total, size=min(n, total), replace=False))
    ends = np.cumsum(sizes)
    which = np.searchsorted(ends, picks, side="right")
    offsets = picks - (ends[which] - sizes[which])
    pos_rows, neg_rows = [], []
    for w, o in zip(which.tolist(), offsets.tolist(), strict=True):
        n_neg = len(neg_lists[w])
        pos_rows.append(pos_lists[w][o // n_neg])
        neg_rows.append(neg_lists[w][o % n_neg])
    return PairSample(
        qids=[str(qids[r]) for r in pos_rows],
        pos=[str(docids[r]) for r in pos_rows],
        neg=[str(docids[r]) for r in neg_rows],
        teacher_pos=teacher[pos_rows],
        teacher_neg=teacher[neg_rows],
    )
