"""workspace: fingerprints, atomic writes, manifests and stage checks."""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from distillrank.errors import ArtifactError
from distillrank.workspace import (
    MANIFEST,
    Manifest,
    atomic_dir,
    atomic_path,
    atomic_write_json,
    atomic_write_text,
    cache_dir,
    dir_fingerprint,
    file_fingerprint,
    fingerprint,
    is_up_to_date,
    read_manifest,
    require_stage,
    stage_dir,
)


def _cfg(tmp_path: Path):
    return OmegaConf.create({"workspace": str(tmp_path), "experiment": "x"})


def _entries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


class Boom(RuntimeError):
    pass


# --------------------------------------------------------------------------------- folders
def test_stage_and_cache_dirs(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    assert stage_dir(cfg, "mine") == tmp_path / "x" / "mine"
    assert cache_dir(cfg) == tmp_path / "_cache"


# --------------------------------------------------------------------------------- fingerprints
def test_fingerprint_ignores_key_order_at_every_level() -> None:
    a = {"b": 1, "a": {"y": [1, 2], "x": "s"}, "c": None}
    b = {"c": None, "a": {"x": "s", "y": [1, 2]}, "b": 1}
    assert fingerprint(a) == fingerprint(b)
    # sha256 of the canonical JSON: stage keys of existing workspaces depend on this exact encoding
    canonical = json.dumps(a, sort_keys=True, separators=(",", ":")).encode()
    assert fingerprint(a) == hashlib.sha256(canonical).hexdigest()
    assert re.fullmatch(r"[0-9a-f]{64}", fingerprint(a))


def test_fingerprint_is_sensitive_to_values() -> None:
    base = {"k1": 0.9, "b": 0.4, "names": ["a", "b"]}
    fp = fingerprint(base)
    assert fingerprint({**base, "k1": 1.2}) != fp
    assert fingerprint({**base, "names": ["b", "a"]}) != fp  # list order matters
    assert fingerprint({**base, "extra": None}) != fp
    assert fingerprint({**base, "b": "0.4"}) != fp  # type matters


def test_fingerprint_of_omegaconf_equals_plain_and_resolves_interpolations() -> None:
    node = OmegaConf.create({"a": 1, "b": "${a}", "c": [1, {"d": 2}]})
    assert fingerprint(node) == fingerprint({"a": 1, "b": 1, "c": [1, {"d": 2}]})


def test_file_fingerprint_is_content_sha256(tmp_path: Path) -> None:
    f = tmp_path / "f.bin"
    f.write_bytes(b"hello")
    assert file_fingerprint(f) == hashlib.sha256(b"hello").hexdigest()
    g = tmp_path / "g.bin"
    g.write_bytes(b"hello")
    assert file_fingerprint(g) == file_fingerprint(f)  # content, not name
    f.write_bytes(b"hello world")  # other size -> not served from the memo
    assert file_fingerprint(f) == hashlib.sha256(b"hello world").hexdigest()


def test_file_fingerprint_sees_same_size_rewrite_with_new_mtime(tmp_path: Path) -> None:
    f = tmp_path / "f.txt"
    f.write_text("aaaa")
    first = file_fingerprint(f)
    f.write_text("bbbb")
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10_000_000))
    assert file_fingerprint(f) != first


def _make_tree(root: Path) -> Path:
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_text("A")
    (root / "sub" / "b.txt").write_text("B")
    return root


def test_dir_fingerprint_depends_on_names_and_contents_not_location(tmp_path: Path) -> None:
    one = _make_tree(tmp_path / "one")
    two = _make_tree(tmp_path / "two")
    fp = dir_fingerprint(one)
    assert dir_fingerprint(two) == fp  # same files elsewhere

    (two / "sub" / "b.txt").write_text("B changed")
    assert dir_fingerprint(two) != fp

    three = _make_tree(tmp_path / "three")
    (three / "sub" / "b.txt").rename(three / "sub" / "c.txt")  # same content, other name
    assert dir_fingerprint(three) != fp

    four = _make_tree(tmp_path / "four")
    (four / "extra.txt").write_text("")
    assert dir_fingerprint(four) != fp


def test_dir_fingerprint_ignores_hidden_files(tmp_path: Path) -> None:
    root = _make_tree(tmp_path / "m")
    fp = dir_fingerprint(root)
    (root / ".lock").write_text("x")
    (root / "sub" / ".a.txt.123.tmp").write_text("partial")
    assert dir_fingerprint(root) == fp


def test_dir_fingerprint_ignores_hidden_folders(tmp_path: Path) -> None:
    root = _make_tree(tmp_path / "m")
    fp = dir_fingerprint(root)
    meta = root / ".cache" / "huggingface" / "download"
    meta.mkdir(parents=True)
    (meta / "model.safetensors.metadata").write_text("abc123\netag\n1732350000.123\n")
    assert dir_fingerprint(root) == fp


# --------------------------------------------------------------------------------- atomic writes
def test_atomic_write_text_and_json(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "out.txt"
    assert atomic_write_text(path, "héllo\n") == path
    assert path.read_text(encoding="utf-8") == "héllo\n"
    atomic_write_text(path, "second")
    assert path.read_text() == "second"
    atomic_write_json(tmp_path / "o.json", OmegaConf.create({"b": 1, "a": "${b}"}))
    assert json.loads((tmp_path / "o.json").read_text()) == {"b": 1, "a": 1}
    assert _entries(tmp_path) == ["deep", "o.json"]
    assert _entries(tmp_path / "deep") == ["out.txt"]


def test_atomic_write_text_failure_keeps_old_content_and_leaves_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "out.txt"
    path.write_text("old")
    with pytest.raises(TypeError):
        atomic_write_text(path, None)  # type: ignore[arg-type]  # write_text fails mid-way
    assert path.read_text() == "old"
    assert _entries(tmp_path) == ["out.txt"]


def test_atomic_write_text_failure_on_new_path_creates_nothing(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        atomic_write_text(tmp_path / "new.txt", 123)  # type: ignore[arg-type]
    assert _entries(tmp_path) == []


def test_atomic_path_success_replaces(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"old")
    with atomic_path(path) as tmp:
        assert tmp != path and tmp.parent == path.parent and tmp.name.startswith(".")
        tmp.write_bytes(b"new")
        assert path.read_bytes() == b"old"  # not visible before the body ends
    assert path.read_bytes() == b"new"
    assert _entries(tmp_path) == ["f.bin"]


def test_atomic_path_failure_keeps_old_and_leaves_nothing(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(b"old")
    with pytest.raises(Boom), atomic_path(path) as tmp:
        tmp.write_bytes(b"half")
        raise Boom
    assert path.read_bytes() == b"old"
    assert _entries(tmp_path) == ["f.bin"]

    with pytest.raises(Boom), atomic_path(tmp_path / "fresh.bin") as tmp:
        tmp.write_bytes(b"half")
        raise Boom
    assert _entries(tmp_path) == ["f.bin"]


def test_atomic_dir_creates_and_replaces_whole_folder(tmp_path: Path) -> None:
    target = tmp_path / "index"
    with atomic_dir(target) as tmp:
        assert tmp.is_dir() and tmp.parent == tmp_path and tmp.name.startswith(".")
        (tmp / "a.txt").write_text("1")
        (tmp / "stale.txt").write_text("1")
        assert not target.exists()
    assert _entries(target) == ["a.txt", "stale.txt"]

    with atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("2")
        (tmp / "b.txt").write_text("2")
    assert _entries(target) == ["a.txt", "b.txt"]  # replaced whole: stale.txt is gone
    assert (target / "a.txt").read_text() == "2"
    assert _entries(tmp_path) == ["index"]  # no temp or .old folder left


def test_atomic_dir_failure_keeps_old_folder_and_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "index"
    target.mkdir()
    (target / "a.txt").write_text("old")
    with pytest.raises(Boom), atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("new")
        raise Boom
    assert (target / "a.txt").read_text() == "old"
    assert _entries(target) == ["a.txt"]
    assert _entries(tmp_path) == ["index"]

    with pytest.raises(Boom), atomic_dir(tmp_path / "fresh") as tmp:
        (tmp / "x").write_text("x")
        raise Boom
    assert _entries(tmp_path) == ["index"]


# --------------------------------------------------------------------------------- manifests
def _manifest(outputs: list[str] | None = None, key: str = "k" * 64) -> Manifest:
    return Manifest(
        stage="mine",
        key=key,
        config={"mining": {"depth": 100, "sampling": "window"}},
        inputs={"collection": "abc"},
        counts={"queries": 3, "pairs": 12},
        outputs=outputs if outputs is not None else ["candidates.parquet"],
        wall_time_s=1.5,
    )


def test_manifest_round_trip(tmp_path: Path) -> None:
    manifest = _manifest()
    assert "python" in manifest.versions and "torch" in manifest.versions
    (tmp_path / "candidates.parquet").write_bytes(b"rows")
    path = manifest.write(tmp_path)
    assert path == tmp_path / MANIFEST
    assert json.loads(path.read_text())["stage"] == "mine"
    assert read_manifest(tmp_path) == manifest
    assert manifest.checksums["candidates.parquet"]["size"] == 4
    assert sorted(_entries(tmp_path)) == ["candidates.parquet", MANIFEST]


def test_read_manifest_missing_or_unreadable(tmp_path: Path) -> None:
    assert read_manifest(tmp_path) is None
    assert read_manifest(tmp_path / "nope") is None
    (tmp_path / MANIFEST).write_text("{not json")
    assert read_manifest(tmp_path) is None
    (tmp_path / MANIFEST).write_text(json.dumps({"stage": "mine"}))  # fields missing
    assert read_manifest(tmp_path) is None


def test_is_up_to_date(tmp_path: Path) -> None:
    folder = tmp_path / "stage"
    assert not is_up_to_date(folder, "key1")  # no folder, no manifest
    folder.mkdir()
    (folder / "out.bin").write_bytes(b"x")
    assert not is_up_to_date(folder, "key1")  # outputs but no manifest
    _manifest(outputs=["out.bin"], key="key1").write(folder)
    assert is_up_to_date(folder, "key1")
    assert not is_up_to_date(folder, "key2")  # other key
    (folder / "out.bin").unlink()
    assert not is_up_to_date(folder, "key1")  # an output is missing


def test_require_stage_returns_current_manifest(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    folder = stage_dir(cfg, "score")
    folder.mkdir(parents=True)
    (folder / "scores.parquet").write_bytes(b"x")
    manifest = _manifest(outputs=["scores.parquet"], key="a" * 64)
    manifest.stage = "score"
    manifest.write(folder)
    assert require_stage(cfg, "score", "a" * 64) == (manifest, folder)


def test_require_stage_falls_back_to_parent_experiment(tmp_path: Path) -> None:
    parent = _cfg(tmp_path)
    child = OmegaConf.create({"workspace": str(tmp_path), "experiment": "x/train.lr=1e-5"})
    parent_folder = stage_dir(parent, "score")
    _manifest(outputs=[], key="a" * 64).write(parent_folder)
    found, folder = require_stage(child, "score", "a" * 64)
    assert folder == parent_folder and found.key == "a" * 64

    # A parent with another key does not count: the error names the child's own folder.
    with pytest.raises(ArtifactError) as err:
        require_stage(child, "score", "b" * 64)
    assert str(stage_dir(child, "score")) in str(err.value)
    assert "`distillrank score`" in str(err.value)

    # The child's own current artifacts win over the parent's.
    own = stage_dir(child, "score")
    _manifest(outputs=[], key="b" * 64).write(own)
    assert require_stage(child, "score", "b" * 64)[1] == own


def test_require_stage_missing_names_stage_and_command(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    with pytest.raises(ArtifactError) as err:
        require_stage(cfg, "mine", "a" * 64)
    message = str(err.value)
    assert "'mine'" in message
    assert "`distillrank mine`" in message
    assert str(stage_dir(cfg, "mine")) in message


def test_require_stage_stale_key_names_stage_and_command(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    folder = stage_dir(cfg, "score")
    _manifest(outputs=[], key="a" * 64).write(folder)
    with pytest.raises(ArtifactError) as err:
        require_stage(cfg, "score", "b" * 64)
    message = str(err.value)
    assert "'score'" in message and "`distillrank score`" in message
    assert "different config" in message
    assert "a" * 12 in message and "b" * 12 in message


def test_require_stage_missing_output_names_it(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    folder = stage_dir(cfg, "train")
    (folder / "student").mkdir(parents=True)
    _manifest(outputs=["student"], key="a" * 64).write(folder)
    (folder / "student").rmdir()
    with pytest.raises(ArtifactError) as err:
        require_stage(cfg, "train", "a" * 64)
    message = str(err.value)
    assert "'train'" in message and "`distillrank train`" in message and "student" in message
