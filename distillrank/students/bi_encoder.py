"""The bi-encoder (dense retriever) student."""

from __future__ import annotations

from distillrank.models.bi_encoder import BiEncoder


def bi_encoder(
    model: str,
    num_layers: int | None = None,
    layer_selection: str = "first",
    pooling: str = "mean",
    similarity: str = "cos",
    query_max_length: int = 64,
    passage_max_length: int = 256,
    query_prefix: str = "",
    passage_prefix: str = "",
) -> BiEncoder:
    """A bi-encoder student initialised from ``model`` (folder or hub id).

    Args:
        model: the backbone, e.g. the teacher itself or any HF encoder.
        num_layers: keep only this many transformer layers (None keeps all), chosen by ``layer_selection``
            (``first``, as DistilBERT / TinyBERT-style initialisation; ``every_other``; ``uniform``).
        pooling: ``mean`` or ``cls``.
        similarity: ``dot`` or ``cos``.
    """
    return BiEncoder.from_backbone(
        model,
        num_layers=num_layers,
        layer_selection=layer_selection,
        pooling=pooling,
        similarity=similarity,
        query_max_length=query_max_length,
        passage_max_length=passage_max_length,
        query_prefix=query_prefix,
        passage_prefix=passage_prefix,
    )
