"""The hardware each model of a config runs on: ``hardware`` as written, or, under ``hardware=auto``
(``hardware.precision`` and/or ``hardware.backend`` ``auto``), the backend and precision measured
fastest within fp32's fidelity for that model on this machine (:mod:`distillrank.calibration`).

Roles (what a stage runs): ``teacher`` (score, the consistency filter of ``queries``, the evaluated
teacher, feature distillation's teacher embeddings), ``student`` (train, and every evaluated student:
they run in the precision the student trained in), ``mining`` (the dense mining encoder, and the
dense first stage of evaluate) and ``generator`` (synthetic queries: fp32, see :func:`choice`).

Every stage and the keys read hardware through here, so a stage under ``auto`` has the key it
would have with the resolved hardware written out: its scores, embeddings and models are cached
per backend and precision as before. A choice is computed once per process and model (then read
from the calibration cache) and logged once.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

from distillrank import calibration, sharding
from distillrank.builders import components
from distillrank.builders.mining import mining_encoder, mining_model_path
from distillrank.calibration import AUTO, CacheKey, Choice, cached_choice, unmeasured
from distillrank.errors import ConfigError
from distillrank.models.dropout import for_training
from distillrank.models.hub import resolve_model
from distillrank.ranking import Pairs, RankerKind
from distillrank.runtime import Runtime, configured_backend, resolve_device
from distillrank.teachers.base import members
from distillrank.teachers.bi_encoder import BiEncoderTeacher
from distillrank.workspace import cache_dir, dir_fingerprint, to_plain

log = logging.getLogger(__name__)

ROLES = ("teacher", "student", "mining", "generator")
QUERIES, PASSAGES = (
    16,
    8,
)  # the calibration batch: judged queries, and passages per query (its positive first)
TIMED_QUERIES = 8  # the timed calls score the first 8 queries' pairs (fidelity is judged on all 16)
TRAIN_QUERIES, TRAIN_STEPS = 8, 3  # training calibration: queries per step, steps from the same weights
# The dense mining encoder's candidates: no int8 (it encodes in fp32 / bf16, or ONNX Runtime fp32)
MINING_INT8, MINING_ONNX = False, True


def is_auto(hardware) -> bool:
    """Whether a hardware config leaves its precision or backend to measurement."""
    return str(hardware.precision) == AUTO or configured_backend(hardware) == AUTO


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise ValueError(f"unknown hardware role {role!r}; expected one of {ROLES}")


def choice(cfg: DictConfig, role: str) -> Choice | None:
    """The calibrated choice for ``role``'s model under ``hardware=auto``; None when the hardware is
    written out. The generator is not calibrated: sampled text has no fidelity measure against fp32
    (bf16 samples other queries), so it generates in fp32 unless ``hardware.precision`` says otherwise."""
    _check_role(role)
    if not is_auto(cfg.hardware):
        return None
    plain = OmegaConf.to_container(cfg, resolve=True)
    return _choice(OmegaConf.to_yaml(OmegaConf.create(plain)), role)


@functools.lru_cache(maxsize=16)
def _choice(cfg_yaml: str, role: str) -> Choice:
    cfg = OmegaConf.create(cfg_yaml)
    hw = cfg.hardware
    precision, backend = str(hw.precision), configured_backend(hw)
    base = Runtime(
        device=resolve_device(str(hw.device)),
        max_forward_texts=hw.get("max_forward_texts"),
        num_threads=hw.get("num_threads"),
        max_batch_tokens=hw.get("max_batch_tokens"),  # timed with the batches the stages will run
        max_forward_tokens=hw.get("max_forward_tokens"),  # and their forwards
        prefetch=hw.get("prefetch"),
        keep_freed_memory=hw.get("keep_freed_memory"),
    ).apply()
    if role == "generator":
        made = dataclasses.replace(
            unmeasured("generation: no fidelity measure against fp32"), precision=_fixed(precision, "fp32")
        )
    elif role == "student":
        made = _student(cfg, base, precision)
    else:
        made = _inference(cfg, base, role, precision, backend)
    what = {
        "teacher": "teacher",
        "student": "student (training)",
        "mining": "dense mining encoder",
        "generator": "query generator",
    }[role]
    log.info(made.describe(f"{what} {_model_name(cfg, role)}"))
    return made


def _fixed(value: str, default: str) -> str:
    return default if value == AUTO else value


def hidden_size(folders: list[Path | None]) -> int:
    """The widest hidden size among the models in ``folders`` (their ``config.json``), the width of
    the bf16 probe; 768 when none says (a BERT-base width)."""
    widths = []
    for folder in folders:
        try:
            config = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8")) if folder else {}
        except (OSError, ValueError):
            config = {}
        widths += [
            int(config[k])
            for k in ("hidden_size", "d_model", "dim", "n_embd")
            if isinstance(config.get(k), int)
        ][:1]
    return max(widths, default=768)


def _probe(base: Runtime, folders: list[Path | None], training: bool = False):
    """The bf16 probe for the models in ``folders``: on the CPU only (a GPU keeps its bf16 candidates)."""
    if base.device.type != "cpu":
        return None
    return lambda: calibration.probe_bf16(hidden_size(folders), training=training)


def _model_name(cfg: DictConfig, role: str) -> str:
    if role == "mining":
        return str(cfg.mining.model)
    section = {"teacher": cfg.teacher, "student": cfg.student, "generator": cfg.queries.generator}[role]
    return str(section.get("model", "") or "") if isinstance(section, DictConfig) else ""


def node(cfg: DictConfig, role: str) -> DictConfig:
    """``cfg.hardware`` with the precision and backend ``role``'s model runs in (the written-out
    node itself when nothing is ``auto``)."""
    made = choice(cfg, role)
    if made is None:
        return cfg.hardware
    resolved = OmegaConf.create(to_plain(cfg.hardware))
    resolved.precision, resolved.backend = made.precision, made.backend
    return resolved


def for_role(cfg: DictConfig, role: str) -> DictConfig:
    """``cfg`` with its ``hardware`` resolved for ``role`` (``cfg`` itself when nothing is ``auto``),
    for code that reads the hardware from a config (the dense miner)."""
    if not is_auto(cfg.hardware):
        return cfg
    out = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    out.hardware = node(cfg, role)
    return out


def runtime(cfg: DictConfig, role: str) -> Runtime:
    """The checked :class:`Runtime` ``role``'s model runs in, its process-wide settings applied."""
    return Runtime.from_config(node(cfg, role)).apply()


def report(cfg: DictConfig, *roles: str) -> dict:
    """For a manifest: each role's choice under ``hardware=auto`` (precision, backend, every
    candidate's speed and fidelity); empty when the hardware is written out."""
    out = {}
    for role in roles:
        if (made := choice(cfg, role)) is not None:
            out[role] = made.as_dict()
    return {"hardware_auto": out} if out else {}


# --------------------------------------------------------------------------- the calibration batch
def calibration_pairs(cfg: DictConfig, n_queries: int = QUERIES) -> tuple[Pairs, np.ndarray]:
    """The calibration batch of ``cfg``'s collection (:func:`collection_pairs` of
    ``data.train_split``).

    Raises:
        ConfigError: the collection has no judged queries.
    """
    return collection_pairs(components.collection(cfg), str(cfg.data.train_split), n_queries)


def collection_pairs(
    coll, train_split: str, n_queries: int = QUERIES, first_query: int = 0
) -> tuple[Pairs, np.ndarray]:
    """Real texts of the collection ``coll`` to calibrate on: the first ``n_queries`` judged queries
    of ``train_split`` (else of the first judged split), each with its first positive and passages
    from evenly spaced corpus rows, :data:`PASSAGES` in all; and each pair's query (numbered from 0).
    Fewer queries give the first queries' pairs of a longer batch, and ``first_query`` its later
    queries' pairs: ``[0, k)`` then ``[k, n)`` are the pairs of ``[0, n)`` in order. (The
    benchmarks calibrate on this batch too.)

    Raises:
        ConfigError: the collection has no judged queries.
    """
    splits = coll.splits()
    if not splits:
        raise ConfigError(
            f"hardware=auto calibrates on judged queries, and collection '{coll.name}' has none; "
            "write the hardware out (e.g. hardware=cpu)"
        )
    split = train_split if train_split in splits else splits[0]
    queries = coll.split_queries(split)[first_query:n_queries]
    docids = coll.doc_ids()
    step = max(1, len(docids) // PASSAGES)
    pair_q, pair_p, passages, slot = [], [], [], {}
    for qi, (qid, _) in enumerate(queries):
        positives = sorted(d for d, rel in coll.qrels[split].get(qid, {}).items() if rel > 0)
        spread = range((first_query + qi) % step, len(docids), step)
        rows = ([coll.doc_row(positives[0])] if positives else []) + list(spread)
        for row in list(dict.fromkeys(rows))[:PASSAGES]:
            if row not in slot:
                slot[row] = len(passages)
                passages.append(row)
            pair_q.append(qi)
            pair_p.append(slot[row])
    pairs = Pairs([text for _, text in queries], coll.passage_texts(passages), pair_q, pair_p)
    return pairs, np.asarray(pair_q)


# --------------------------------------------------------------------------- inference: teacher, dense miner
def _inference(cfg: DictConfig, base: Runtime, role: str, precision: str, backend: str) -> Choice:
    if role == "teacher":
        ranker = components.teacher(cfg)
        if any(m.kind in (RankerKind.LEXICAL, RankerKind.PRECOMPUTED) for m in members(ranker)):
            return unmeasured("a teacher with BM25 or a score file has nothing to calibrate")
        int8, onnx, identity = ranker.supports_int8, ranker.supports_onnx, ranker.fingerprint()
        folders = [m.weights_folder() for m in members(ranker)]
    else:  # the dense mining encoder, scored as a bi-encoder (it encodes in fp32 / bf16, or ONNX Runtime fp32)
        m = cfg.mining
        ranker = BiEncoderTeacher(
            str(mining_model_path(cfg)),
            **{k: int(m[k]) for k in ("query_max_length", "passage_max_length") if m.get(k)},
        )
        mining_encoder(cfg)  # fails early, as mining would, on a folder that is not a bi-encoder
        int8, onnx, identity = MINING_INT8, MINING_ONNX, ranker.fingerprint()
        folders = [ranker.weights_folder()]
    candidates = calibration.inference_candidates(base, precision, backend, int8=int8, onnx=onnx)
    coll = components.collection(cfg)
    key = CacheKey(
        calibration.machine_identity(base.device, base.keep_freed_memory),
        {
            "role": role,
            "model": identity,
            "candidates": [[c.precision, c.backend] for c in candidates],
            "fixed": [precision, backend],
            "max_forward_texts": base.max_forward_texts,
            "max_forward_tokens": base.max_forward_tokens,
            "fidelity": dataclasses.asdict(calibration.FIDELITY),
        },
    )

    def calibrate() -> Choice:
        batch = calibration_batch(coll, str(cfg.data.train_split))
        return calibrate_ranker(ranker, base, candidates, batch, folders, precision, backend)

    return cached_choice(cache_dir(cfg), key, calibrate, main=sharding.from_env().main)


def calibration_batch(coll, train_split: str) -> tuple[Pairs, np.ndarray, Pairs, Pairs | None]:
    """An inference calibration's texts: the batch whose scores are judged (:func:`collection_pairs`,
    :data:`QUERIES` queries) and each pair's query, then the same batch in two halves: the pairs
    the timed calls score (its first :data:`TIMED_QUERIES` queries, at most half of them) and the
    rest, the warm-up (None for a collection of one judged query: its whole batch warms up)."""
    pairs, groups = collection_pairs(coll, train_split)
    k = min(TIMED_QUERIES, len(pairs.queries) // 2)
    if k == 0:
        return pairs, groups, pairs, None
    timed = collection_pairs(coll, train_split, k)[0]
    return pairs, groups, timed, collection_pairs(coll, train_split, QUERIES, first_query=k)[0]


def calibrate_ranker(
    ranker,
    base: Runtime,
    candidates: list[Runtime],
    batch: tuple[Pairs, np.ndarray, Pairs, Pairs | None],
    folders: list[Path | None],
    precision: str = AUTO,
    backend: str = AUTO,
) -> Choice:
    """The calibration of a teacher or mining encoder (``ranker``: its ``score_pairs``) over
    ``candidates`` on ``batch`` (:func:`calibration_batch`), with the bf16 probe of the models in
    ``folders``; not cached (:func:`choice` caches it). The benchmarks (scripts/bench) calibrate
    their models through here, as a stage does."""
    pairs, groups, part, rest = batch
    return calibration.calibrate_scores(
        lambda rt: ranker.score_pairs(pairs, rt, progress=False), candidates, groups,
        precision=precision, backend=backend, probe=_probe(base, folders),
        timed=lambda rt: ranker.score_pairs(part, rt, progress=False),
        rest=None if rest is None else (lambda rt: ranker.score_pairs(rest, rt, progress=False)),
    )  # fmt: skip


# --------------------------------------------------------------------------- training: the student
def _student(cfg: DictConfig, base: Runtime, precision: str) -> Choice:
    if precision == "int8":  # an inference precision: the student trains in fp32, as under hardware=cpu_int8
        precision = "fp32"
    candidates = calibration.training_candidates(base, precision)
    masks = str(cfg.train.get("dropout_masks", "fast"))
    key = CacheKey(
        calibration.machine_identity(base.device, base.keep_freed_memory),
        {
            "role": "student",
            "student": to_plain(cfg.student),
            "weights": dir_fingerprint(resolve_model(cfg.student.model)),
            "lr": float(cfg.train.lr),
            "dropout_masks": masks,
            "candidates": [c.precision for c in candidates],
            "fixed": precision,
            "fidelity": dataclasses.asdict(calibration.FIDELITY),
        },
    )
    pairs, groups = calibration_pairs(cfg)
    steps = student_steps(lambda: components.student(cfg), float(cfg.train.lr), pairs, groups, masks)
    if steps is None:
        return unmeasured("too few passages per query to calibrate training")
    folders = [resolve_model(cfg.student.model)]
    return cached_choice(
        cache_dir(cfg),
        key,
        lambda: calibrate_student(steps, base, candidates, folders, precision),
        main=sharding.from_env().main,
    )


def student_steps(
    make_student: Callable[[], torch.nn.Module],
    lr: float,
    pairs: Pairs,
    groups: np.ndarray,
    dropout_masks: str = "fast",
) -> Callable[[Runtime], Iterator[tuple[float, float]]] | None:
    """A training calibration's steps (:func:`distillrank.calibration.calibrate_training`'s
    ``steps``): from a fresh ``make_student()`` (a student behind the training protocol) and the
    same seed, :data:`TRAIN_STEPS` AdamW steps (``lr``) of a listwise cross-entropy over the first
    :data:`TRAIN_QUERIES` queries of the calibration batch ``pairs`` (``groups``: each pair's query;
    the positive first), yielding each step's loss and seconds; the student's dropout as training
    runs it under ``train.dropout_masks`` (:func:`distillrank.models.dropout.for_training`). None
    when a query has fewer than 2 passages (nothing to rank)."""
    queries = sorted(set(groups.tolist()))[:TRAIN_QUERIES]
    rows = [np.flatnonzero(groups == q) for q in queries]
    width = min(len(r) for r in rows)
    if width < 2:
        return None
    index = torch.tensor([pairs.pair_p[r[:width]].tolist() for r in rows], dtype=torch.long)
    query_texts = [pairs.queries[q] for q in queries]

    def steps(rt: Runtime) -> Iterator[tuple[float, float]]:
        devices = [rt.device] if rt.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):  # the training's random streams are left as they were
            torch.manual_seed(0)
            student = make_student().to(rt.device).train()
            optimizer = torch.optim.AdamW(student.parameters(), lr=lr)
            target = torch.zeros(len(queries), dtype=torch.long, device=rt.device)  # the positive is first
            with for_training(student, dropout_masks, rt.device):
                for _ in range(TRAIN_STEPS):
                    start = time.perf_counter()
                    with rt.autocast():
                        scores = student(query_texts, list(pairs.passages), index.to(rt.device)).groups
                    loss = F.cross_entropy(scores.float(), target)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    yield float(loss.detach()), time.perf_counter() - start

    return steps


def calibrate_student(
    steps: Callable[[Runtime], Iterator[tuple[float, float]]],
    base: Runtime,
    candidates: list[Runtime],
    folders: list[Path | None],
    precision: str = AUTO,
) -> Choice:
    """The training calibration of ``steps`` (:func:`student_steps`) over ``candidates``, with the
    bf16 probe (forward and backward) of the models in ``folders``; not cached (:func:`choice`
    caches it). The training benchmark calibrates its student through here."""
    probe = _probe(base, folders, training=True)
    return calibration.calibrate_training(steps, candidates, precision=precision, probe=probe)
