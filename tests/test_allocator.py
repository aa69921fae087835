"""glibc malloc's thresholds (distillrank.allocator): set once per process by Runtime.apply, left
alone where the user chose or the C library is not glibc, and measurably the end of the page faults
that a forward's large tensors cost each time they are made again."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
from types import FunctionType, ModuleType

import pytest
from omegaconf import OmegaConf

from distillrank import allocator, runtime
from distillrank.errors import ConfigError
from distillrank.runtime import Runtime

USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES", "LD_PRELOAD")


@pytest.fixture
def clean_env(monkeypatch):
    for name in USER_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, None),
        ({"MALLOC_MMAP_THRESHOLD_": "65536"}, "MALLOC_MMAP_THRESHOLD_"),
        ({"MALLOC_TRIM_THRESHOLD_": "0"}, "MALLOC_TRIM_THRESHOLD_"),
        ({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0"}, "GLIBC_TUNABLES"),
        ({"GLIBC_TUNABLES": "glibc.rtld.nns=2"}, None),  # tunables, but not malloc's
        ({"LD_PRELOAD": "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"}, "LD_PRELOAD (jemalloc)"),
        ({"LD_PRELOAD": "/opt/lib/libtcmalloc_minimal.so.4"}, "LD_PRELOAD (tcmalloc)"),
        ({"LD_PRELOAD": "/opt/lib/libfoo.so"}, None),
    ],
)
def test_the_users_own_choice_is_found_in_the_environment(environ, expected):
    assert allocator.users_choice(environ) == expected


def test_the_settings_name_what_a_process_runs_with(clean_env):
    clean_env.setattr(allocator, "_glibc", lambda: True)
    assert allocator.settings(True) == "glibc, freed memory kept (mmap 32 MiB, trim 128 MiB)"
    assert allocator.settings(False) == "default"
    clean_env.setattr(allocator, "_glibc", lambda: False)
    assert allocator.settings(True) == "default"  # nothing is done off glibc
    clean_env.setenv("LD_PRELOAD", "libjemalloc.so")
    assert allocator.settings(True) == allocator.settings(False) == "set by LD_PRELOAD (jemalloc)"


def test_nothing_is_done_where_the_user_chose_or_off_glibc(clean_env):
    calls = []

    class Libc:
        def mallopt(self, param, value):
            calls.append((param, value))
            return 1

    clean_env.setattr(allocator.ctypes, "CDLL", lambda name: Libc())
    clean_env.setattr(allocator, "_glibc", lambda: False)
    assert allocator.keep_freed_memory() is False and calls == []
    clean_env.setattr(allocator, "_glibc", lambda: True)
    clean_env.setenv("GLIBC_TUNABLES", "glibc.malloc.mmap_threshold=1048576")
    assert allocator.keep_freed_memory() is False and calls == []
    clean_env.delenv("GLIBC_TUNABLES")
    assert allocator.keep_freed_memory() is True
    assert calls == [(-3, 32 << 20), (-1, 128 << 20)]  # M_MMAP_THRESHOLD, M_TRIM_THRESHOLD


def test_the_module_keeps_no_state():
    values = {
        name: value
        for name, value in vars(allocator).items()
        if not name.startswith("__")
        and not isinstance(value, ModuleType | FunctionType | type | logging.Logger)
        and name != "annotations"
    }
    assert all(isinstance(v, int | str | tuple) for v in values.values()), values


def test_a_runtime_applies_it_when_configured(monkeypatch):
    calls = []
    monkeypatch.setattr(runtime, "keep_freed_memory", lambda: calls.append("kept") or True)
    Runtime(keep_freed_memory=False).apply()
    assert calls == []
    Runtime().apply()
    assert calls == ["kept"]
    node = {"device": "cpu", "precision": "fp32"}  # a hardware config written before the setting existed
    assert Runtime.from_config(OmegaConf.create(node)).keep_freed_memory is True
    assert (
        Runtime.from_config(OmegaConf.create({**node, "keep_freed_memory": False})).keep_freed_memory is False
    )
    with pytest.raises(ConfigError, match="keep_freed_memory"):
        Runtime(keep_freed_memory="yes")  # type: ignore[arg-type]


# an encoder's forward, small enough for a test but with tensors of 1-8 MB (64 x 128 tokens): glibc's
# thresholds, at their defaults, rise only as far as the largest block freed, so each forward's
# tensors come back from the kernel as fresh pages
_FAULTS = textwrap.dedent(
    """
    import hashlib, resource, sys, torch
    from transformers import BertConfig, BertModel
    from distillrank import allocator
    if sys.argv[1] == "keep":
        assert allocator.keep_freed_memory()
    torch.manual_seed(0)
    config = BertConfig(vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256)
    model = BertModel(config).eval()
    ids = torch.randint(0, 1000, (64, 128))
    with torch.inference_mode():
        model(input_ids=ids), model(input_ids=ids)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(5):
            out = model(input_ids=ids).last_hidden_state
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) // 5
    print(hashlib.sha256(out.numpy().tobytes()).hexdigest(), faults)
    """
)


@pytest.mark.skipif(not allocator._glibc(), reason="glibc's malloc only")
def test_kept_memory_ends_the_page_faults_of_a_forward_and_changes_no_result(clean_env):
    def forward(arm: str) -> tuple[str, int]:
        out = subprocess.run([sys.executable, "-c", _FAULTS, arm], capture_output=True, text=True, check=True)
        digest, faults = out.stdout.split()[-2:]
        return digest, int(faults)

    (default_out, default), (kept_out, kept) = forward("default"), forward("keep")
    assert kept_out == default_out, "the hidden states differ: only where tensors live may change"
    # measured: 6,700-8,300 page faults a forward with glibc's defaults, 100-300 with freed memory kept
    assert default > 2000, f"glibc's defaults: {default} page faults a forward"
    assert kept * 5 < default, f"freed memory kept: {kept} page faults a forward against {default}"
