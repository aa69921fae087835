"""The runtime is layer 0 and a value: it imports nothing of distillrank above layer 0, keeps no
mutable state at module level, and a Runtime cannot be changed once built."""

from __future__ import annotations

import ast
import dataclasses
import subprocess
import sys
from pathlib import Path
from types import FunctionType, MappingProxyType, ModuleType

import pytest
import torch

from distillrank import runtime
from distillrank.runtime import Runtime

LAYER_0 = {"distillrank", "distillrank.allocator", "distillrank.errors", "distillrank.runtime", "distillrank.workspace"}
SOURCE = Path(runtime.__file__)
IMMUTABLE = (str, int, float, bool, type(None), tuple, frozenset, torch.device, torch.dtype, MappingProxyType)


def _imported(tree: ast.AST) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_runtime_imports_nothing_above_layer_0():
    ours = {m for m in _imported(ast.parse(SOURCE.read_text())) if m.split(".")[0] == "distillrank"}
    assert ours <= LAYER_0, f"runtime.py imports {sorted(ours - LAYER_0)}"
    # nor through what it imports: a fresh interpreter loads no other distillrank module
    code = "import sys, distillrank.runtime; print(' '.join(m for m in sys.modules if m.startswith('distillrank')))"
    loaded = set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split())
    assert loaded <= LAYER_0, f"importing distillrank.runtime loads {sorted(loaded - LAYER_0)}"


def _frozen(value) -> bool:
    if isinstance(value, tuple | frozenset):
        return all(_frozen(v) for v in value)
    if isinstance(value, MappingProxyType):
        return all(_frozen(v) for v in value.values())
    return isinstance(value, IMMUTABLE)


def test_no_module_level_mutable_state():
    tree = ast.parse(SOURCE.read_text())
    assert not [n for n in ast.walk(tree) if isinstance(n, ast.Global | ast.Nonlocal)], "runtime.py rebinds a global"
    values = {
        name: value
        for name, value in vars(runtime).items()
        if not name.startswith("__")
        and not isinstance(value, ModuleType | FunctionType | type)
        and name != "annotations"  # from __future__ import annotations
        and getattr(value, "__module__", None) != "dataclasses"
    }
    mutable = {name: type(value).__name__ for name, value in values.items() if not _frozen(value)}
    assert not mutable, f"module-level mutable values in runtime.py: {mutable}"


def test_a_runtime_is_a_frozen_value():
    base = Runtime(max_forward_texts=16)
    with pytest.raises(dataclasses.FrozenInstanceError):
        base.max_forward_texts = 8  # type: ignore[misc]
    assert base == Runtime(device="cpu", max_forward_texts=16) and hash(base) == hash(Runtime(max_forward_texts=16))
    moved = base.on(torch.device("cpu"))
    assert moved == base and moved is not base
    assert Runtime().forward_texts(64) == 64 and base.forward_texts(64) == 16  # one runtime's cap never leaks
