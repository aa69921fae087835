"""The layers of CONTRIBUTING.md ("Layers"), checked on the imports of every module of the package.

0: errors, workspace, runtime, allocator, config, artifacts, sharding. 1: the domain code (the Ranker interface, data,
queries, mining, models, teachers, students, losses, training, evaluation, and the model card's
formatter).
2: the stages, the builders, the keys, validation. 3: cli (and __main__), launch, the pipeline, reporting.
A module imports only from its own layer or those below; a stage imports no other stage.
Imports inside functions count as much as those at the top of a module.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "distillrank"

# module (or package) -> layer; a module takes the layer of its longest listed prefix
LAYERS = {
    "distillrank": 0,  # the package itself (its __init__)
    "distillrank.errors": 0,
    "distillrank.workspace": 0,
    "distillrank.runtime": 0,
    "distillrank.allocator": 0,  # glibc malloc's thresholds: freed memory kept for the next forward
    "distillrank.config": 0,
    "distillrank.artifacts": 0,
    "distillrank.columns": 0,  # column helpers (distinct strings, sorted unique, row slices, group codes) for cache and pools
    "distillrank.sharding": 0,  # a torchrun rank's or SLURM array task's share of a job, and the group's operations
    "distillrank.ranking": 1,  # the Ranker interface that teachers and students implement
    "distillrank.calibration": 1,  # hardware=auto: backend and precision measured per model
    "distillrank.data": 1,
    "distillrank.queries": 1,
    "distillrank.mining": 1,
    "distillrank.models": 1,
    "distillrank.teachers": 1,
    "distillrank.students": 1,
    "distillrank.losses": 1,
    "distillrank.training": 1,
    "distillrank.evaluation": 1,
    "distillrank.reporting.model_card": 1,  # plain Markdown of a model card: the train and evaluate stages write it
    "distillrank.builders": 2,
    "distillrank.keys": 2,
    "distillrank.validation": 2,
    "distillrank.stages": 2,
    "distillrank.cli": 3,
    "distillrank.__main__": 3,  # python -m distillrank: the command
    "distillrank.launch": 3,  # a SLURM task's torch.distributed variables, set by the command before a stage
    "distillrank.pipeline": 3,
    "distillrank.reporting": 3,
}


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


MODULES = _modules()


def _imports(module: str, path: Path) -> set[str]:
    """The distillrank modules ``module`` imports, anywhere in its code (``from a import b`` names
    the module ``a.b`` when that is a module, else ``a``)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, up level - 1
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base)
    return {name for name in found if name == "distillrank" or name.startswith("distillrank.")}


def layer(module: str) -> int:
    """The layer of a module: that of its longest prefix in :data:`LAYERS`."""
    parts = module.split(".")
    for end in range(len(parts), 0, -1):
        prefix = ".".join(parts[:end])
        if prefix in LAYERS:
            return LAYERS[prefix]
    raise KeyError(module)


IMPORTS = {module: _imports(module, path) for module, path in MODULES.items()}


def test_every_module_has_a_layer():
    unplaced = []
    for module in MODULES:
        parts = module.split(".")
        if (
            not any(".".join(parts[:end]) in LAYERS for end in range(len(parts), 1, -1))
            and module != "distillrank"
        ):
            unplaced.append(module)
    assert not unplaced, f"give these modules a layer in LAYERS (and CONTRIBUTING.md): {unplaced}"


def test_no_module_imports_from_a_higher_layer():
    upward = sorted(
        (module, imported, layer(module), layer(imported))
        for module, imported_set in IMPORTS.items()
        for imported in imported_set
        if layer(imported) > layer(module)
    )
    assert not upward, (
        "imports from a higher layer (module, imported, its layer, imported's layer):\n"
        + "\n".join(map(str, upward))
    )


def _config_imports(path: Path) -> set[str]:
    """The configuration libraries (omegaconf, hydra) ``path`` imports, anywhere in its code."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
        if isinstance(node, ast.ImportFrom) and not node.level:
            names = [node.module or ""]
        found.update(n.partition(".")[0] for n in names if n.partition(".")[0] in ("omegaconf", "hydra"))
    return found


def test_domain_code_takes_no_config():
    """Layer 1 takes plain arguments, never a DictConfig (CONTRIBUTING.md, Layers): it does not
    even import the configuration libraries; the builders (layer 2) read the config for it."""
    reading = sorted(
        (module, sorted(libs))
        for module, path in MODULES.items()
        if module != "distillrank" and layer(module) == 1 and (libs := _config_imports(path))
    )
    assert reading == [], f"domain modules importing a config library (module, libraries): {reading}"


STAGE_MODULES = sorted(m for m in MODULES if m.startswith("distillrank.stages."))


def test_the_stages_are_found():
    names = {m.rpartition(".")[2] for m in STAGE_MODULES}
    assert {"queries", "mine", "score", "train", "evaluate", "export_scores"} <= names


@pytest.mark.parametrize("module", STAGE_MODULES)
def test_a_stage_imports_no_other_stage(module):
    siblings = sorted(i for i in IMPORTS[module] if i.startswith("distillrank.stages") and i != module)
    assert not siblings, (
        f"{module} imports {siblings}: what two stages share goes to layer 1, or to distillrank.keys / "
        "distillrank.artifacts / distillrank.builders (CONTRIBUTING.md, Layers)"
    )


def test_the_checks_catch_what_they_are_for(tmp_path):
    """The import parser sees a sibling stage and an upward import, at the top and in a function."""
    sample = tmp_path / "sample.py"
    sample.write_text(
        "from distillrank.stages import mine\n"
        "def f():\n"
        "    from distillrank import pipeline\n"
        "    import distillrank.reporting.report\n"
    )
    found = _imports("distillrank.stages.sample", sample)
    assert {"distillrank.stages.mine", "distillrank.pipeline", "distillrank.reporting.report"} <= found
    assert layer("distillrank.reporting.report") == 3 > layer("distillrank.stages.sample") == 2
    assert layer("distillrank.reporting.model_card") == 1
    config_user = tmp_path / "config_user.py"
    config_user.write_text("from omegaconf import DictConfig\ndef f():\n    import hydra.utils\n")
    assert _config_imports(config_user) == {"omegaconf", "hydra"}
    assert _config_imports(sample) == set()
