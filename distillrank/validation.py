"""Check a composed config without building anything (``distillrank validate``)."""

from __future__ import annotations

import inspect
import math
from typing import Any

from hydra.utils import get_object
from omegaconf import DictConfig, ListConfig, OmegaConf

from distillrank.errors import ConfigError

TARGET_GROUPS = ("teacher", "student", "loss")


def _signature_problems(node: DictConfig, where: str) -> list[str]:
    target = node.get("_target_")
    if target is None:
        return [f"{where}: no _target_ (which class or function builds it?)"]
    try:
        obj = get_object(target)
    except Exception as err:  # noqa: BLE001 - hydra raises ImportError or its own errors
        return [f"{where}._target_={target!r} cannot be imported ({type(err).__name__}: {err})"]
    if not callable(obj):
        return [f"{where}._target_={target!r} is not callable"]
    sig = inspect.signature(obj.__init__ if inspect.isclass(obj) else obj)
    params = {n: p for n, p in sig.parameters.items() if n != "self"}
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    given = {k for k in node.keys() if not str(k).startswith("_")}
    problems = []
    if not accepts_any:
        for key in sorted(given - set(params)):
            valid = ", ".join(n for n, p in params.items() if p.kind is not inspect.Parameter.VAR_POSITIONAL)
            problems.append(f"{where}.{key} is not a parameter of {target}; valid keys: {valid}")
    for name, p in params.items():
        if p.default is inspect.Parameter.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            if name not in given:
                problems.append(f"{where}.{name} is required by {target}")
            elif not OmegaConf.is_missing(node, name) and node[name] is None:
                problems.append(f"{where}.{name} is required by {target} but is null; set {where}.{name}=VALUE")
    return problems + _nested_problems(node, where)


def _nested_problems(node: Any, where: str) -> list[str]:
    """Check the ``_target_`` nodes inside a node's values (ensemble members, combined losses)."""
    problems: list[str] = []
    if isinstance(node, DictConfig):  # `???` values are reported by _missing_keys, not read here
        items = [(k, node[k]) for k in node.keys() if not OmegaConf.is_missing(node, k)]
    else:
        items = list(enumerate(node)) if isinstance(node, ListConfig) else []
    for key, value in items:
        if str(key).startswith("_"):
            continue
        path = f"{where}[{key}]" if isinstance(node, ListConfig) else f"{where}.{key}"
        if isinstance(value, DictConfig) and "_target_" in value:
            problems.extend(_signature_problems(value, path))
        elif isinstance(value, DictConfig | ListConfig):
            problems.extend(_nested_problems(value, path))
    return problems


def check_targets(cfg: DictConfig) -> None:
    """Check every ``_target_`` node (teacher, student, loss) against its signature.

    Raises:
        ConfigError: listing each unknown key (with the valid ones), missing required key,
            unimportable target and missing mandatory (``???``) value.
    """
    problems: list[str] = []
    for group in TARGET_GROUPS:
        node = cfg.get(group)
        if node is None:
            problems.append(f"{group}: not set")
            continue
        problems.extend(_signature_problems(node, group))
    for key in _missing_keys(cfg):
        problems.append(f"{key} is required (???) but not set")
    if problems:
        raise ConfigError(_joined(problems))


def _missing_keys(node: Any, prefix: str = "") -> list[str]:
    missing = []
    if isinstance(node, DictConfig):
        for key in node.keys():
            path = f"{prefix}{key}"
            if OmegaConf.is_missing(node, key):
                missing.append(path)
            else:
                missing.extend(_missing_keys(node._get_node(key), path + "."))
    return missing


# --------------------------------------------------------------------------- safety and ranges
PACKAGE = "distillrank"
ALLOW_EXTERNAL = "allow_external_targets"


def _is_ours(obj: Any) -> bool:
    """Whether ``obj`` is a class or function defined in distillrank (not one it imports)."""
    module = getattr(obj, "__module__", None)
    return (
        (inspect.isclass(obj) or inspect.isroutine(obj))
        and isinstance(module, str)
        and (module == PACKAGE or module.startswith(PACKAGE + "."))
    )


def _target_nodes(node: Any, where: str) -> list[tuple[str, Any]]:
    """``(path, _target_ value)`` of every ``_target_`` at any depth of ``node`` (lists included)."""
    found: list[tuple[str, Any]] = []
    if isinstance(node, DictConfig):
        for key in node.keys():
            if OmegaConf.is_missing(node, key):
                continue
            path = f"{where}.{key}" if where else str(key)
            value = node[key]
            if key == "_target_":
                found.append((where or "<root>", value))
            elif isinstance(value, DictConfig | ListConfig):
                found.extend(_target_nodes(value, path))
    elif isinstance(node, ListConfig):
        for i in range(len(node)):
            if not OmegaConf.is_missing(node, i) and isinstance(node[i], DictConfig | ListConfig):
                found.extend(_target_nodes(node[i], f"{where}[{i}]"))
    return found


def external_target_problems(node: Any, where: str = "") -> list[str]:
    """The ``_target_`` values under ``node`` that would build something outside distillrank.

    A target must be a dotted name under ``distillrank.`` that resolves to a class or function
    *defined* in distillrank: ``distillrank.training.loop.torch.load`` starts with the prefix but
    is torch's ``load``, and is refused. Only ``distillrank.*`` modules are imported to find out.
    """
    problems = []
    for path, target in _target_nodes(node, where):
        fix = f"configs build only distillrank's own classes; set {ALLOW_EXTERNAL}=true to allow it (only for a config you trust: a target runs code)"
        if not isinstance(target, str) or not (target == PACKAGE or target.startswith(PACKAGE + ".")):
            problems.append(f"{path}._target_={target!r} is outside distillrank.*; {fix}")
            continue
        try:
            obj = get_object(target)
        except Exception as err:  # noqa: BLE001 - hydra raises ImportError or its own errors
            problems.append(f"{path}._target_={target!r} cannot be imported ({type(err).__name__})")
            continue
        if not _is_ours(obj):
            origin = getattr(obj, "__module__", None) or type(obj).__name__
            problems.append(f"{path}._target_={target!r} resolves to {origin}, outside distillrank; {fix}")
    return problems


def check_instantiable(node: Any, where: str, allow_external: bool) -> None:
    """Refuse a node to be given to ``hydra.utils.instantiate`` when one of its targets is external.

    Raises:
        ConfigError: naming each refused target and the setting that allows it.
    """
    if allow_external:
        return
    problems = external_target_problems(node, where)
    if problems:
        raise ConfigError(_joined(problems))


def _joined(problems: list[str]) -> str:
    if len(problems) == 1:
        return f"invalid config: {problems[0]}"
    return "invalid config:\n  - " + "\n  - ".join(problems)


def name_problem(value: Any, key: str) -> str | None:
    """Why ``value`` cannot be ``key``, a name that becomes part of a path (``<workspace>/<experiment>``,
    ``<data root>/<data.name>``), or None.

    A name is relative, made of parts separated by ``/`` (sweep jobs are ``<experiment>/<key=value>``;
    ir_datasets ids are ``beir/scifact``), none of them empty, ``.``, ``..`` or starting with ``.``
    (the temporary names distillrank writes), with no backslash or control character.
    """
    text = "" if value is None else str(value)
    example = "my_exp or my_exp/lr_1e-5" if key == "experiment" else "scifact or beir/scifact"
    expected = f"a relative name of plain parts separated by '/', e.g. {example}"
    if not text.strip():
        return f"{key}={value!r} is empty; expected {expected}"
    parts = text.split("/")
    if (
        text.startswith("/")
        or "\\" in text
        or any(ord(c) < 32 for c in text)
        or any(not p or p.startswith(".") or p != p.strip() for p in parts)
    ):
        return f"{key}={text!r} could name a folder outside its parent (absolute, '..', '.', empty, hidden or padded part, backslash); expected {expected}"
    return None


def name_problems(cfg: DictConfig) -> list[str]:
    """``experiment`` and ``data.name`` checked to stay inside the workspace and the data root;
    an experiment may not take a folder the workspace uses itself (``_cache``, ...)."""
    problems = []
    experiment = cfg.get("experiment")
    if problem := name_problem(experiment, "experiment"):
        problems.append(problem)
    elif str(experiment).split("/")[0] in _RESERVED_EXPERIMENTS:
        problems.append(
            f"experiment={experiment!r}: {str(experiment).split('/')[0]!r} is a folder the workspace uses "
            f"itself ({', '.join(sorted(_RESERVED_EXPERIMENTS))}); choose another name"
        )
    data = cfg.get("data")
    if isinstance(data, DictConfig) and "name" in data and not OmegaConf.is_missing(data, "name"):
        if problem := name_problem(data.get("name"), "data.name"):
            problems.append(problem)
    return problems


# folders of the workspace that are not experiments (the shared cache, Hydra's multirun logs, the
# report): an experiment there would mix with them, and the report would not list it
from distillrank.artifacts import WORKSPACE_FOLDERS as _RESERVED_EXPERIMENTS  # noqa: E402


# A rule: (what the value must be, a test). Every numeric setting of the schema has one; a value
# of the wrong type is refused by the schema itself at composition.
def _at_least(low: int, optional: bool = False):
    return (f"an integer >= {low}" + (" or null" if optional else ""), lambda v: v >= low, optional)


def _positive(optional: bool = False):
    return ("a number > 0" + (" or null" if optional else ""), lambda v: v > 0, optional)


def _non_negative(optional: bool = False):
    return ("a number >= 0" + (" or null" if optional else ""), lambda v: v >= 0, optional)


def _finite(optional: bool = False):
    return ("a finite number" + (" or null" if optional else ""), lambda v: True, optional)


def _within(low: float, high: float, open_low: bool = False, open_high: bool = False, optional: bool = False):
    text = f"{'(' if open_low else '['}{low}, {high}{')' if open_high else ']'}"
    return (
        f"a number in {text}" + (" or null" if optional else ""),
        lambda v: (v > low if open_low else v >= low) and (v < high if open_high else v <= high),
        optional,
    )


RANGES: dict[str, tuple] = {
    "data.max_train_queries": _at_least(1, optional=True),
    "data.max_test_queries": _at_least(1, optional=True),
    "data.max_docs": _at_least(1, optional=True),
    "mining.depth": _at_least(1),
    "mining.window_start": _at_least(1),
    "mining.window_end": _at_least(1),
    "mining.num_negatives": _at_least(1),
    "mining.k1": _non_negative(),
    "mining.b": _within(0, 1),
    "mining.batch_size": _at_least(1),
    "mining.query_max_length": _at_least(1, optional=True),
    "mining.passage_max_length": _at_least(1, optional=True),
    "mining.rrf_k": _non_negative(),
    "hardware.num_threads": _at_least(1, optional=True),
    "hardware.max_forward_texts": _at_least(0, optional=True),
    "hardware.max_batch_tokens": _at_least(1, optional=True),
    "hardware.max_forward_tokens": _at_least(1, optional=True),
    "train.epochs": _at_least(1),
    "train.max_steps": _at_least(1, optional=True),
    "train.batch_size": _at_least(1),
    "train.negatives_per_example": _at_least(1),
    "train.grad_accum_steps": _at_least(1),
    "train.lr": _positive(),
    "train.weight_decay": _non_negative(),
    "train.warmup_ratio": _within(0, 1),
    "train.max_grad_norm": _positive(),
    "train.log_every": _at_least(1),
    "train.checkpoint_minutes": _non_negative(),
    "train.checkpoint_every": _at_least(0),
    "train.eval_every": _at_least(0),
    "train.dev_queries": _at_least(0),
    "train.dev_fraction": _within(0, 1, open_high=True),
    "train.dev_depth": _at_least(1),
    "train.dev_batch_size": _at_least(1),
    "train.early_stopping_patience": _at_least(0),
    "train.feature_batch_size": _at_least(1, optional=True),
    "train.feature_max_passages": _at_least(1, optional=True),
    "queries.per_doc": _at_least(1),
    "queries.max_docs": _at_least(1, optional=True),
    "queries.remove_prob": _within(0, 1),
    "queries.min_words": _at_least(1),
    "queries.filter_top_k": _at_least(1, optional=True),
    "queries.filter_depth": _at_least(1),
    "score.shard_size": _at_least(1),
    "score.denoise_margin": _finite(optional=True),
    "score.denoise_relative": _within(0, 1, optional=True),
    "evaluate.alpha": _within(0, 1, open_low=True, open_high=True),
    "evaluate.top_k": _at_least(1),
    "evaluate.rerank_depth": _at_least(1),
    "evaluate.batch_size": _at_least(1),
    "evaluate.chunk_size": _at_least(1),
    "evaluate.latency_queries": _at_least(0),
    "evaluate.hybrid_alpha": _within(0, 1, optional=True),
    "evaluate.hybrid_dev_queries": _at_least(1, optional=True),
    "evaluate.hybrid_rrf_k": _non_negative(),
}

# Numeric arguments of teacher / student / loss / generator nodes, by name (at any depth): the
# classes' own checks run only when they are built, after earlier stages have run.
TARGET_ARG_RANGES: dict[str, tuple] = {
    "batch_size": _at_least(1),
    "pair_batch_size": _at_least(1),
    "max_length": _at_least(1, optional=True),
    "query_max_length": _at_least(1, optional=True),
    "passage_max_length": _at_least(1, optional=True),
    "max_new_tokens": _at_least(1),
    "num_layers": _at_least(1, optional=True),
    "keep_layers": _at_least(1, optional=True),
    "dim": _at_least(1),
    "dropout": _within(0, 1, open_high=True, optional=True),
    "temperature": _positive(),
    "teacher_temperature": _positive(),
    "student_temperature": _positive(),
    "sigma": _positive(),
    "top_p": _within(0, 1, open_low=True),
    "k1": _non_negative(),
    "b": _within(0, 1),
    "weight": _non_negative(),
    "mse_weight": _non_negative(),
    "cosine_weight": _non_negative(),
}


def _number_problem(key: str, value: Any, rule: tuple) -> str | None:
    expected, test, optional = rule
    if value is None:
        return None if optional else f"{key}=null; expected {expected}"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"{key}={value!r}; expected {expected}"
    if "integer" in expected and not float(value).is_integer():
        return f"{key}={value!r}; expected {expected}"
    if not math.isfinite(value) or not test(value):
        return f"{key}={value!r}; expected {expected}"
    return None


def _target_arg_problems(node: Any, where: str) -> list[str]:
    problems: list[str] = []
    if isinstance(node, DictConfig):
        for key in node.keys():
            if OmegaConf.is_missing(node, key):
                continue
            value = node[key]
            path = f"{where}.{key}"
            if isinstance(value, DictConfig | ListConfig):
                problems.extend(_target_arg_problems(value, path))
            elif key in TARGET_ARG_RANGES:
                if problem := _number_problem(path, value, TARGET_ARG_RANGES[key]):
                    problems.append(problem)
    elif isinstance(node, ListConfig):
        for i in range(len(node)):
            if not OmegaConf.is_missing(node, i):
                problems.extend(_target_arg_problems(node[i], f"{where}[{i}]"))
    return problems


def available_negatives(mining: DictConfig) -> int:
    """The most negatives mining can keep per query under ``mining`` (judged positives in the window
    can only lower it): ``num_negatives`` from the window of ranks, ``all`` the whole window."""
    window = max(0, min(int(mining.depth), int(mining.window_end)) - int(mining.window_start) + 1)
    if mining.sampling == "top":
        return min(int(mining.num_negatives), int(mining.depth))
    if mining.sampling == "all":
        return window
    return min(int(mining.num_negatives), window)


def range_problems(cfg: DictConfig) -> list[str]:
    """Every numeric setting outside its range (one line each), and settings that contradict
    each other: an empty mining window, more negatives per example than mining keeps per query,
    an ICT span ``[lo, hi]`` that is not ``1 <= lo <= hi``."""
    problems: list[str] = []
    for key, rule in RANGES.items():
        section, _, leaf = key.partition(".")
        node = cfg.get(section)
        if not isinstance(node, DictConfig) or leaf not in node or OmegaConf.is_missing(node, leaf):
            continue
        if problem := _number_problem(key, node[leaf], rule):
            problems.append(problem)
    for group in ("teacher", "student", "loss"):
        problems.extend(_target_arg_problems(cfg.get(group), group))
    if isinstance(cfg.get("queries"), DictConfig):
        problems.extend(_target_arg_problems(cfg.queries.get("generator"), "queries.generator"))
        span = list(cfg.queries.get("span_words") or [])
        if len(span) != 2 or not all(isinstance(v, int) for v in span) or not 1 <= span[0] <= span[1]:
            problems.append(f"queries.span_words={span}; expected [lo, hi] with 1 <= lo <= hi")
    if problems:  # the cross-checks below assume the single values are in range
        return problems
    m = cfg.mining
    if int(m.window_start) > min(int(m.depth), int(m.window_end)):
        problems.append(
            f"mining window [{m.window_start}, {m.window_end}] holds no rank of the top mining.depth={m.depth}; "
            "lower mining.window_start or raise mining.depth / mining.window_end"
        )
        return problems
    n, available = int(cfg.train.negatives_per_example), available_negatives(m)
    if n > available:
        problems.append(
            f"train.negatives_per_example={n} but mining keeps at most {available} negatives per query "
            f"(mining.sampling={m.sampling}, num_negatives={m.num_negatives}, depth={m.depth}, window "
            f"[{m.window_start}, {m.window_end}]); set train.negatives_per_example<={available} or raise "
            "mining.num_negatives (and mining.depth / mining.window_end)"
        )
    return problems


def check_config(cfg: DictConfig) -> None:
    """Every check of a composed config, before anything is built: names that become paths,
    ``_target_`` limited to distillrank (unless ``allow_external_targets=true``), numeric ranges,
    then each target's signature (:func:`check_targets`).

    Raises:
        ConfigError: one line per problem.
    """
    from omegaconf.errors import OmegaConfBaseException

    try:
        problems = name_problems(cfg)
        if not allows_external(cfg):
            problems.extend(external_target_problems(cfg))
        if problems:  # nothing outside distillrank is imported to check a signature
            raise ConfigError(_joined(problems))
        problems = range_problems(cfg)
        if problems:
            raise ConfigError(_joined(problems))
    except OmegaConfBaseException as err:  # an interpolation that does not resolve, a bad type
        raise ConfigError(f"invalid config: {str(err).strip().splitlines()[0]}") from None
    check_targets(cfg)


# --------------------------------------------------------------------------- composition
_HYDRA_FLAGS_WITH_VALUE = ("--cfg", "-c", "--package", "-p", "--info", "-i")
_CUSTOM_SOURCES = ("--config-dir", "-cd", "--config-path", "-cp", "--config-name", "-cn")


def config_groups() -> dict[str, list[str]]:
    """Every config group under ``conf/`` and its options (file stems), sorted."""
    from distillrank.config import conf_dir

    root = conf_dir()
    return {
        d.name: sorted(p.stem for p in d.glob("*.yaml"))
        for d in sorted(root.iterdir())
        if d.is_dir() and d.name != "hydra" and not d.name.startswith(("_", "."))
    }


def compose(overrides: list[str]) -> DictConfig:
    """The config that ``overrides`` select, composed with Hydra's compose API (no job is run)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from distillrank.config import conf_dir, register_configs

    register_configs()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(str(conf_dir()), version_base="1.3"):
            try:
                return hydra_compose("config", overrides=overrides)
            except (HydraException, OmegaConfBaseException) as err:
                raise ConfigError(_explain(err, overrides, hydra_compose)) from None
    finally:
        GlobalHydra.instance().clear()


def _value_problem(err: BaseException) -> str | None:
    """One line for a value the schema refuses (OmegaConf's ``ValidationError`` behind Hydra's "Error
    merging override ..."): for an enumeration (:class:`distillrank.config.Choice`), the valid values."""
    import re

    from omegaconf.errors import ValidationError

    cause: BaseException | None = err
    while cause is not None and not isinstance(cause, ValidationError):
        cause = cause.__cause__ or cause.__context__
    if cause is None or not cause.full_key:
        return None
    first = str(cause.msg or cause).strip().splitlines()[0]
    choice = re.fullmatch(r"Invalid value '(.*)', expected one of \[(.*)\]", first)
    if choice:
        return f"{cause.full_key}={choice.group(1)!r} is not a valid value; valid values: {choice.group(2)}"
    return f"{cause.full_key}: {first}"


def _explain(err: Exception, overrides: list[str], hydra_compose) -> str:
    """Hydra's message, plus the valid keys where a key is unknown, or the valid values where a
    value is not one of its enumeration's."""
    import re

    if problem := _value_problem(err):
        return problem
    message = str(err).split("\nConfig search path")[0].strip()
    match = re.search(r"full_key: (\S+)", message) or re.search(r"Could not override '([^']+)'", message)
    if not match:
        return message
    full_key = match.group(1)
    parent, _, leaf = full_key.rpartition(".")
    kept = [o for o in overrides if o.lstrip("+~").split("=", 1)[0] != full_key]
    try:
        base = hydra_compose("config", overrides=kept)
        node = OmegaConf.select(base, parent) if parent else base
    except Exception:  # noqa: BLE001 - fall back to Hydra's own message
        return message
    if isinstance(node, DictConfig):
        valid = ", ".join(str(k) for k in node.keys())
        return f"unknown config key '{full_key}': '{leaf}' is not a key of '{parent or '<root>'}'; valid keys: {valid}"
    return message


def _plain_overrides(args: list[str]) -> list[str]:
    """The ``key=value`` overrides among a command's arguments (Hydra's flags left out)."""
    plain: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
            continue
        if arg in _HYDRA_FLAGS_WITH_VALUE:
            skip = True
            continue
        if arg.startswith("-") or "=" not in arg or arg.startswith("hydra."):
            continue
        plain.append(arg)
    return plain


def _parse(plain: list[str]) -> list:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        return OverridesParser.create().parse_overrides(plain)
    except Exception as err:  # noqa: BLE001 - Hydra's grammar errors
        raise ConfigError(f"cannot parse the overrides {plain}: {err}") from None


def swept_keys(args: list[str]) -> list[str]:
    """The keys a multirun command sweeps (``train.lr=1e-5,3e-5`` → ``train.lr``), in order."""
    return [o.get_key_element() for o in _parse(_plain_overrides(args)) if o.is_sweep_override()]


def dry_overrides(args: list[str]) -> list[str] | None:
    """The overrides among a stage command's arguments, sweeps reduced to their first value, for a
    dry composition before Hydra runs; None when the command uses its own config sources."""
    if any(a.split("=", 1)[0] in _CUSTOM_SOURCES for a in args):
        return None
    dry = []
    for override in _parse(_plain_overrides(args)):
        if override.is_sweep_override():
            first = next(iter(override.sweep_string_iterator()))
            dry.append(f"{override.get_key_element()}={first}")
        else:
            dry.append(override.input_line)
    return dry


def dry_variants(args: list[str]) -> list[list[str]] | None:
    """The configs a stage command's jobs use, for checking before Hydra runs: the first value of
    every sweep (what :func:`dry_overrides` gives), then that with each further value of one sweep
    in turn (each swept value is checked; a product of sweeps is not enumerated). None when the
    command uses its own config sources."""
    if (dry := dry_overrides(args)) is None:
        return None
    variants = [dry]
    for i, override in enumerate(_parse(_plain_overrides(args))):
        if override.is_sweep_override():
            for value in list(override.sweep_string_iterator())[1:]:
                variants.append([*dry[:i], f"{override.get_key_element()}={value}", *dry[i + 1 :]])
    return variants


def allows_external(cfg: DictConfig) -> bool:
    """``allow_external_targets`` of a config (false for configs written before it existed)."""
    return bool(cfg.get(ALLOW_EXTERNAL, False))


def instantiate_checked(node: Any, where: str, allow_external: bool) -> Any:
    """``hydra.utils.instantiate(node)`` once :func:`check_instantiable` passes: every stage builds
    its targets through here, so a config that skipped ``check_config`` (library use) is refused too."""
    from hydra.utils import instantiate

    check_instantiable(node, where, allow_external)
    return instantiate(node)
