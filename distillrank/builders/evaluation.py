"""What the evaluate stage covers, from the config: its systems, its collections (the main one and
``evaluate.collections``, composed through Hydra), their targets and the settings the systems read."""

from __future__ import annotations

import contextlib
import shlex
from collections.abc import Iterator
from pathlib import Path

from hydra.utils import get_object
from omegaconf import DictConfig, OmegaConf

from distillrank import artifacts
from distillrank.builders import components
from distillrank.config import conf_dir, register_configs
from distillrank.data.collection import Collection
from distillrank.errors import ConfigError
from distillrank.evaluation.hybrid_systems import HYBRID
from distillrank.evaluation.metrics import parse_measures
from distillrank.evaluation.targets import Settings, Target, make_target
from distillrank.models.hub import resolve_model
from distillrank.validation import allows_external, check_instantiable
from distillrank.workspace import cache_dir, stage_dir

# folder names of evaluate/ that a collection may not take
_RESERVED = {artifacts.SCRATCH, artifacts.METRICS, artifacts.RESULTS}


def test_split(cfg: DictConfig) -> str:
    """The split evaluated on the main collection: ``evaluate.split``, else ``data.test_split``."""
    return cfg.evaluate.split or cfg.data.test_split


def settings(cfg: DictConfig) -> Settings:
    """The settings the systems read, as plain values."""
    ev = cfg.evaluate
    return Settings(
        measures=tuple(str(m) for m in ev.measures),
        top_k=int(ev.top_k),
        batch_size=int(ev.batch_size),
        chunk_size=int(ev.chunk_size),
        latency_queries=int(ev.latency_queries),
        seed=int(cfg.seed),
        hybrid_alpha=None if ev.hybrid_alpha is None else float(ev.hybrid_alpha),
        hybrid_dev_queries=None if ev.hybrid_dev_queries is None else int(ev.hybrid_dev_queries),
        hybrid_measure=str(ev.hybrid_measure),
        hybrid_rrf_k=int(ev.hybrid_rrf_k),
    )


# --------------------------------------------------------------------------- systems
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
        return not components.teacher(cfg).retrieves
    from distillrank.students.factory import detect, kind_of_builder

    if name in ("student_init", "student"):  # the kind the student config builds
        check_instantiable(cfg.student, "student", allows_external(cfg))
        return not kind_of_builder(get_object(str(cfg.student._target_))).retrieves
    return not detect(resolve_model(cfg.evaluate.checkpoints[name])).retrieves


def hybrid_enabled(cfg: DictConfig) -> bool:
    """Whether the hybrid systems are evaluated: ``evaluate.hybrid`` on, ``bm25`` and ``student``
    among ``evaluate.systems``, and the student a bi-encoder that retrieves (not re-ranks)."""
    ev = cfg.evaluate
    systems = list(ev.systems)
    if not ev.hybrid or "bm25" not in systems or "student" not in systems:
        return False
    return not reranks(cfg, "student")


def system_names(cfg: DictConfig) -> list[str]:
    """The systems evaluated: ``evaluate.systems`` (the schema checks their names), the hybrid ones,
    ``evaluate.checkpoints``."""
    hybrid = list(HYBRID) if hybrid_enabled(cfg) else []
    clash = [n for n in cfg.evaluate.checkpoints if n in hybrid]
    if clash:
        raise ConfigError(
            f"evaluate.checkpoints {clash} clash with the hybrid systems {list(HYBRID)}; "
            "rename them or set evaluate.hybrid=false"
        )
    return list(cfg.evaluate.systems) + hybrid + list(cfg.evaluate.checkpoints)


def check_hybrid(cfg: DictConfig) -> None:
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


def baseline(cfg: DictConfig) -> str | None:
    """``evaluate.baseline``, checked to be one of the evaluated systems (``None``: no tests)."""
    name = cfg.evaluate.baseline
    if name is None:
        return None
    names = system_names(cfg)
    if name not in names:
        raise ConfigError(
            f"evaluate.baseline {name!r} is not among the evaluated systems {names}; "
            "add it to evaluate.systems / evaluate.checkpoints or set evaluate.baseline=null"
        )
    if not 0.0 < cfg.evaluate.alpha < 1.0:
        raise ConfigError(f"evaluate.alpha must be in (0, 1), got {cfg.evaluate.alpha}")
    return name


# --------------------------------------------------------------------------- collections
def dev_split(data: DictConfig, coll: Collection, test_split: str) -> str | None:
    """The split α is chosen on: the collection's ``dev_split``, else its ``train_split``, the first
    that is loaded, has a judged query with a relevant document and is not the test split; None
    when there is none (then α is the default, 0.5)."""
    for split in (data.dev_split, data.train_split):
        if not split or split == test_split or split not in coll.splits():
            continue
        if any(any(r > 0 for r in docs.values()) for docs in coll.qrels[split].values()):
            return str(split)
    return None


@contextlib.contextmanager
def _data_group() -> Iterator[tuple]:
    """``(compose, options)`` over Hydra's compose API: ``compose(overrides)`` is the ``data`` node
    that the overrides compose (over the schema), ``compose(option=name)`` that option's own node
    (a ``???`` the schema's default would hide shows there), ``options()`` the ``data`` group's
    options. Inside a Hydra job over its config search path (``--config-dir`` included), else over
    distillrank's ``conf/``."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    def data(overrides: list[str] = (), option: str | None = None) -> DictConfig:
        if option is not None:
            return compose(f"data/{option}").data
        return compose("config", overrides=list(overrides)).data

    def options() -> list[str]:
        return sorted(GlobalHydra.instance().config_loader().get_group_options("data"))

    if GlobalHydra.instance().is_initialized():
        yield data, options
        return
    register_configs()
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        yield data, options


def extra_data(cfg: DictConfig, entry: str) -> DictConfig:
    """The data config of one ``evaluate.collections`` entry.

    ``entry`` is a ``data`` option (``vaswani``: composed as ``data=vaswani`` composes it) or a BEIR
    folder (``data=beir`` with the folder's path and name, split ``test``). ``data.root`` (the local
    mirror) is inherited from the main ``data`` config when the option does not set it.

    Raises:
        ConfigError: the entry is neither, or its option leaves a mandatory value (``???``) unset.
    """
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    missing: list[str] = []
    with _data_group() as (compose, options):
        if "/" not in entry and entry in options():
            where = f"conf/data/{entry}.yaml"
            try:
                own = compose(option=entry)
                missing = [str(k) for k in own if OmegaConf.is_missing(own, k)]  # the schema's default hides `???`
                data = compose([f"data={entry}"])
            except (HydraException, OmegaConfBaseException) as err:
                raise ConfigError(f"evaluate.collections: {where} does not fit the data schema: {err}") from None
        elif Path(entry).expanduser().is_dir():
            folder = Path(entry).expanduser().absolute()  # not resolved: a link names its collection
            where = str(folder)
            data = compose(["data=beir"])
            data.name, data.path, data.train_split = folder.name, str(folder), None
        else:
            raise ConfigError(
                f"evaluate.collections: {entry!r} is neither a data option (conf/data/: {options()}) "
                "nor an existing BEIR folder"
            )
    missing += [str(k) for k in data if OmegaConf.is_missing(data, k) and str(k) not in missing]
    if missing:
        raise ConfigError(
            f"evaluate.collections: {where} leaves {missing} unset (???); "
            "give a BEIR folder path instead, or a data option that sets them"
        )
    if data.root is None and cfg.data.root:
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
    systems = set(system_names(cfg))
    for entry in cfg.evaluate.collections:
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


def extra_split(cfg: DictConfig, name: str, data: DictConfig) -> tuple[Collection, str]:
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
    coll = components.collection_of(data, cache_dir(cfg))
    if not split or split not in coll.splits():
        raise ConfigError(
            f"evaluate.collections: collection {name!r} has no test split to evaluate on "
            f"(data.test_split={split!r}; its qrels splits are {coll.splits()})"
        )
    return coll, split


def main_target(cfg: DictConfig) -> Target:
    """The main collection (``data``, split ``evaluate.split`` or its test split) as evaluated.

    When α would be chosen on the split the student trained on, the queries ``train.dev_queries``
    (or ``train.dev_fraction``) held out of training are read from the train stage's ``dev_queries.txt``."""
    coll = components.collection(cfg)
    split = test_split(cfg)
    if split not in coll.splits():
        raise ConfigError(
            f"evaluate split {split!r} is not among the qrels splits {coll.splits()} of '{coll.name}'"
        )
    folder = stage_dir(cfg, artifacts.EVALUATE)
    main = make_target(str(cfg.data.name), coll, split, folder, ".", dev_split(cfg.data, coll, split))
    labelled = str(cfg.queries.method) == "none"  # else the student trained on synthetic queries
    if labelled and main.dev_split is not None and main.dev_split == cfg.data.train_split:
        # the student's own training queries are no dev queries: α is chosen only on those held out
        main.trained_on = True
        held = stage_dir(cfg, artifacts.TRAIN) / artifacts.DEV_QUERIES
        if not (cfg.train.dev_queries or cfg.train.dev_fraction):
            main.default_why = (
                f"the judged {main.dev_split} queries of {main.name} are the student's training queries; "
                "train.dev_fraction holds some out to choose α on"
            )
            main.dev_split = None
        elif held.is_file():
            main.held_out = held.read_text().split()
    return main


def targets(cfg: DictConfig) -> list[Target]:
    """The main collection, then the extra ones (``evaluate.collections``)."""
    out = [main_target(cfg)]
    folder = stage_dir(cfg, artifacts.EVALUATE)
    for name, data in extra_collections(cfg):
        coll, split = extra_split(cfg, name, data)
        out.append(make_target(name, coll, split, folder / name, name, dev_split(data, coll, split)))
    return out


# --------------------------------------------------------------------------- the model card
def student_how(cfg: DictConfig) -> str:
    """How the student was evaluated, for its model card."""
    ev = cfg.evaluate
    if reranks(cfg, "student"):
        how = f"re-ranking the top {ev.rerank_depth} of the {ev.first_stage} first stage"
        if ev.first_stage == "dense":
            how += f" (`{ev.first_stage_model}`)"
        return how
    return f"exact dense retrieval over the whole corpus (top {ev.top_k})"


def hydra_command() -> str:
    """The command that ran this evaluation: the Hydra job's stage and overrides (no date, no
    folder of logs); empty outside a Hydra job (the Python API)."""
    from hydra.core.hydra_config import HydraConfig

    try:
        hc = HydraConfig.get()
    except ValueError:  # not inside a Hydra job
        return ""
    stage = hc.job.name if hc.job.name and hc.job.name != "distillrank" else artifacts.EVALUATE
    return " ".join(["distillrank", shlex.quote(stage), *(shlex.quote(o) for o in hc.overrides.task)])
