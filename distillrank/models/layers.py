"""How a student is cut from a backbone: keep a subset of its layers (DistilBERT-style
initialisation of a smaller student) and set its dropout."""

from __future__ import annotations

from torch import nn
from transformers import PreTrainedModel

from distillrank.errors import ConfigError

_LAYER_PATHS = ("encoder.layer", "encoder.layers", "transformer.layer", "layers", "model.layers")
_COUNT_KEYS = ("num_hidden_layers", "n_layers", "num_layers")


def _find_layers(model: nn.Module) -> tuple[nn.Module, str, nn.ModuleList]:
    for path in _LAYER_PATHS:
        parent: nn.Module | None = model
        *head, last = path.split(".")
        for name in head:
            parent = getattr(parent, name, None)
        layers = getattr(parent, last, None) if parent is not None else None
        if isinstance(layers, nn.ModuleList):
            return parent, last, layers
    raise ConfigError(f"cannot find the layer list of {type(model).__name__} (looked at {_LAYER_PATHS})")


def set_dropout(model: nn.Module, p: float) -> int:
    """Set every dropout probability of ``model`` to ``p`` in place; returns how many were set.

    Covers the three places transformers models keep one: ``nn.Dropout`` modules, float attributes
    of a module whose name contains ``dropout`` (read at call time, e.g. the attention dropout that
    BERT's SDPA path or ModernBERT pass to the attention kernel) and the ``*dropout*`` keys of the
    model's config, so an exported student records the dropout it was trained with.

    Raises:
        ConfigError: for ``p`` outside [0, 1).
    """
    if not 0.0 <= float(p) < 1.0:
        raise ConfigError(f"student.dropout={p}; expected a probability in [0, 1), or null to keep the model's own")
    p = float(p)
    changed = 0
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = p
            changed += 1
        for name, value in list(vars(module).items()):
            if "dropout" in name and isinstance(value, float):
                setattr(module, name, p)
                changed += 1
    config = getattr(model, "config", None)
    if config is not None:
        for name, value in list(vars(config).items()):
            if "dropout" in name and isinstance(value, float):
                setattr(config, name, p)
    return changed


def select_layers(num_total: int, num_layers: int, selection: str) -> list[int]:
    """Indices of the layers to keep: the first k, every other one, or spread evenly.

    Args:
        num_total: layers in the backbone.
        num_layers: layers to keep (k).
        selection: ``first`` (0..k-1), ``every_other`` (0, 2, 4, …), or ``uniform`` (spread, last kept).
    """
    if not 1 <= num_layers <= num_total:
        raise ConfigError(f"student.num_layers={num_layers} but the backbone has {num_total} layers")
    if selection == "first":
        return list(range(num_layers))
    if selection == "every_other":
        if 2 * num_layers - 1 > num_total:
            raise ConfigError(f"every_other needs {2 * num_layers - 1} layers, the backbone has {num_total}")
        return list(range(0, 2 * num_layers, 2))
    if selection == "uniform":
        step = num_total / num_layers
        return [min(num_total - 1, round((i + 1) * step) - 1) for i in range(num_layers)]
    raise ConfigError(f"student.layer_selection={selection!r}; expected first, every_other or uniform")


def keep_layers(model: PreTrainedModel, num_layers: int, selection: str = "first") -> list[int]:
    """Drop all but the selected layers of ``model`` in place; returns the kept indices."""
    parent, attr, layers = _find_layers(model)
    keep = select_layers(len(layers), num_layers, selection)
    setattr(parent, attr, nn.ModuleList([layers[i] for i in keep]))
    for key in _COUNT_KEYS:
        if hasattr(model.config, key):
            setattr(model.config, key, len(keep))
    return keep
