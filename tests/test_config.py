"""The structured schema's enumerations: a misspelt value fails at compose with the valid values."""

from __future__ import annotations

import dataclasses
import json
import typing

import pytest
import yaml
from omegaconf import OmegaConf

from distillrank import config
from distillrank.config import Choice, Config
from distillrank.errors import ConfigError
from distillrank.validation import compose
from distillrank.workspace import fingerprint, to_plain


def _enum_fields(schema: type = Config, prefix: str = "") -> list[tuple[str, type[Choice], bool]]:
    """``(key, enum, is_list)`` of every enumerated field of the schema, found by walking its dataclasses."""
    found = []
    hints = typing.get_type_hints(schema, vars(config))
    for f in dataclasses.fields(schema):
        kind, key = hints[f.name], f"{prefix}{f.name}"
        args = typing.get_args(kind)
        if dataclasses.is_dataclass(kind):
            found.extend(_enum_fields(kind, f"{key}."))
        elif isinstance(kind, type) and issubclass(kind, Choice):
            found.append((key, kind, False))
        elif typing.get_origin(kind) is list and args and isinstance(args[0], type) and issubclass(args[0], Choice):
            found.append((key, args[0], True))
    return found


ENUM_FIELDS = _enum_fields()


def test_the_schema_has_enumerations():
    keys = {key for key, _, _ in ENUM_FIELDS}
    assert {"train.scheduler", "mining.method", "hardware.precision", "evaluate.systems"} <= keys
    assert "hardware.device" not in keys  # cpu | cuda | cuda:N | auto is open-ended


@pytest.mark.parametrize(("key", "enum", "is_list"), ENUM_FIELDS, ids=[k for k, _, _ in ENUM_FIELDS])
def test_a_misspelt_value_fails_at_compose_with_the_valid_values(key, enum, is_list):
    bad = list(enum)[0].value + "x"
    with pytest.raises(ConfigError) as err:
        compose([f"{key}=[{bad}]" if is_list else f"{key}={bad}"])
    message = str(err.value)
    assert len(message.splitlines()) == 1, message
    assert f"{key}[0]='{bad}'" in message if is_list else f"{key}='{bad}'" in message
    assert message.endswith("valid values: " + ", ".join(m.value for m in enum)), message


@pytest.mark.parametrize(("key", "enum", "is_list"), ENUM_FIELDS, ids=[k for k, _, _ in ENUM_FIELDS])
def test_every_valid_value_composes_and_reads_as_its_string(key, enum, is_list):
    for member in enum:
        assert member.name == member.value  # OmegaConf matches strings against the names
        value = OmegaConf.select(compose([f"{key}=[{member.value}]" if is_list else f"{key}={member.value}"]), key)
        got = value[0] if is_list else value
        assert got is member and got == member.value and f"{got}" == str(got) == member.value
        assert json.dumps(got) == json.dumps(member.value) and hash(got) == hash(member.value)


def test_enumerations_serialise_as_plain_strings():
    """Stage keys and manifests fingerprint config values: an enum must serialise as its string."""
    cfg = compose(["train.scheduler=cosine", "hardware=cpu_bf16", "score.normalize_scope=global"])
    plain = to_plain(cfg)
    assert type(plain["train"]["scheduler"]) is str and plain["train"]["scheduler"] == "cosine"
    assert all(type(s) is str for s in plain["evaluate"]["systems"])
    with_enums = OmegaConf.to_container(cfg, resolve=True)  # what code that skips to_plain would see
    assert with_enums["train"]["scheduler"] is config.Scheduler.cosine
    assert fingerprint(with_enums) == fingerprint(plain) == fingerprint(json.loads(json.dumps(plain)))
    assert yaml.safe_load(yaml.safe_dump(plain)) == plain  # the model card dumps to_plain with safe_dump
    assert yaml.safe_load(OmegaConf.to_yaml(cfg.score))["normalize_scope"] == "global"


def test_the_enumerations_match_what_the_code_accepts():
    """A value the schema accepts but no code handles would fail only when its stage runs."""
    from distillrank import runtime
    from distillrank.calibration import AUTO  # hardware=auto: resolved per model by the builders
    from distillrank.data.collection import SOURCES
    from distillrank.mining.sampling import SAMPLINGS
    from distillrank.teachers import normalize
    from distillrank.training.loop import SCHEDULES
    from distillrank.training.trackers import LOGGERS

    for enum, accepted in [
        (config.Precision, (*runtime.PRECISIONS, AUTO)),
        (config.Backend, (*runtime.BACKENDS, AUTO)),
        (config.Source, SOURCES),
        (config.Sampling, SAMPLINGS),
        (config.Normalize, normalize.METHODS),
        (config.NormalizeScope, normalize.SCOPES),
        (config.Scheduler, SCHEDULES),
        (config.Logger, LOGGERS),
    ]:
        assert {m.value for m in enum} == set(accepted), enum.__name__
