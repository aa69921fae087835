"""Artifacts on disk: stage folders, manifests, fingerprints and atomic writes.

Layout: ``<workspace>/<experiment>/<stage>/`` holds a stage's outputs and its ``manifest.json``;
``<workspace>/_cache/`` holds what experiments share (parsed collections, BM25 indexes, teacher
scores). A stage is complete only when its manifest exists: the manifest is written last, and every
other output is written to a temporary path first and renamed into place.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import platform
import re
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from distillrank.errors import ArtifactError, ConfigError

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
# Every artifact reaches its final name by one rename (:func:`atomic_rename`) of a temporary
# sibling. Temporary names carry the writer's PID and a random part (``.NAME.PID.RANDOM.tmp``; a
# folder being replaced is moved aside to ``.NAME.old-PID-RANDOM``), so two processes never share
# one, and a later writer of NAME removes those its dead predecessors left (:func:`remove_stale_temps`).
FAULT_ENV = "DISTILLRANK_FAULT_RENAME"  # "N" or "N:raise": the Nth rename raises; "N:kill": SIGKILL
_LEGACY_STALE_S = 24 * 3600  # temporary names without a PID (older versions): removed after a day
_REPLACE_ATTEMPTS = 100  # atomic_dir: tries when another process puts NAME back between two renames


class InjectedFault(OSError):
    """Raised by the fault-injection hook (``DISTILLRANK_FAULT_RENAME=N``) at the Nth atomic rename."""


@dataclass
class _RenameCount:
    """Renames this process made since the fault-injection setting last changed."""

    spec: str | None = None
    count: int = 0


_RENAMES = _RenameCount()  # the fault-injection hook's per-process counter (testing only)


def reset_fault_injection() -> None:
    """Start counting renames from zero again (for tests that run several pipelines in one process)."""
    _RENAMES.spec, _RENAMES.count = None, 0


def _inject_fault(src: Path, dst: Path) -> None:
    """The fault-injection hook: with ``DISTILLRANK_FAULT_RENAME=N[:raise|:kill]`` the Nth atomic
    rename of this process raises :class:`InjectedFault` or kills the process (SIGKILL) instead of
    renaming."""
    spec = os.environ.get(FAULT_ENV) or None
    if spec != _RENAMES.spec:
        _RENAMES.spec, _RENAMES.count = spec, 0
    if spec is None:
        return
    number, _, mode = spec.partition(":")
    if not number.isdigit() or mode not in ("", "raise", "kill"):
        raise ConfigError(f"{FAULT_ENV}={spec!r}; expected N, N:raise or N:kill (N >= 1)")
    _RENAMES.count += 1
    if _RENAMES.count != int(number):
        return
    log.warning("%s: fault injected at atomic rename %d (%s -> %s)", FAULT_ENV, _RENAMES.count, src, dst)
    if mode == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    raise InjectedFault(f"injected fault at atomic rename {_RENAMES.count}: {src} -> {dst}")


def atomic_rename(src: str | Path, dst: str | Path) -> None:
    """``os.replace(src, dst)``: the one rename that publishes every artifact (the fault-injection
    hook counts these)."""
    _inject_fault(Path(src), Path(dst))
    os.replace(src, dst)


def pid_alive(pid: int) -> bool:
    """Tell whether a process with this id exists on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


def _process_started(pid: int) -> float | None:
    """When process ``pid`` started (epoch seconds; Linux ``/proc``), None when unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        ticks = int(stat.rsplit(")", 1)[1].split()[19])  # field 22, starttime, in clock ticks since boot
        with open("/proc/stat", encoding="ascii") as fh:
            boot = next(int(line.split()[1]) for line in fh if line.startswith("btime "))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def process_gone(pid: int, since: float | None) -> bool:
    """Whether the process ``pid`` that wrote something at time ``since`` has ended: no process has
    that id, or the one that has it started later (the id was reused, as in a restarted container,
    where this very process may have it; not checked when ``since`` is None)."""
    if not pid_alive(pid):
        return True
    if since is None:
        return False
    started = _process_started(pid)
    return started is not None and started > since + 1.0


def _temp_pattern(name: str) -> re.Pattern[str]:
    """Temporary names of ``name``: ``.NAME.PID.RAND.tmp``, ``.NAME.old-PID-RAND``, and the older
    ``.NAME.old-PID`` / ``.NAME.RAND.tmp``."""
    esc = re.escape(name)
    return re.compile(
        rf"^\.{esc}\.(?:(?P<tmp>\d+)\.\w+\.tmp|old-(?P<old>\d+)(?:-\w+)?|(?P<legacy>\w{{8}})\.tmp)$"
    )


def temp_entries(path: str | Path) -> list[tuple[Path, int | None]]:
    """The temporary siblings of ``path`` (files or folders) with the PID in their name (None for
    the older names without one), sorted by name."""
    path = Path(path)
    pattern = _temp_pattern(path.name)
    try:
        names = sorted(e.name for e in os.scandir(path.parent) if e.name.startswith(f".{path.name}."))
    except FileNotFoundError:
        return []
    out = []
    for name in names:
        match = pattern.match(name)
        if match:
            pid = match.group("tmp") or match.group("old")
            out.append((path.parent / name, int(pid) if pid else None))
    return out


def is_stale_temp(entry: Path, pid: int | None) -> bool:
    """Whether a temporary sibling was left by a writer that is gone (see :func:`process_gone`);
    one without a PID in its name when it is a day old."""
    try:
        mtime = entry.lstat().st_mtime
    except FileNotFoundError:
        return False
    if pid is None:
        return time.time() - mtime > _LEGACY_STALE_S
    return process_gone(pid, mtime)


_ANY_TEMP = re.compile(r"^\.(?P<name>.+?)\.(?:(?P<tmp>\d+)\.\w+\.tmp|old-(?P<old>\d+)-\w+)$")


def remove_stale_temps(path: str | Path, anywhere: bool = False) -> list[Path]:
    """Delete the temporary siblings of ``path`` that killed writers left (never those of a live
    process, never anything not named as ours); the removed paths. With ``anywhere``, ``path``
    is a folder and the temporaries of every name in it are meant (for outputs whose names are
    never written twice, such as score shards)."""
    path = Path(path)
    if anywhere:
        try:
            names = sorted(e.name for e in os.scandir(path) if e.name.startswith("."))
        except FileNotFoundError:
            names = []
        entries = [
            (path / name, int(m.group("tmp") or m.group("old"))) for name in names if (m := _ANY_TEMP.match(name))
        ]
    else:
        entries = temp_entries(path)
    removed = []
    for entry, pid in entries:
        if not is_stale_temp(entry, pid):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        log.info("removed %s, left by an interrupted write", entry)
        removed.append(entry)
    return removed


def _temp_prefix(path: Path) -> str:
    return f".{path.name}.{os.getpid()}."


def _tmp_sibling(path: Path, tmp_dir: Path | None = None) -> Path:
    """A new empty temporary file for ``path``, beside it or in ``tmp_dir`` (same file system)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    where = Path(tmp_dir) if tmp_dir is not None else path.parent
    remove_stale_temps(where / path.name)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=".tmp", dir=where)
    os.close(fd)
    return Path(tmp)


def atomic_write_text(path: str | Path, text: str, tmp_dir: str | Path | None = None) -> Path:
    """Write a text file through a temporary sibling and a rename. With ``tmp_dir`` (a folder on
    the same file system) the temporary file goes there: a killed write then leaves nothing inside
    ``path``'s folder (an exported model, say)."""
    path = Path(path)
    tmp = _tmp_sibling(path, Path(tmp_dir) if tmp_dir is not None else None)
    try:
        tmp.write_text(text, encoding="utf-8")
        atomic_rename(tmp, path)
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
        atomic_rename(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def replace_dir(src: Path, dst: Path) -> None:
    """Put folder ``src`` at ``dst``, replacing what is there: the old ``dst`` is moved aside to a
    unique ``.NAME.old-PID-RAND`` sibling, ``src`` renamed in, the old one deleted. When another
    process puts a ``dst`` back between the two renames, its folder is moved aside too (the last
    writer wins; each was complete). When the second rename fails, the old folder is put back;
    killed between the renames, ``dst`` is missing and the old folder stays complete under its
    temporary name until a later writer removes it."""
    moved: list[Path] = []
    try:
        for attempt in range(_REPLACE_ATTEMPTS):
            if os.path.lexists(dst):
                old = Path(tempfile.mkdtemp(prefix=f".{dst.name}.old-{os.getpid()}-", dir=dst.parent))
                if not dst.is_dir() or dst.is_symlink():
                    old.rmdir()  # a file or link: renamed to the free name
                try:
                    atomic_rename(dst, old)
                except FileNotFoundError:  # another writer moved it away first
                    shutil.rmtree(old, ignore_errors=True)
                    continue
                moved.append(old)
            try:
                atomic_rename(src, dst)
                return
            except OSError as err:
                if err.errno not in (errno.ENOTEMPTY, errno.EEXIST) or attempt == _REPLACE_ATTEMPTS - 1:
                    if moved and not os.path.lexists(dst):
                        os.replace(moved.pop(), dst)  # put the previous folder back (a recovery, not a publish)
                    raise
    finally:
        for old in moved:
            if old.is_dir() and not old.is_symlink():
                shutil.rmtree(old, ignore_errors=True)
            else:
                old.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder; on success it replaces ``path`` whole, on error it is removed.

    Temporary siblings of ``path`` that killed processes left are removed first
    (:func:`remove_stale_temps`); the new folder goes in by :func:`replace_dir`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        replace_dir(tmp, path)
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
