"""Student scores of (query, passage) pairs for the report, and the sample of training pairs.

Hofstätter et al. (2020, "Improving Efficient Neural Ranking Models with Cross-Architecture
Knowledge Distillation") observe that rankers of different architectures score on different scales;
only the *margin* between a positive and a negative is comparable, hence Margin-MSE. The report
shows this on a sample of the scored training triples (query, positive, negative): teacher vs student
scores, and the teacher's vs the student's margins.

The trained model folder (``train/model``) is read back by :func:`load_trained_student`, which knows
every student kind :func:`distillrank.students.load_student` does, and scored through the
:class:`~distillrank.ranking.Ranker` interface (:func:`score_aligned`): a new student kind needs
nothing here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from distillrank.errors import DistillrankError
from distillrank.ranking import Pairs, Ranker
from distillrank.runtime import Runtime


class StudentUnavailable(DistillrankError):
    """The student cannot score pairs here (no student kind recognises its folder, or it failed to load)."""


def load_trained_student(model_dir: Path) -> Ranker:
    """The student saved in ``model_dir``, on the CPU.

    Raises:
        StudentUnavailable: the folder is missing, no student kind recognises it, or loading failed
            (the message says which, for the report to print).
    """
    from distillrank.students import load_student

    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise StudentUnavailable(f"the trained model folder {model_dir} does not exist")
    try:
        return load_student(model_dir)
    except Exception as err:  # a report degrades to a sentence; whatever loading raised is in it
        raise StudentUnavailable(f"loading {model_dir} failed: {err}") from err


def score_aligned(ranker: Ranker, queries: Sequence[str], passages: Sequence[str]) -> np.ndarray:
    """Scores [N] (float64) of the aligned pairs ``(queries[i], passages[i])``, on the CPU (each
    distinct text encoded once)."""
    return np.asarray(ranker.score_pairs(Pairs.aligned(queries, passages), Runtime()), dtype=np.float64)


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
