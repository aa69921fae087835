"""Artifacts on disk: stage folders, manifests, fingerprints and atomic writes.

Layout: ``<workspace>/<experiment>/<stage>/`` holds a stage's outputs and its ``manifest.json``;
``<workspace>/_cache/`` holds what experiments share (parsed collections, BM25 indexes, teacher
scores). A stage is complete only when its manifest exists: the manifest is written last, and every
other output is written to a temporary path first and renamed into place.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from distillrank.errors import ArtifactError

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
_PACKAGES = ("distillrank", "torch", "transformers", "datasets", "bm25s", "ir_measures", "hydra-core")


def stage_dir(cfg: DictConfig, stage: str) -> Path:
    """The folder of one stage of this experiment: ``<workspace>/<experiment>/<stage>``."""
    return Path(cfg.workspace) / str(cfg.experiment) / stage


def cache_dir(cfg: DictConfig) -> Path:
    """The folder shared by every experiment of this workspace."""
    return Path(cfg.workspace) / "_cache"


def to_plain(obj: Any) -> Any:
    """An OmegaConf node (or anything JSON-able) as plain Python containers, interpolations resolved."""
    if isinstance(obj, DictConfig | ListConfig):
        return OmegaConf.to_container(obj, resolve=True)
    return obj


def fingerprint(obj: Any) -> str:
    """A stable sha256 hex digest of a JSON-able value (dict keys sorted)."""
    blob = json.dumps(to_plain(obj), sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


_FILE_FP: dict[tuple[str, int, int], str] = {}


def file_fingerprint(path: str | Path) -> str:
    """sha256 of a file's content, memoised per (path, size, mtime) for the process."""
    path = Path(path).resolve()
    st = path.stat()
    memo_key = (str(path), st.st_size, st.st_mtime_ns)
    if memo_key not in _FILE_FP:
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        _FILE_FP[memo_key] = digest.hexdigest()
    return _FILE_FP[memo_key]


def dir_fingerprint(path: str | Path) -> str:
    """sha256 over the relative names and contents of every file under a folder.

    Hidden files and folders (``.git``, the ``.cache`` of ``hf download``) are left out: they
    change without the model changing.
    """
    root = Path(path)
    parts = [
        (str(p.relative_to(root)), file_fingerprint(p))
        for p in sorted(root.rglob("*"))
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    ]
    return fingerprint(parts)


def package_versions() -> dict[str, str]:
    """Versions of the packages that decide a stage's results."""
    versions = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


# --------------------------------------------------------------------------- atomic writes
def _tmp_sibling(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    return Path(tmp)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write a text file through a temporary sibling and a rename."""
    path = Path(path)
    tmp = _tmp_sibling(path)
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    """Write JSON (indented, keys in insertion order) atomically."""
    return atomic_write_text(path, json.dumps(to_plain(obj), indent=2, default=str) + "\n")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary file path; on success it replaces ``path``, on error it is removed."""
    path = Path(path)
    tmp = _tmp_sibling(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder; on success it replaces ``path`` whole, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------- manifests
@dataclass
class Manifest:
    """What a completed stage wrote about itself."""

    stage: str
    key: str
    config: dict[str, Any]
    inputs: dict[str, str]
    counts: dict[str, Any] = field(default_factory=dict)
    outputs: list[str] = field(default_factory=list)
    wall_time_s: float = 0.0
    versions: dict[str, str] = field(default_factory=package_versions)
    finished_at: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S%z"))

    def write(self, folder: Path) -> Path:
        """Write ``manifest.json`` into ``folder`` (last, so the stage counts as complete only now)."""
        return atomic_write_json(folder / MANIFEST, self.__dict__)


def read_manifest(folder: str | Path) -> Manifest | None:
    """The manifest of a stage folder, or None when the stage never completed there."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return Manifest(**data)
    except (json.JSONDecodeError, TypeError) as err:
        log.warning("ignoring unreadable manifest %s: %s", path, err)
        return None


def is_up_to_date(folder: str | Path, key: str) -> bool:
    """True when the stage completed in ``folder`` with this key and all its outputs still exist."""
    manifest = read_manifest(folder)
    if manifest is None or manifest.key != key:
        return False
    return all((Path(folder) / name).exists() for name in manifest.outputs)


def current_manifest(cfg: DictConfig, stage: str, key: str) -> Manifest | None:
    """The manifest of this experiment's stage when it is complete with ``key`` (and ``force`` is off),
    so the stage can be skipped; None when it must run."""
    folder = stage_dir(cfg, stage)
    if cfg.force or not is_up_to_date(folder, key):
        return None
    log.info("%s: up to date in %s, skipped", stage, folder)
    return read_manifest(folder)


def require_stage(cfg: DictConfig, stage: str, key: str) -> tuple[Manifest, Path]:
    """The manifest and folder of an upstream stage that must be complete and current for this config.

    The experiment's own folder is searched first, then those of its parent experiments: a sweep
    job (``<experiment>/train.lr=1e-5``) uses the scores of ``<experiment>`` when their key matches.

    Raises:
        ArtifactError: naming the command that produces the missing or stale artifact.
    """
    own = stage_dir(cfg, stage)
    hint = f"run `distillrank {stage}` with the same overrides first, or `distillrank run` for every stage"
    experiment = Path(str(cfg.experiment))
    candidates = [own] + [Path(cfg.workspace) / parent / stage for parent in experiment.parents if str(parent) != "."]
    for folder in candidates:
        manifest = read_manifest(folder)
        if manifest is not None and manifest.key == key:
            missing = [name for name in manifest.outputs if not (folder / name).exists()]
            if missing:
                raise ArtifactError(f"the '{stage}' stage in {folder} lacks {missing}: {hint}")
            return manifest, folder
    manifest = read_manifest(own)
    if manifest is None:
        raise ArtifactError(f"the '{stage}' stage has not completed in {own}: {hint}")
    raise ArtifactError(
        f"the '{stage}' artifacts in {own} were made with a different config or inputs "
        f"(stage key {manifest.key[:12]} != {key[:12]}): {hint}"
    )
