"""A bi-encoder: a transformer, a pooling, an optional normalisation; saved in sentence-transformers format."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import AutoModel, AutoTokenizer

from distillrank.errors import ConfigError
from distillrank.models.batching import prepared, row_batches
from distillrank.models.hub import resolve_model
from distillrank.models.layers import keep_layers, set_dropout
from distillrank.models.masking import backbone_inputs
from distillrank.models.tokenization import BatchTokenizer
from distillrank.ranking import Pairs
from distillrank.runtime import Runtime
from distillrank.workspace import atomic_dir

log = logging.getLogger(__name__)

POOLINGS = ("mean", "cls")
SIMILARITIES = ("dot", "cos")
META_FILE = "distillrank.json"


class BiEncoder(nn.Module):
    """Encodes queries and passages independently; relevance is a dot product or cosine.

    Args:
        backbone: a Hugging Face encoder (``AutoModel``).
        tokenizer: its tokenizer.
        pooling: ``mean`` over non-padding tokens, or ``cls`` (the first token).
        similarity: ``dot``, or ``cos`` (embeddings L2-normalised, then dot).
        query_max_length / passage_max_length: truncation lengths in tokens.
        query_prefix / passage_prefix: text prepended before tokenisation (e.g. ``"query: "``).
    """

    def __init__(
        self,
        backbone: nn.Module,
        tokenizer,
        pooling: str = "mean",
        similarity: str = "cos",
        query_max_length: int = 64,
        passage_max_length: int = 256,
        query_prefix: str = "",
        passage_prefix: str = "",
    ) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ConfigError(f"pooling={pooling!r}; expected one of {POOLINGS}")
        if similarity not in SIMILARITIES:
            raise ConfigError(f"similarity={similarity!r}; expected one of {SIMILARITIES}")
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.batch_tokenizer = BatchTokenizer(tokenizer)
        self.pooling = pooling
        self.similarity = similarity
        self.query_max_length = query_max_length
        self.passage_max_length = passage_max_length
        self.query_prefix = query_prefix
        self.passage_prefix = passage_prefix

    # ------------------------------------------------------------------ construction
    @classmethod
    def load(cls, model: str | Path, **overrides) -> BiEncoder:
        """Load a sentence-transformers folder, a folder saved by us, or a plain HF encoder (mean, cos),
        in eval mode.

        ``overrides`` whose value is not None replace what the folder says (pooling, similarity, …).
        """
        path = resolve_model(str(model))
        settings = read_settings(path)
        settings.update({k: v for k, v in overrides.items() if v is not None})
        tokenizer = AutoTokenizer.from_pretrained(path)
        backbone = AutoModel.from_pretrained(path)
        return cls(backbone, tokenizer, **settings).eval()  # the training loop switches to train()

    @classmethod
    def from_backbone(
        cls,
        model: str,
        num_layers: int | None = None,
        layer_selection: str = "first",
        pooling: str | None = None,
        similarity: str | None = None,
        query_max_length: int | None = None,
        passage_max_length: int | None = None,
        query_prefix: str | None = None,
        passage_prefix: str | None = None,
        dropout: float | None = None,
    ) -> BiEncoder:
        """A student initialised from a backbone, optionally keeping only some of its layers.

        Args:
            model: the backbone (folder or hub id), e.g. the teacher itself or any HF encoder.
            num_layers: keep only this many transformer layers (None keeps all), chosen by
                ``layer_selection``: ``first`` (DistilBERT / TinyBERT-style), ``every_other`` or ``uniform``.
            pooling / similarity / lengths / prefixes: as in the class; None keeps the folder's values.
            dropout: every dropout probability of the backbone (hidden and attention) for training;
                None keeps the model's own (:func:`distillrank.models.layers.set_dropout`).
        """
        encoder = cls.load(
            model,
            pooling=pooling,
            similarity=similarity,
            query_max_length=query_max_length,
            passage_max_length=passage_max_length,
            query_prefix=query_prefix,
            passage_prefix=passage_prefix,
        )
        if num_layers is not None:
            kept = keep_layers(encoder.backbone, num_layers, layer_selection)
            log.info("student keeps layers %s of %s", kept, model)
        if dropout is not None:
            set_dropout(encoder.backbone, dropout)
        return encoder

    # ------------------------------------------------------------------ forward
    @property
    def dim(self) -> int:
        return int(self.backbone.config.hidden_size)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def _text_settings(self, kind: str) -> tuple[str, int]:
        if kind == "query":
            return self.query_prefix, self.query_max_length
        return self.passage_prefix, self.passage_max_length

    def tokenize_cpu(self, texts: Sequence[str], kind: str) -> dict[str, torch.Tensor]:
        """Tokenise queries (``kind='query'``) or passages, padded to the longest in the batch, on the CPU."""
        prefix, max_length = self._text_settings(kind)
        return self.batch_tokenizer([prefix + t for t in texts] if prefix else texts, max_length=max_length)

    def tokenize(self, texts: Sequence[str], kind: str) -> dict[str, torch.Tensor]:
        """:meth:`tokenize_cpu` on the model's device."""
        return {k: v.to(self.device) for k, v in self.tokenize_cpu(texts, kind).items()}

    def token_lengths(self, texts: Sequence[str], kind: str) -> np.ndarray:
        """Tokens of each text as :meth:`tokenize` truncates it (special tokens included), unpadded."""
        prefix, max_length = self._text_settings(kind)
        return self.batch_tokenizer.lengths([prefix + t for t in texts] if prefix else texts, max_length=max_length)

    def embed(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Embeddings of a tokenised batch (on the model's device), with gradients when training."""
        hidden = self.backbone(**backbone_inputs(batch)).last_hidden_state
        if self.pooling == "cls":
            emb = hidden[:, 0]
        else:
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            emb = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        if self.similarity == "cos":
            emb = nn.functional.normalize(emb.float(), dim=-1)
        return emb

    def forward(self, texts: Sequence[str], kind: str) -> torch.Tensor:
        """Embeddings [len(texts), dim] (with gradients when training)."""
        return self.embed(self.tokenize(texts, kind))

    def score(self, queries: torch.Tensor, passages: torch.Tensor) -> torch.Tensor:
        """Relevance of aligned rows (``[B, d] × [B, d] → [B]``)."""
        return (queries * passages).sum(-1)

    @torch.inference_mode()
    def encode(
        self,
        texts: Sequence[str],
        kind: str = "passage",
        batch_size: int = 64,
        runtime: Runtime | None = None,
        progress: bool = False,
        desc: str | None = None,
    ) -> torch.Tensor:
        """Embeddings [N, dim] as float32 on CPU, in the order of ``texts``.

        Batches are formed from texts sorted by length, so padding is minimal. ``runtime`` (default
        ``Runtime()``) gives the autocast of each forward, caps its size (``max_forward_texts``),
        may size batches by a token budget instead of ``batch_size`` (``max_batch_tokens``) and
        tokenizes the next batch while this one runs (``prefetches``;
        :mod:`distillrank.models.batching`); the model stays on the device it is on.
        """
        runtime = runtime or Runtime()
        was_training = self.training
        self.eval()
        order = np.argsort([-len(t) for t in texts], kind="stable")
        out = torch.empty((len(texts), self.dim), dtype=torch.float32)
        bar = tqdm(total=len(texts), desc=desc or f"encode {kind}s", unit=kind[0], disable=not progress)
        step = runtime.forward_texts(batch_size)  # hardware.max_forward_texts caps one forward
        batches = row_batches(
            order, step, max_tokens=runtime.max_batch_tokens, max_rows=runtime.max_forward_texts,
            token_lengths=lambda rows: self.token_lengths([texts[i] for i in rows], kind),
        )  # fmt: skip
        tokenize = lambda rows: self.tokenize_cpu([texts[i] for i in rows], kind)  # noqa: E731
        device = self.device
        for idx, inputs in prepared(
            batches, tokenize, device, runtime.prefetches(device), runtime.max_forward_tokens,
            self.batch_tokenizer.pad_values(),
        ):
            with runtime.autocast():
                emb = self.embed(inputs)
            out[torch.as_tensor(idx)] = emb.float().cpu()
            bar.update(len(idx))
        bar.close()
        self.train(was_training)
        return out

    def pair_scores(
        self, pairs: Pairs, batch_size: int, runtime: Runtime | None = None, progress: bool = False, name: str = ""
    ) -> np.ndarray:
        """Scores [len(pairs)] (float32) of (query, passage) pairs: each distinct text encoded once,
        then the pairs' dot products. ``name`` prefixes the progress bars (``teacher: queries``)."""
        q_emb = self.encode(pairs.queries, "query", batch_size, runtime, progress, name and f"{name}: queries")
        p_emb = self.encode(pairs.passages, "passage", batch_size, runtime, progress, name and f"{name}: passages")
        scores = self.score(q_emb[torch.as_tensor(pairs.pair_q)], p_emb[torch.as_tensor(pairs.pair_p)])
        return scores.numpy().astype(np.float32)

    # ------------------------------------------------------------------ saving
    def settings(self) -> dict:
        return {
            "pooling": self.pooling,
            "similarity": self.similarity,
            "query_max_length": self.query_max_length,
            "passage_max_length": self.passage_max_length,
            "query_prefix": self.query_prefix,
            "passage_prefix": self.passage_prefix,
        }

    def save(self, path: str | Path, model_card: str | None = None) -> Path:
        """Save in sentence-transformers format (``SentenceTransformer(path)`` loads it), atomically."""
        path = Path(path)
        with atomic_dir(path) as tmp:
            self.backbone.save_pretrained(tmp, safe_serialization=True)
            self.tokenizer.save_pretrained(tmp)
            modules = [
                {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            ]
            if self.similarity == "cos":
                modules.append(
                    {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}
                )
                (tmp / "2_Normalize").mkdir()
            _write_json(tmp / "modules.json", modules)
            _write_json(
                tmp / "sentence_bert_config.json",
                {"max_seq_length": self.passage_max_length, "do_lower_case": False},
            )
            (tmp / "1_Pooling").mkdir()
            _write_json(
                tmp / "1_Pooling" / "config.json",
                {
                    "word_embedding_dimension": self.dim,
                    "pooling_mode_cls_token": self.pooling == "cls",
                    "pooling_mode_mean_tokens": self.pooling == "mean",
                    "pooling_mode_max_tokens": False,
                    "pooling_mode_mean_sqrt_len_tokens": False,
                },
            )
            prompts = {}
            if self.query_prefix:
                prompts["query"] = self.query_prefix
            if self.passage_prefix:
                prompts["document"] = self.passage_prefix
            _write_json(
                tmp / "config_sentence_transformers.json",
                {
                    "prompts": prompts,
                    "default_prompt_name": None,
                    "similarity_fn_name": "cosine" if self.similarity == "cos" else "dot",
                },
            )
            _write_json(tmp / META_FILE, self.settings())
            if model_card:
                (tmp / "README.md").write_text(model_card, encoding="utf-8")
        return path


def read_settings(path: Path) -> dict:
    """Pooling, similarity, lengths and prefixes of a saved model folder (ours, ST, or plain HF)."""
    meta = path / META_FILE
    if meta.is_file():
        return json.loads(meta.read_text())
    settings: dict = {}
    modules_file = path / "modules.json"
    if modules_file.is_file():
        modules = json.loads(modules_file.read_text())
        types = [m.get("type", "") for m in modules]
        pooling_dir = next((m["path"] for m in modules if m.get("type", "").endswith("Pooling")), None)
        if pooling_dir and (path / pooling_dir / "config.json").is_file():
            pool = json.loads((path / pooling_dir / "config.json").read_text())
            modes = [k.removeprefix("pooling_mode_") for k, v in pool.items() if k.startswith("pooling_mode_") and v]
            if isinstance(pool.get("pooling_mode"), str):  # sentence-transformers >= 6: one string
                modes = [{"mean": "mean_tokens", "cls": "cls_token"}.get(pool["pooling_mode"], pool["pooling_mode"])]
            if modes == ["cls_token"]:
                settings["pooling"] = "cls"
            elif modes == ["mean_tokens"]:
                settings["pooling"] = "mean"
            else:
                raise ConfigError(
                    f"{path / pooling_dir / 'config.json'}: pooling {modes or pool.get('pooling_mode')} is not "
                    f"supported; distillrank bi-encoders pool by {POOLINGS}"
                )
        st_conf = path / "config_sentence_transformers.json"
        st = json.loads(st_conf.read_text()) if st_conf.is_file() else {}
        normalize = any(t.endswith("Normalize") for t in types)
        settings["similarity"] = "cos" if normalize or (st.get("similarity_fn_name") or "cosine") == "cosine" else "dot"
        prompts = st.get("prompts") or {}
        settings["query_prefix"] = prompts.get("query", "")
        settings["passage_prefix"] = prompts.get("document", prompts.get("passage", ""))
        sbert = path / "sentence_bert_config.json"
        max_len = json.loads(sbert.read_text()).get("max_seq_length") if sbert.is_file() else None
        tok_conf = path / "tokenizer_config.json"
        if not max_len and tok_conf.is_file():  # sentence-transformers >= 6 keeps it in the tokenizer
            max_len = json.loads(tok_conf.read_text()).get("model_max_length")
            max_len = max_len if isinstance(max_len, int) and max_len < 1_000_000 else None  # HF's "unset" is 1e30
        if max_len:
            settings["passage_max_length"] = int(max_len)
    return settings


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")
