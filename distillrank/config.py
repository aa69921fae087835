"""Structured config schemas, registered in Hydra's ConfigStore.

The schema is the top-level ``config`` node that ``conf/config.yaml`` extends, so struct mode
applies everywhere: a misspelt key fails at composition time. ``teacher``, ``student`` and ``loss``
are polymorphic (each option builds a different ``_target_``); their keys are checked against the
target's signature by :func:`distillrank.validation.check_targets` instead.

Every string option with a fixed set of values is a :class:`Choice` (a ``str`` Enum), so a misspelt
value (``train.scheduler=cosin``) fails at composition too, before any stage runs, naming the valid
values. Open-ended strings (``hardware.device``: cpu, cuda, cuda:N, auto; names, paths, measures)
stay ``str``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


class Choice(str, Enum):
    """A config value from a fixed set: a ``str`` Enum whose members' names are their values.

    OmegaConf matches a YAML value or an override against the members' *names*, and writes the
    names back (``to_yaml``, ``to_container(enum_to_str=True)``), so a name is always its value.
    A member compares, hashes, prints, formats and JSON-encodes as that string (``Scheduler.cosine
    == "cosine"``, ``f"{m}"`` gives ``cosine``), so code written for plain strings, and fingerprints
    of config values, are unchanged.
    """

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)

    def __repr__(self) -> str:
        return repr(str(self.value))


def _choice(name: str, *values: str) -> type[Choice]:
    """A :class:`Choice` whose member names are ``values`` (``global`` cannot be written as an attribute)."""
    return Choice(name, [(v, v) for v in values], module=__name__, qualname=name)  # type: ignore[return-value]


Source = _choice("Source", "beir", "ir_datasets")  # data.source
MiningMethod = _choice("MiningMethod", "bm25", "dense", "hybrid")  # mining.method
Retriever = _choice("Retriever", "bm25", "dense")  # mining.retrievers (hybrid)
Sampling = _choice("Sampling", "window", "top", "all")  # mining.sampling
DenseIndex = _choice("DenseIndex", "exact", "faiss")  # mining.index
# hardware.precision / hardware.backend; auto: chosen per model by measurement (distillrank/calibration.py)
Precision = _choice("Precision", "fp32", "bf16", "fp16", "int8", "auto")
Backend = _choice("Backend", "torch", "onnx", "auto")
Scheduler = _choice("Scheduler", "linear", "cosine")  # train.scheduler
Logger = _choice("Logger", "none", "tensorboard", "wandb")  # train.logger
DropoutMasks = _choice("DropoutMasks", "fast", "torch")  # train.dropout_masks
QueryMethod = _choice("QueryMethod", "none", "title", "ict", "generator")  # queries.method
Normalize = _choice("Normalize", "none", "zscore", "minmax")  # score.normalize
NormalizeScope = _choice("NormalizeScope", "query", "global")  # score.normalize_scope
EvaluateMode = _choice("EvaluateMode", "auto", "rerank")  # evaluate.mode
FirstStage = _choice("FirstStage", "bm25", "dense")  # evaluate.first_stage
System = _choice("System", "bm25", "teacher", "student_init", "student")  # evaluate.systems (more: evaluate.checkpoints)


@dataclass
class DataConfig:
    """A collection (corpus, queries, qrels per split) and the splits each stage uses."""

    name: str = MISSING
    source: Source = Source.beir  # beir | ir_datasets
    path: str | None = None  # explicit BEIR folder (wins over root / irds_id)
    irds_id: str | None = None  # ir_datasets id without the split, e.g. beir/scifact
    root: str | None = None  # local mirror of BEIR folders; default $DISTILLRANK_DATA_DIR
    train_split: str | None = "train"
    dev_split: str | None = None
    test_split: str | None = "test"
    max_train_queries: int | None = None
    max_test_queries: int | None = None
    max_docs: int | None = None


@dataclass
class MiningConfig:
    """First-stage retrieval of candidates for the training queries and negative sampling."""

    method: MiningMethod = MiningMethod.bm25  # bm25 | dense | hybrid
    depth: int = 100  # documents retrieved per query
    sampling: Sampling = Sampling.window  # window: uniform from ranks [window_start, window_end]; top: the best ranks; all: every non-positive in the window
    window_start: int = 3  # 1-based, inclusive
    window_end: int = 100  # 1-based, inclusive
    num_negatives: int = 8  # negatives kept per query
    k1: float = 0.9
    b: float = 0.4
    stemmer: str | None = "english"
    stopwords: str | None = "en"
    model: str | None = None  # dense: a bi-encoder folder / hub id, or a student checkpoint of an earlier run
    batch_size: int = 64  # dense: texts per encoding batch
    index: DenseIndex = DenseIndex.exact  # dense: exact (chunked matrix product) | faiss (needs faiss-cpu / faiss-gpu)
    faiss_factory: str = "Flat"  # dense, index=faiss: a faiss.index_factory string (Flat, HNSW32, IVF4096,PQ64, ...)
    query_max_length: int | None = None  # dense: None keeps the model's setting
    passage_max_length: int | None = None
    retrievers: list[Retriever] = field(default_factory=lambda: [Retriever.bm25, Retriever.dense])  # hybrid: fused by RRF
    rrf_k: int = 60  # hybrid: reciprocal-rank-fusion constant (Cormack et al. 2009; Tamber et al. 2025)


@dataclass
class HardwareConfig:
    """Where and in which precision models run."""

    device: str = "cpu"  # cpu | cuda | cuda:N | auto
    # fp32 | bf16 | fp16 (autocast) | int8 (frozen teachers on the CPU) | auto (measured per model: hardware=auto)
    precision: Precision = Precision.fp32
    num_threads: int | None = None  # torch intra-op threads on CPU; None leaves torch's default
    # texts (or pairs) per inference forward (encoding, cross-encoder scoring); a larger batch runs
    # as several forwards with the same result. None = the whole batch (GPUs). Training batches are
    # not cut (use train.grad_accum_steps to bound training memory).
    max_forward_texts: int | None = None
    # what runs frozen encoders at inference (bi-encoder / cross-encoder teachers, the dense mining
    # encoder): torch, or onnx (ONNX Runtime, CPU only; pip install 'distillrank[onnx]'). Students
    # always train and evaluate in torch. auto: measured per model (hardware=auto, docs/HARDWARE.md)
    backend: Backend = Backend.torch
    # inference batches by token budget: rows x the longest row's tokens at most this per forward
    # (encoding, cross-encoder scoring; at least one row, rows still capped by max_forward_texts);
    # None = fixed batch sizes (batch_size rows). Same results up to the float rounding of other shapes.
    max_batch_tokens: int | None = None
    # the most tokens (rows x padded length) one inference forward holds: a larger batch runs as
    # several forwards of consecutive rows, each cut to its longest row (at least one row); bounds a
    # forward's working memory by its tokens (long passages go fewer to a forward, short queries
    # keep max_forward_texts). None = no cap (GPUs). Same results up to float rounding.
    max_forward_tokens: int | None = None
    # tokenize the next inference batch in a thread while the model runs this one (pinned memory and
    # non-blocking copies on CUDA); None = on for CUDA, off on the CPU; true / false force it.
    # Bit-identical results either way (docs/HARDWARE.md, "Inference batches").
    prefetch: bool | None = None
    # glibc malloc keeps freed memory (mmap threshold 32 MiB, trim 128 MiB) so that each forward's
    # tensors reuse mapped pages instead of page-faulting fresh ones: CPU steps 1.1-1.3x faster, the
    # peak memory of small runs +10-15% (docs/HARDWARE.md, "The allocator"); false: glibc's defaults.
    # Nothing is done off glibc, or where MALLOC_*_THRESHOLD_ / GLIBC_TUNABLES / an LD_PRELOADed
    # allocator says the user chose.
    keep_freed_memory: bool = True


@dataclass
class TrainConfig:
    """Optimisation of the student."""

    epochs: int = 1
    max_steps: int | None = None  # stop after this many optimizer steps (overrides epochs when reached)
    batch_size: int = 32  # training examples (query + 1 positive + n negatives) per step
    negatives_per_example: int = 1  # n; Margin-MSE's classic triple is n=1
    grad_accum_steps: int = 1  # batches whose gradients add up before each optimizer step
    lr: float = 2e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    scheduler: Scheduler = Scheduler.linear  # linear | cosine decay after the warm-up
    max_grad_norm: float = 1.0
    # On CPU: fast = dropout masks drawn 16 bits at a time from torch's generator (distillrank/models/dropout.py,
    # the same distribution; 1.2-1.4x a training step); torch = nn.Dropout's own (one draw an element)
    dropout_masks: DropoutMasks = DropoutMasks.fast
    log_every: int = 10
    # resumable checkpoints (train/checkpoints/, deleted once the model is saved; not in the stage key):
    checkpoint_minutes: float = 10.0  # minutes between checkpoints; 0 = by steps only
    checkpoint_every: int = 0  # optimizer steps between checkpoints; 0 = by time only (both 0: none)
    # Dev evaluation (re-ranking each dev query's candidates, see distillrank/training/dev.py)
    eval_every: int = 0  # optimizer steps between dev evaluations; 0 = off (the last step is also evaluated)
    dev_queries: int = 0  # N training queries set aside (seeded) as the dev set; they are not trained on
    dev_fraction: float = 0.0  # or this fraction of them (rounded, at least 1); the hybrid α is chosen on them
    dev_split: str | None = None  # or a judged split of the collection, candidates from the first stage
    dev_depth: int = 30  # dev_split: first-stage candidates re-ranked per query
    dev_measure: str = "nDCG@10"  # ir_measures name; the best value picks the exported weights
    dev_batch_size: int = 64
    early_stopping_patience: int = 0  # stop after this many evaluations without improvement; 0 = never
    logger: Logger = Logger.none  # none | tensorboard | wandb (not in the stage key)
    # Data parallelism (torchrun --nproc_per_node=N): in-batch negatives span the global micro-batch,
    # passage embeddings all-gathered over the ranks (bi-encoder; one process: no effect)
    gather_negatives: bool = False
    # Feature distillation (a loss with a feature term, e.g. loss=feature or loss=margin_mse_feature):
    # the student's embeddings of the collection's texts regress the teacher's (distillrank/training/features.py)
    feature_batch_size: int | None = None  # texts per micro-batch; None = batch_size
    feature_passages: bool = True  # every passage of the collection (teacher embeddings cached once)
    feature_queries: bool = True  # the training queries (data.train_split, or the synthetic ones), where there are
    feature_max_passages: int | None = None  # a seeded sample of this many passages; None = all


@dataclass
class QueriesConfig:
    """Synthetic training queries made from the corpus (the ``queries`` stage; group ``queries/``).

    With ``method`` other than ``none``, mine / score / train use these queries (and their source
    passages as positives) instead of ``data.train_split``.
    """

    method: QueryMethod = QueryMethod.none  # none | title | ict | generator
    per_doc: int = 1  # queries made per source document (title: at most 1)
    max_docs: int | None = None  # source documents sampled uniformly (seeded); None = every document
    remove_prob: float = 0.9  # ict: probability that the query sentence is removed from its positive
    span_words: list[int] = field(default_factory=lambda: [4, 12])  # ict: fallback span length [lo, hi]
    min_words: int = 8  # ict: shorter passages give no query
    generator: Any = None  # generator: a _target_ node (distillrank.queries.generator.QueryGenerator)
    filter_top_k: int | None = None  # keep a query only if the teacher ranks its positive in this top-k; None = off
    filter_depth: int = 20  # BM25 candidates the teacher re-ranks for the consistency filter


@dataclass
class ScoreConfig:
    """How teacher scoring is run (the teacher itself is the ``teacher`` group)."""

    shard_size: int = 20000  # pairs per cache shard; a killed run resumes after the last whole shard
    progress: bool = True
    denoise_margin: float | None = None  # drop a negative scored >= its query's best positive - margin
    denoise_relative: float | None = None  # drop a negative scored > this fraction of the top teacher score (0.6: Tamber et al.)
    normalize: Normalize = Normalize.none  # none | zscore | minmax: the teacher column students learn from (raw kept as teacher_raw)
    normalize_scope: NormalizeScope = NormalizeScope.query  # query | global: statistics per query's candidates or over all pairs


@dataclass
class EvaluateConfig:
    """Systems evaluated on the test split, and how."""

    split: str | None = None  # default: data.test_split
    systems: list[System] = field(default_factory=lambda: list(System))
    checkpoints: dict[str, str] = field(default_factory=dict)  # extra bi-encoder checkpoints: name -> path
    measures: list[str] = field(default_factory=lambda: ["nDCG@10", "RR@10", "R@100"])
    baseline: str | None = "bm25"  # paired t-tests of every other system against this one (Holm-Bonferroni)
    alpha: float = 0.05
    top_k: int = 100  # retrieval depth of every run file
    mode: EvaluateMode = EvaluateMode.auto  # auto: bi-encoders retrieve, other models re-rank | rerank: every model re-ranks
    first_stage: FirstStage = FirstStage.bm25  # bm25 | dense: the candidates re-rankers score
    first_stage_model: str | None = "sentence-transformers/all-MiniLM-L6-v2"  # the bi-encoder of first_stage=dense
    rerank_depth: int = 100  # re-rankers score this many first-stage results per query
    batch_size: int = 128
    chunk_size: int = 65536  # corpus rows per block of the exact top-k matrix product
    latency_queries: int = 50  # queries timed one at a time, end to end (median and p95 ms); 0 = off
    # Extra collections evaluated beside `data` (out-of-domain), each a conf/data option name
    # (`vaswani`) or a BEIR folder path, on its own data.test_split; a mean table follows.
    collections: list[str] = field(default_factory=list)
    # Hybrid systems (docs/EVALUATION.md): the trained bi-encoder student fused with BM25, as
    # `hybrid_rrf` (reciprocal-rank fusion) and `hybrid` (α·minmax(student) + (1−α)·minmax(bm25)).
    # Evaluated when `systems` has bm25 and student and the student retrieves (a bi-encoder);
    # ignored otherwise.
    hybrid: bool = True
    hybrid_alpha: float | None = None  # null: chosen on dev queries (grid 0..1 step 0.05); a number in [0, 1]: fixed
    hybrid_dev_queries: int | None = 200  # judged dev- (else train-) split queries sampled with `seed` to choose α; null = all
    hybrid_measure: str = "nDCG@10"  # what the chosen α maximises on them
    hybrid_rrf_k: int = 60  # the RRF constant of hybrid_rrf


@dataclass
class Config:
    """The whole pipeline's config; ``conf/config.yaml`` fills it."""

    experiment: str = "default"
    workspace: str = "runs"
    seed: int = 42
    force: bool = False
    allow_external_targets: bool = False  # true: `_target_`s outside distillrank.* may be built (they run code)
    data: DataConfig = field(default_factory=DataConfig)
    mining: MiningConfig = field(default_factory=MiningConfig)
    queries: QueriesConfig = field(default_factory=QueriesConfig)
    teacher: Any = MISSING
    student: Any = MISSING
    loss: Any = MISSING
    hardware: HardwareConfig = field(default_factory=HardwareConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)


def register_configs() -> None:
    """Register the schemas; ``conf/config.yaml`` lists ``schema`` first in its defaults."""
    ConfigStore.instance().store(name="schema", node=Config)


def conf_dir() -> Path:
    """The folder holding ``config.yaml``: the checkout's ``conf/`` or the wheel's ``distillrank/conf``."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "conf", here.parent / "conf"):
        if (candidate / "config.yaml").is_file():
            return candidate
    raise FileNotFoundError(f"distillrank's conf/ was not found next to {here}; reinstall the package")
