"""Artifacts on disk: stage folders, manifests, fingerprints and atomic writes.

Layout: ``<workspace>/<experiment>/<stage>/`` holds a stage's outputs and its ``manifest.json``;
``<workspace>/_cache/`` holds what experiments share (parsed collections, BM25 indexes, teacher
scores). A stage is complete only when its manifest exists: the manifest is written last, and every
other output is written to a temporary path first and renamed into place.
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import fcntl
import functools
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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import Enum
from importlib import metadata
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from distillrank.errors import ArtifactError, ConfigError

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
# files of a stage's output folders that later stages rewrite: the model card, to which ``evaluate``
# adds its results (so they are not in the manifest's checksums)
MUTABLE_OUTPUTS = ("README.md",)
SEAL = ".checksums.json"  # a cache folder's checksums, written inside it before it is renamed into place
_PACKAGES = ("distillrank", "torch", "transformers", "datasets", "bm25s", "ir_measures", "hydra-core")


def stage_dir(cfg: DictConfig, stage: str) -> Path:
    """The folder of one stage of this experiment: ``<workspace>/<experiment>/<stage>``."""
    return Path(cfg.workspace) / str(cfg.experiment) / stage


def cache_dir(cfg: DictConfig) -> Path:
    """The folder shared by every experiment of this workspace."""
    return Path(cfg.workspace) / "_cache"


def to_plain(obj: Any) -> Any:
    """An OmegaConf node (or anything JSON-able) as plain Python containers, interpolations resolved
    and enumeration values as their names' strings (``Enum`` options of the schema)."""
    if isinstance(obj, DictConfig | ListConfig):
        return OmegaConf.to_container(obj, resolve=True, enum_to_str=True)
    if isinstance(obj, Enum):
        return obj.name
    return obj


def _json_default(obj: Any) -> Any:
    return obj.name if isinstance(obj, Enum) else str(obj)


def fingerprint(obj: Any) -> str:
    """A stable sha256 hex digest of a JSON-able value (dict keys sorted; an ``Enum`` counts as its
    name, as :func:`to_plain` writes it)."""
    blob = json.dumps(to_plain(obj), sort_keys=True, default=_json_default, separators=(",", ":"))
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


def dir_fingerprint(path: str | Path, skip: tuple[str, ...] = ()) -> str:
    """sha256 over the relative names and contents of every file under a folder.

    Hidden files and folders (``.git``, the ``.cache`` of ``hf download``) are left out: they
    change without the model changing; so are the relative names in ``skip`` (e.g.
    :data:`MUTABLE_OUTPUTS`, the model card evaluate rewrites).
    """
    root = Path(path)
    files = [(name, p) for p in _content_files(root) if (name := str(p.relative_to(root))) not in skip]
    return fingerprint([(name, file_fingerprint(p)) for name, p in files])


def _content_files(root: Path) -> list[Path]:
    """The files :func:`dir_fingerprint` covers: every file under ``root`` not under a hidden name."""
    return [
        p
        for p in sorted(root.rglob("*"))
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    ]


def checksums(path: str | Path, unchecked: tuple[str, ...] = ()) -> dict[str, Any]:
    """Size and sha256 of a file (``{"size", "sha256"}``) or of every file of a folder
    (``{"files": {relative name: {"size", "sha256"}}}``, hidden names left out as in
    :func:`dir_fingerprint`, and the relative names in ``unchecked``, kept in the record under
    that key). The hashes are memoised per (path, size, mtime)."""
    path = Path(path)
    if path.is_dir():
        record: dict[str, Any] = {
            "files": {
                name: {"size": p.stat().st_size, "sha256": file_fingerprint(p)}
                for p in _content_files(path)
                if (name := str(p.relative_to(path))) not in unchecked
            }
        }
        if unchecked:
            record["unchecked"] = list(unchecked)
        return record
    return {"size": path.stat().st_size, "sha256": file_fingerprint(path)}


def verify_checksums(path: str | Path, record: dict[str, Any], exact: bool = True) -> str | None:
    """None when ``path`` still has the content :func:`checksums` recorded, else what differs.

    Every size is compared before any hash is computed, so a truncated or grown file is found at the
    cost of a ``stat``; a same-size change (a zeroed file) is found by the sha256, computed once per
    (path, size, mtime) in a process. With ``exact``, a folder holding files it was not written with
    does not match either (a cache folder may gain entries of its own, as a FAISS index beside the
    embeddings it indexes: checked without ``exact``).
    """
    path = Path(path)
    if "files" in record:
        if not path.is_dir():
            return f"{path} is not a folder"
        expected: dict[str, dict[str, Any]] = record["files"]
        unchecked = set(record.get("unchecked", ()))
        actual = {name: p for p in _content_files(path) if (name := str(p.relative_to(path))) not in unchecked}
        if missing := sorted(set(expected) - set(actual)):
            return f"{path} lacks {missing[:3]}"
        if exact and (extra := sorted(set(actual) - set(expected))):
            return f"{path} has files it was not written with: {extra[:3]}"
        pairs = [(actual[name], want) for name, want in sorted(expected.items())]
    else:
        if not path.is_file():
            return f"{path} is missing"
        pairs = [(path, record)]
    for file, want in pairs:
        if (size := file.stat().st_size) != want["size"]:
            return f"{file} has {size} bytes, {want['size']} were written"
    for file, want in pairs:
        if file_fingerprint(file) != want["sha256"]:
            return f"{file} does not have the content that was written (sha256 differs)"
    return None


def seal_path(path: Path) -> Path:
    """Where :func:`seal` keeps the checksums of the cache entry ``path``."""
    return path / SEAL if path.is_dir() else path.with_name(f".{path.name}.sha256.json")


def seal(path: str | Path) -> Path:
    """Record the size and sha256 of a cache entry (a file or a folder) beside or inside it.

    A folder carries its checksums in ``<folder>/.checksums.json`` (seal the temporary folder before
    it is renamed into place, and the two commit together); a file in a hidden sibling
    ``.<name>.json``, written after the file: an entry killed between the two has no seal and is
    rebuilt.
    """
    path = Path(path)
    return atomic_write_json(seal_path(path), checksums(path))


def verify_entry(path: str | Path, what: str = "cache entry") -> bool:
    """True when the cache entry ``path`` exists and matches its seal; otherwise a warning says why
    and False (the caller drops and rebuilds it). Absent entries are False without a warning."""
    path = Path(path)
    if not path.exists():
        return False
    seal_file = seal_path(path)
    try:
        record = json.loads(seal_file.read_text(encoding="utf-8"))
        problem = verify_checksums(path, record, exact=False)
    except FileNotFoundError:
        problem = f"{seal_file} is missing (the entry was interrupted, or written before checksums were kept)"
    except (OSError, ValueError, KeyError, TypeError) as err:
        problem = f"{seal_file} cannot be read ({err})"
    if problem is None:
        return True
    log.warning("%s %s is damaged: %s; dropping it to rebuild it", what, path, problem)
    return False


def drop_entry(path: str | Path) -> None:
    """Remove a cache entry (file or folder) and its seal, so it is rebuilt."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        seal_path(path).unlink(missing_ok=True)
        path.unlink(missing_ok=True)


def usable_entry(path: str | Path, what: str = "cache entry") -> bool:
    """True when the cache entry is there and intact; a damaged one is dropped (False)."""
    if verify_entry(path, what):
        return True
    if Path(path).exists():
        drop_entry(path)
    return False


@contextlib.contextmanager
def cache_entry(path: str | Path, what: str) -> Iterator[bool]:
    """Lock the cache entry ``path`` (exclusively, see :func:`locked`) while it is checked and,
    when needed, built; yield True when it is there and intact (a damaged one is dropped first:
    build it again, and :func:`seal` it)."""
    with locked(path, what):
        yield usable_entry(path, what)


def drop_unreadable(path: str | Path, what: str, err: BaseException) -> None:
    """An intact-looking cache entry could not be read: log why and drop it, to rebuild it."""
    log.warning("%s %s cannot be read (%s); dropping it to rebuild it", what, path, err)
    drop_entry(path)


# --------------------------------------------------------------------------- locks
class _Held:
    """The locks this process (context) holds: path -> open file; stage locks collect the shared
    locks that ``require_stage`` takes on their upstream folders, released when the stage ends."""

    def __init__(self) -> None:
        self.files: dict[str, Any] = {}
        self.stage: contextlib.ExitStack | None = None


_HELD: contextvars.ContextVar[_Held | None] = contextvars.ContextVar("distillrank_locks", default=None)


def _held() -> _Held:
    if (held := _HELD.get()) is None:
        held = _Held()
        _HELD.set(held)
    return held


def lock_file(path: str | Path) -> Path:
    """The lock file of a stage folder or cache entry: the hidden sibling ``.<name>.lock``, there
    only while a process holds (or waits for) the lock."""
    path = Path(path)
    return path.with_name(f".{path.name}.lock")


def _holder(fd: int) -> str:
    try:
        return os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
    except OSError:
        return "unknown"


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = path.stat()
    except FileNotFoundError:
        return False
    own = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)


def _acquire(file: Path, shared: bool, what: str, path: Path) -> Any:
    """Open and flock ``file``; the open file, once it is locked and still the one at that name."""
    mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
    waited = None
    while True:
        file.parent.mkdir(parents=True, exist_ok=True)
        fh = open(file, "a+b")  # noqa: SIM115 (returned; closing it releases the lock)
        try:
            try:
                fcntl.flock(fh.fileno(), mode | fcntl.LOCK_NB)
            except BlockingIOError:
                if waited is None:
                    waited = time.monotonic()
                    log.warning(
                        "%s %s is locked by another distillrank process (PID %s, lock file %s); "
                        "waiting for it to finish",
                        what, path, _holder(fh.fileno()), file,
                    )
                fcntl.flock(fh.fileno(), mode)
            if _same_file(fh.fileno(), file):  # else its holder removed it on release: lock anew
                if waited is not None:
                    log.info("%s %s: lock acquired after %.1f s", what, path, time.monotonic() - waited)
                return fh
        except BaseException:
            fh.close()
            raise
        fh.close()


def _release(fh: Any, file: Path) -> None:
    """Remove the lock file when no other process holds or waits on it (it then holds no one's
    PID), and unlock. Removed only under an exclusive lock, and a process that locked a removed
    file locks anew (see :func:`_acquire`), so two processes never hold the lock at once."""
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)  # an exclusive holder already has it
        if _same_file(fh.fileno(), file):
            file.unlink()
    except (BlockingIOError, FileNotFoundError):
        pass  # shared by another process still: it removes it
    finally:
        fh.close()


@contextlib.contextmanager
def locked(path: str | Path, what: str, shared: bool = False) -> Iterator[None]:
    """Hold an advisory ``fcntl.flock`` on ``path`` (a stage folder or a cache entry), through the
    hidden lock file :func:`lock_file`.

    Exclusive for a writer, shared for readers. When another process holds a conflicting lock, this
    one logs a warning naming it (``PID n``, which an exclusive holder writes into the lock file)
    and waits: a second run of the same experiment continues once the first has finished the stage,
    and then finds it up to date or redoes it with its own config; nothing is ever written by two
    processes at once. Re-entrant within a process: a path this process already holds is not locked
    again. Ranks other than 0 of a ``torchrun`` job take no locks (rank 0 holds them for the job).
    """
    from distillrank.sharding import from_env  # here: sharding imports torch, this module does not

    path = Path(path)
    held = _held()
    name = str(path.resolve())
    if name in held.files or not from_env().main:
        yield
        return
    file = lock_file(path)
    fh = _acquire(file, shared, what, path)
    try:
        if not shared:
            os.ftruncate(fh.fileno(), 0)
            os.pwrite(fh.fileno(), f"{os.getpid()}\n".encode(), 0)
        held.files[name] = fh
        try:
            yield
        finally:
            del held.files[name]
    finally:
        _release(fh, file)


def locked_stage(stage: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a stage's ``run(cfg, ...)``: the stage folder is locked exclusively while it runs,
    and the upstream folders it reads through :func:`require_stage` stay share-locked until it ends,
    so no other process rewrites them under it."""

    def wrap(run: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(run)
        def locked_run(cfg: DictConfig, *args: Any, **kwargs: Any) -> Any:
            held = _held()
            outer = held.stage
            with contextlib.ExitStack() as stack:
                stack.enter_context(locked(stage_dir(cfg, stage), f"the '{stage}' stage folder"))
                held.stage = stack
                try:
                    return run(cfg, *args, **kwargs)
                finally:
                    held.stage = outer

        return locked_run

    return wrap


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
    checksums: dict[str, dict[str, Any]] = field(default_factory=dict)

    def write(self, folder: Path) -> Path:
        """Write ``manifest.json`` into ``folder`` (last, so the stage counts as complete only now),
        with the size and sha256 of every output (file or folder) as it is now."""
        folder = Path(folder)
        if missing := [name for name in self.outputs if not (folder / name).exists()]:
            raise ArtifactError(f"the '{self.stage}' stage did not write {missing} in {folder}")
        self.checksums = {name: checksums(folder / name, MUTABLE_OUTPUTS) for name in self.outputs}
        return atomic_write_json(folder / MANIFEST, self.__dict__)

    def damaged(self, folder: str | Path) -> str | None:
        """None when every output in ``folder`` is there with the content it was written with, else
        what differs. Manifests written before checksums were kept are checked for presence only."""
        folder = Path(folder)
        for name in self.outputs:
            record = self.checksums.get(name)
            if record is None:
                if not (folder / name).exists():
                    return f"{folder / name} is missing"
                continue
            if (problem := verify_checksums(folder / name, record)) is not None:
                return problem
        return None


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
    """True when the stage completed in ``folder`` with this key and all its outputs are intact (the
    sizes and hashes its manifest recorded); a damaged output is logged, and the stage reruns."""
    manifest = read_manifest(folder)
    if manifest is None or manifest.key != key:
        return False
    if (problem := manifest.damaged(folder)) is not None:
        log.warning("%s: an output is damaged (%s); the stage runs again", folder, problem)
        return False
    return True


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
            # share-locked, so no process rewrites it while it is read: until the calling stage ends
            # (see locked_stage), or just while it is verified when no stage is running
            with contextlib.ExitStack() as here:
                held = _held().stage
                (held or here).enter_context(locked(folder, f"the '{stage}' stage folder", shared=True))
                manifest = read_manifest(folder)  # again: it may have been rewritten while we waited
                if manifest is None or manifest.key != key:
                    continue
                if (problem := manifest.damaged(folder)) is not None:
                    raise ArtifactError(f"the '{stage}' stage output is damaged: {problem}: {hint}")
                return manifest, folder
    manifest = read_manifest(own)
    if manifest is None:
        raise ArtifactError(f"the '{stage}' stage has not completed in {own}: {hint}")
    raise ArtifactError(
        f"the '{stage}' artifacts in {own} were made with a different config or inputs "
        f"(stage key {manifest.key[:12]} != {key[:12]}): {hint}"
    )
