"""Stage keys derived from the config sections each stage declares (:mod:`distillrank.keys`).

The keys of every section come from the schema (:class:`distillrank.config.Config`; for the
polymorphic ``student`` and ``loss``, from the composed config), never from a list kept here: a key
added to the schema is covered at once.
"""

from __future__ import annotations

import dataclasses
import enum
import shutil
import typing
from pathlib import Path
from typing import Any

import pytest
from conftest import tiny_overrides
from omegaconf import OmegaConf

from distillrank import config, keys
from distillrank.artifacts import EVALUATE, MINE, QUERIES, SCORE, TRAIN
from distillrank.validation import compose

STAGES = (QUERIES, MINE, SCORE, TRAIN, EVALUATE)
SECTION_TYPES = typing.get_type_hints(config.Config)


def _leaves(cfg, section: str) -> list[tuple[str, Any]]:
    """``(dotted key, type hint)`` of every key of a section: the schema's fields, or, for a
    section the schema leaves open (``Any``), the keys the composed config has."""
    hint = SECTION_TYPES[section]
    if dataclasses.is_dataclass(hint):
        return [(f"{section}.{name}", t) for name, t in typing.get_type_hints(hint).items()]
    if hint is Any:
        return [(f"{section}.{name}", None) for name in cfg[section]]
    return [(section, hint)]


def _new_value(value, hint):
    """A value of the key's type other than ``value``."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, enum.Enum):
        return next(member for member in type(value) if member is not value)
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value + 0.5
    if isinstance(value, str):
        return value + "_changed"
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if isinstance(value, list):
        element = typing.get_args(args[0] if args and typing.get_origin(args[0]) is list else hint)
        kind = element[0] if element else None
        if isinstance(kind, type) and issubclass(kind, enum.Enum):  # a list of enumeration values
            return [*value, next((m for m in kind if m not in value), next(iter(kind)))]
        return [*value, 7 if kind is int else "changed"]
    if isinstance(value, dict):
        return {**value, "changed": "changed"}
    assert value is None, value
    kind = args[0] if args else None
    if kind is bool:
        return True
    if kind is int:
        return 7
    if kind is float:
        return 0.5
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        return next(iter(kind))
    return "changed"


@pytest.fixture
def fixed_inputs(monkeypatch):
    """Keys from the config sections alone: no component built, no upstream stage."""
    monkeypatch.setattr(keys, "inputs", lambda cfg, stage: {})
    monkeypatch.setattr(keys, "upstream", lambda cfg, stage: [])


@pytest.mark.parametrize("stage", STAGES)
def test_every_key_of_a_stage_section_is_in_its_key_unless_declared(stage, make_cfg, fixed_inputs):
    spec = keys.STAGE_KEYS[stage]
    base = make_cfg()
    before = keys.stage_key(base, stage)
    checked = 0
    for section in spec.sections:
        for dotted, hint in _leaves(base, section):
            cfg = base.copy()
            value = OmegaConf.select(base, dotted)
            if OmegaConf.is_config(value):
                value = OmegaConf.to_container(value)
            OmegaConf.update(cfg, dotted, _new_value(value, hint), merge=False)
            assert OmegaConf.select(cfg, dotted) != OmegaConf.select(base, dotted), dotted
            after = keys.stage_key(cfg, stage)
            if dotted in spec.excluded or dotted in spec.by_content:
                assert after == before, f"{dotted} is declared out of the {stage} key but changes it"
            else:
                assert after != before, f"changing {dotted} leaves the {stage} key unchanged"
            checked += 1
    assert checked >= len(spec.sections)


@pytest.mark.parametrize("stage", STAGES)
def test_declared_exceptions_name_keys_of_the_stage_sections(stage, make_cfg):
    spec = keys.STAGE_KEYS[stage]
    cfg = make_cfg()
    known = {dotted for section in spec.sections for dotted, _ in _leaves(cfg, section)}
    declared = {*spec.excluded, *spec.by_content}
    assert declared <= known, f"not keys of {spec.sections}: {sorted(declared - known)}"
    assert not set(spec.excluded) & set(spec.by_content)


def test_upstream_keys_and_the_version_enter_the_keys(make_cfg, monkeypatch):
    base = make_cfg()
    deeper = make_cfg("mining.depth=20")  # mining is a section of mine only
    for stage in (MINE, SCORE, TRAIN):
        assert keys.stage_key(deeper, stage) != keys.stage_key(base, stage), stage
    assert keys.system_key(deeper, "student") != keys.system_key(base, "student")  # evaluate, through the train key
    assert keys.system_key(deeper, "bm25") == keys.system_key(base, "bm25")
    shards = make_cfg("score.shard_size=7")  # excluded from the score key: nothing downstream changes
    for stage in STAGES:
        assert keys.stage_key(shards, stage) == keys.stage_key(base, stage), stage
    before = {stage: keys.stage_key(base, stage) for stage in (MINE, SCORE, TRAIN, EVALUATE)}
    monkeypatch.setattr(keys, "KEY_VERSION", keys.KEY_VERSION + 1)
    assert all(keys.stage_key(base, stage) != key for stage, key in before.items())


def test_a_collection_is_identified_by_its_content_not_its_folder(make_cfg, tiny_beir, tiny_bi_encoder, tmp_path):
    copy = tmp_path / "elsewhere"
    shutil.copytree(tiny_beir, copy)
    base = make_cfg()
    moved = compose(tiny_overrides(Path(base.workspace), copy, tiny_bi_encoder))
    assert keys.stage_key(moved, MINE) == keys.stage_key(base, MINE)
    edited = shutil.copytree(tiny_beir, tmp_path / "edited")  # a collection is loaded once per process and folder
    (edited / "queries.jsonl").write_text((edited / "queries.jsonl").read_text().replace("a", "b", 1))
    changed = compose(tiny_overrides(Path(base.workspace), edited, tiny_bi_encoder))
    assert keys.stage_key(changed, MINE) != keys.stage_key(base, MINE)


def test_a_feature_only_loss_keys_train_on_the_collection_and_teacher(make_cfg):
    cfg = make_cfg("loss=feature")
    assert keys.upstream(cfg, TRAIN) == []
    assert keys.stage_key(make_cfg("loss=feature", "mining.depth=20"), TRAIN) == keys.stage_key(cfg, TRAIN)
    assert set(keys.inputs(cfg, TRAIN)) == {"collection", "teacher"}
    assert keys.upstream(make_cfg("loss=feature", "queries=title"), TRAIN) == [QUERIES]


def test_an_enum_value_counts_as_its_name():
    class Method(enum.Enum):
        bm25 = 1

    node = OmegaConf.create({"method": Method.bm25})
    from distillrank.workspace import fingerprint, to_plain

    assert to_plain(node) == {"method": "bm25"}
    assert fingerprint({"method": Method.bm25}) == fingerprint({"method": "bm25"}) == fingerprint(node)


def test_generated_queries_are_keyed_on_the_precision_they_are_sampled_in(make_cfg, tiny_t5):
    """bf16 sampling draws other queries than fp32: the queries key changes with hardware.precision
    when a generator writes them, and not otherwise (the title method reads no model)."""
    gen = ("queries=generator", f"queries.generator.model={tiny_t5}")
    assert keys.stage_key(make_cfg(*gen), QUERIES) != keys.stage_key(make_cfg(*gen, "hardware.precision=bf16"), QUERIES)
    assert keys.stage_key(make_cfg("queries=title"), QUERIES) == keys.stage_key(
        make_cfg("queries=title", "hardware.precision=bf16"), QUERIES
    )
