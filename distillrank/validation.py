"""Check a composed config without building anything (``distillrank validate``)."""

from __future__ import annotations

import inspect
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
        raise ConfigError("invalid config:\n  - " + "\n  - ".join(problems))


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


def _explain(err: Exception, overrides: list[str], hydra_compose) -> str:
    """Hydra's message, plus the valid keys where a key is unknown."""
    import re

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
