"""ColBERT: a late-interaction ranker (Khattab & Zaharia 2020; ColBERTv2, Santhanam et al. 2022).

Every token of a query and of a passage gets its own L2-normalised embedding (the encoder's last
hidden states through a bias-free linear projection ``hidden -> dim``); relevance is **MaxSim**:
for each query token the highest cosine with any passage token, summed over the query tokens.

Conventions (those of Stanford ColBERT and of PyLate, which agree on them):

* **Markers.** A marker token is inserted right after ``[CLS]``: ``query_prefix`` for queries,
  ``passage_prefix`` for passages. The text is tokenised to ``max_length - 1`` tokens first, so the
  marked sequence is at most ``max_length`` long. A marker is one *token*, looked up with
  ``convert_tokens_to_ids``, never tokenised as text. Default: ``[unused0]`` / ``[unused1]`` (the
  markers of Stanford ColBERT and of ``colbert-ir/colbertv2.0``) when the vocabulary has them,
  otherwise PyLate's ``"[Q] "`` / ``"[D] "``, added to the tokenizer as new tokens (the embedding
  matrix grows by two rows). The markers are stored in the saved settings.
* **Query augmentation.** Queries are always padded to ``query_max_length`` with ``[MASK]``
  tokens, and **every** query token, ``[MASK]`` included, is scored. Whether the encoder's
  attention may *look at* the ``[MASK]`` tokens is ``attend_to_expansion_tokens``: False (the
  default) is ColBERTv2 / ``colbertv2.0`` (``attend_to_mask_tokens=False``) and PyLate's default;
  the ``[MASK]`` positions still get contextual embeddings either way. ``do_query_expansion=False``
  switches augmentation off (queries padded to the batch's longest with ``[PAD]``, which is not
  scored).
* **Passages.** Padded to the longest of the batch; padding never counts in MaxSim. Tokens of
  ``skiplist_words`` (default: ``string.punctuation``, as ColBERTv2's ``mask_punctuation`` and
  PyLate) are attended by the encoder but excluded from MaxSim; ``skiplist_words=[]`` keeps them.

Saved folder (``save``), loadable by :meth:`ColBERTModel.load` and laid out as a PyLate model:

* the Hugging Face backbone at the root (``config.json``, ``model.safetensors``, tokenizer files;
  added marker tokens are part of the tokenizer);
* ``1_Dense/config.json`` + ``1_Dense/model.safetensors`` (key ``linear.weight``): the projection
  as a ``pylate.models.Dense`` module;
* ``modules.json`` (``sentence_transformers.models.Transformer`` at ``""``, ``pylate.models.Dense``
  at ``1_Dense``), ``sentence_bert_config.json``, and ``config_sentence_transformers.json`` with
  PyLate's keys (``query_prefix``, ``document_prefix``, ``query_length``, ``document_length``,
  ``do_query_expansion``, ``attend_to_expansion_tokens``, ``skiplist_words``,
  ``similarity_fn_name: "MaxSim"``, ``model_type: "ColBERT"``);
* ``distillrank_colbert.json``: our settings (the same values, our names).

PyLate itself is not installed here, so compatibility is by construction from PyLate's source
(its ``Dense`` module and ``ColBERT`` config keys), not by a test that loads the folder with
PyLate. Known difference: PyLate's ``skiplist_words`` are matched on the tokenizer's ids of each
word, as here, so results agree as long as the words are single tokens (punctuation is).

:meth:`ColBERTModel.load` also reads PyLate folders and Stanford ColBERT checkpoints (a BERT
folder whose state dict holds ``bert.*`` and ``linear.weight``, e.g. ``colbert-ir/colbertv2.0``,
with its optional ``artifact.metadata`` for lengths and flags).
"""

from __future__ import annotations

import json
import logging
import string
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from tqdm.auto import tqdm
from transformers import AutoModel, AutoTokenizer
from transformers.utils import logging as hf_logging

from distillrank.errors import ConfigError
from distillrank.models.batching import prepared, row_batches
from distillrank.models.hub import resolve_model
from distillrank.models.layers import keep_layers, set_dropout
from distillrank.models.masking import backbone_inputs
from distillrank.models.tokenization import BatchTokenizer
from distillrank.runtime import Runtime
from distillrank.workspace import atomic_dir

log = logging.getLogger(__name__)

SETTINGS_FILE = "distillrank_colbert.json"
DENSE_DIR = "1_Dense"
STANFORD_MARKERS = ("[unused0]", "[unused1]")
PYLATE_MARKERS = ("[Q] ", "[D] ")
DEFAULT_SKIPLIST: tuple[str, ...] = tuple(string.punctuation)
KINDS = ("query", "passage")
SCORING_MASK = "colbert_scoring_mask"  # the MaxSim mask riding with a batch's tensors to the device
# MaxSim in score_matrix works on chunks of passages holding at most this many similarity entries
# (queries x passages x query tokens x passage tokens): 2**26 float32 entries are 256 MiB.
MAX_SIM_ELEMENTS = 1 << 26


class ColBERTModel(nn.Module):
    """Per-token embeddings scored by MaxSim.

    Args:
        backbone: a Hugging Face encoder (``AutoModel``).
        tokenizer: its tokenizer (must have a ``[MASK]``-like ``mask_token`` when
            ``do_query_expansion``).
        projection: the bias-free ``nn.Linear(hidden, dim)``; None creates one with ``dim`` outputs.
        dim: output dimension when ``projection`` is None (default 128, as ColBERTv2).
        query_prefix / passage_prefix: the marker tokens inserted after ``[CLS]``; None picks
            ``[unused0]`` / ``[unused1]`` when in the vocabulary, else ``"[Q] "`` / ``"[D] "``. A marker
            missing from the vocabulary is added (and the embeddings resized).
        query_max_length: query length in tokens, markers and ``[MASK]`` padding included.
        passage_max_length: passage truncation length in tokens, marker included.
        do_query_expansion: pad queries with ``[MASK]`` to ``query_max_length`` and score them.
        attend_to_expansion_tokens: let the encoder's attention see the ``[MASK]`` tokens.
        skiplist_words: passage tokens excluded from MaxSim (None: ``string.punctuation``).
    """

    def __init__(
        self,
        backbone: nn.Module,
        tokenizer,
        projection: nn.Linear | None = None,
        dim: int = 128,
        query_prefix: str | None = None,
        passage_prefix: str | None = None,
        query_max_length: int = 32,
        passage_max_length: int = 180,
        do_query_expansion: bool = True,
        attend_to_expansion_tokens: bool = False,
        skiplist_words: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.batch_tokenizer = BatchTokenizer(tokenizer)
        hidden = int(backbone.config.hidden_size)
        if projection is None:
            projection = nn.Linear(hidden, dim, bias=False)
        if projection.in_features != hidden or projection.bias is not None:
            raise ConfigError(
                f"ColBERT projection must be Linear({hidden}, dim, bias=False); got {projection}"
            )
        self.projection = projection
        if query_max_length < 3 or passage_max_length < 3:
            raise ConfigError("ColBERT lengths must leave room for [CLS], the marker and [SEP] (>= 3)")
        self.query_max_length = int(query_max_length)
        self.passage_max_length = int(passage_max_length)
        self.do_query_expansion = bool(do_query_expansion)
        self.attend_to_expansion_tokens = bool(attend_to_expansion_tokens)
        self.skiplist_words = list(DEFAULT_SKIPLIST if skiplist_words is None else skiplist_words)
        if self.do_query_expansion and tokenizer.mask_token_id is None:
            raise ConfigError("query expansion pads queries with [MASK]; this tokenizer has no mask token")
        if query_prefix is None or passage_prefix is None:
            default = (
                STANFORD_MARKERS if all(_in_vocab(tokenizer, m) for m in STANFORD_MARKERS) else PYLATE_MARKERS
            )
            query_prefix = default[0] if query_prefix is None else query_prefix
            passage_prefix = default[1] if passage_prefix is None else passage_prefix
        self.query_prefix = query_prefix
        self.passage_prefix = passage_prefix
        self._add_markers()
        self.query_marker_id = int(tokenizer.convert_tokens_to_ids(query_prefix))
        self.passage_marker_id = int(tokenizer.convert_tokens_to_ids(passage_prefix))
        skip_ids = set()
        for word in self.skiplist_words:
            skip_ids.update(tokenizer.encode(word, add_special_tokens=False)[:1])
            if _in_vocab(tokenizer, word):
                skip_ids.add(int(tokenizer.convert_tokens_to_ids(word)))
        self.register_buffer(
            "skiplist_ids", torch.tensor(sorted(skip_ids), dtype=torch.long), persistent=False
        )

    def _add_markers(self) -> None:
        missing = [m for m in (self.query_prefix, self.passage_prefix) if not _in_vocab(self.tokenizer, m)]
        if missing:
            self.tokenizer.add_tokens(missing)
            self.backbone.resize_token_embeddings(len(self.tokenizer))
            log.info("ColBERT markers %s added to the tokenizer (embeddings resized)", missing)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_backbone(
        cls,
        model: str | Path,
        dim: int = 128,
        keep_layers: int | None = None,
        layer_selection: str = "first",
        query_prefix: str | None = None,
        passage_prefix: str | None = None,
        query_max_length: int | None = None,
        passage_max_length: int | None = None,
        do_query_expansion: bool | None = None,
        attend_to_expansion_tokens: bool | None = None,
        skiplist_words: Sequence[str] | None = None,
        seed: int | None = None,
        dropout: float | None = None,
    ) -> ColBERTModel:
        """A new ColBERT on top of a Hugging Face encoder (a fresh random projection).

        A ColBERT folder (ours, PyLate or Stanford) given here is loaded with its projection
        instead, the given settings overriding the folder's; ``keep_layers`` applies either way.

        Args:
            model: folder or hub id of the encoder (resolved by :func:`resolve_model`).
            dim: projection size (ColBERTv2: 128).
            keep_layers: keep only this many transformer layers, chosen by ``layer_selection``
                (``first``, ``every_other`` or ``uniform``); None keeps all.
            seed: seeds the projection's initialisation (None: the global RNG).
            dropout: every dropout probability of the backbone for training; None keeps the
                model's own (:func:`distillrank.models.layers.set_dropout`).
            others: as in the class; None keeps the folder's value (a ColBERT folder) or the
                class default (32 / 180 tokens, expansion on, not attended, punctuation skipped).
        """
        path = resolve_model(str(model))
        settings = {
            "query_prefix": query_prefix,
            "passage_prefix": passage_prefix,
            "query_max_length": query_max_length,
            "passage_max_length": passage_max_length,
            "do_query_expansion": do_query_expansion,
            "attend_to_expansion_tokens": attend_to_expansion_tokens,
            "skiplist_words": skiplist_words,
        }
        settings = {k: v for k, v in settings.items() if v is not None}
        if _colbert_format(path) is not None:
            encoder = cls.load(path, **settings)
        else:
            tokenizer = AutoTokenizer.from_pretrained(path)
            backbone = AutoModel.from_pretrained(path)
            hidden = int(backbone.config.hidden_size)
            with torch.random.fork_rng(devices=[], enabled=seed is not None):
                if seed is not None:
                    torch.manual_seed(seed)
                projection = nn.Linear(hidden, dim, bias=False)
            encoder = cls(backbone, tokenizer, projection, **settings).eval()
        if keep_layers is not None:
            kept = _keep_layers(encoder.backbone, keep_layers, layer_selection)
            log.info("ColBERT keeps layers %s of %s", kept, model)
        if dropout is not None:
            set_dropout(encoder.backbone, dropout)
        return encoder

    @classmethod
    def load(cls, model: str | Path, **overrides) -> ColBERTModel:
        """Load a ColBERT folder in eval mode: ours, PyLate's, or a Stanford ColBERT checkpoint.

        ``overrides`` whose value is not None replace the folder's settings (``query_max_length``,
        ``passage_max_length``, ``query_prefix``, ``passage_prefix``, ``do_query_expansion``,
        ``attend_to_expansion_tokens``, ``skiplist_words``).

        Raises:
            ConfigError: the folder holds no projection (a plain encoder: use ``from_backbone``).
        """
        path = resolve_model(str(model))
        kind = _colbert_format(path)
        if kind is None:
            raise ConfigError(
                f"{path} is not a ColBERT model (no {SETTINGS_FILE}, no pylate Dense module, no "
                "'linear.weight' in its weights); start one from a plain encoder with "
                "ColBERTModel.from_backbone"
            )
        settings = _read_settings(path, kind)
        settings.update({k: v for k, v in overrides.items() if v is not None})
        tokenizer = AutoTokenizer.from_pretrained(path)
        if kind == "stanford":  # its 'linear.weight' is not the backbone's: no "unexpected key" report
            verbosity = hf_logging.get_verbosity()
            hf_logging.set_verbosity_error()
            try:
                backbone = AutoModel.from_pretrained(path)
            finally:
                hf_logging.set_verbosity(verbosity)
        else:
            backbone = AutoModel.from_pretrained(path)
        if kind == "stanford":
            weight = _read_tensor(path, "linear.weight")
        else:
            weight = _read_tensor(path / DENSE_DIR, "linear.weight")
        projection = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
        with torch.no_grad():
            projection.weight.copy_(weight)
        return cls(backbone, tokenizer, projection, **settings).eval()

    # ------------------------------------------------------------------ encoding
    @property
    def dim(self) -> int:
        return int(self.projection.out_features)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def tokenize(self, texts: Sequence[str], kind: str) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Model inputs (marker inserted, queries ``[MASK]``-padded) and the scoring mask, on device.

        Returns:
            ``(batch, mask)``: the tokenizer's tensors for the backbone, and ``mask`` [N, T] bool:
            the tokens that take part in MaxSim.
        """
        batch, mask = self.tokenize_cpu(texts, kind)
        device = self.device
        return {k: v.to(device) for k, v in batch.items()}, mask.to(device)

    def token_lengths(self, texts: Sequence[str], kind: str) -> np.ndarray:
        """Tokens of each text as :meth:`tokenize` builds it (marker and special tokens included,
        unpadded; an expanded query always has ``query_max_length``)."""
        if kind not in KINDS:
            raise ValueError(f"kind={kind!r}; expected one of {KINDS}")
        if kind == "query" and self.do_query_expansion:
            return np.full(len(texts), self.query_max_length, dtype=np.int64)
        max_length = self.query_max_length if kind == "query" else self.passage_max_length
        return self.batch_tokenizer.lengths(texts, max_length=max_length - 1) + 1

    def tokenize_cpu(self, texts: Sequence[str], kind: str) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """:meth:`tokenize` on the CPU (the inference loop moves each batch itself)."""
        if kind not in KINDS:
            raise ValueError(f"kind={kind!r}; expected one of {KINDS}")
        is_query = kind == "query"
        max_length = self.query_max_length if is_query else self.passage_max_length
        expand = is_query and self.do_query_expansion
        batch = self.batch_tokenizer(texts, max_length=max_length - 1, padding="max_length" if expand else True)
        marker = self.query_marker_id if is_query else self.passage_marker_id
        out = {}
        for key, value in batch.items():
            fill = marker if key == "input_ids" else (1 if key == "attention_mask" else 0)
            out[key] = torch.cat([value[:, :1], torch.full_like(value[:, :1], fill), value[:, 1:]], dim=1)
        attention = out["attention_mask"].bool()
        if expand:
            ids = out["input_ids"]
            ids[~attention] = self.tokenizer.mask_token_id
            mask = torch.ones_like(attention)
            if self.attend_to_expansion_tokens:
                out["attention_mask"] = torch.ones_like(out["attention_mask"])
        else:
            mask = attention.clone()
            if not is_query and self.skiplist_ids.numel():
                mask &= ~torch.isin(out["input_ids"], self.skiplist_ids.cpu())
        return out, mask

    def encode(self, texts: Sequence[str], kind: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Token embeddings and their scoring mask, with gradients when the caller allows them.

        Returns:
            ``(emb, mask)``: emb [N, T, dim] float32, L2-normalised per token (rows of tokens
            outside ``mask`` are zero); mask [N, T] bool. Both on the model's device. T is
            ``query_max_length`` for expanded queries, else the batch's longest.
        """
        return self.encode_inputs(*self.tokenize(texts, kind))

    def encode_inputs(
        self, batch: dict[str, torch.Tensor], mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`encode` of a tokenized batch (``batch`` and ``mask`` on the model's device)."""
        hidden = self.backbone(**backbone_inputs(batch)).last_hidden_state
        emb = nn.functional.normalize(self.projection(hidden).float(), dim=-1)
        return emb * mask.unsqueeze(-1), mask

    def forward(self, texts: Sequence[str], kind: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Same as :meth:`encode`."""
        return self.encode(texts, kind)

    # ------------------------------------------------------------------ scoring
    @staticmethod
    def score_pairs(
        q_emb: torch.Tensor, q_mask: torch.Tensor, p_emb: torch.Tensor, p_mask: torch.Tensor
    ) -> torch.Tensor:
        """MaxSim of aligned rows: ``[N, Tq, d], [N, Tq], [N, Tp, d], [N, Tp] -> [N]``."""
        sim = torch.einsum("nid,njd->nij", q_emb, p_emb)
        return _maxsim_reduce(sim, q_mask[:, :, None], p_mask[:, None, :])

    @staticmethod
    @torch.inference_mode()
    def score_indexed(
        queries: tuple[torch.Tensor, torch.Tensor],
        passages: tuple[torch.Tensor, torch.Tensor],
        pair_q: np.ndarray,
        pair_p: np.ndarray,
        pair_batch: int,
    ) -> np.ndarray:
        """MaxSim scores [N] (float32) of pairs given as rows of embedded ``(emb, mask)`` queries and
        passages (:meth:`embed`), ``pair_batch`` pairs at a time, on the embeddings' device."""
        (q_emb, q_mask), (p_emb, p_mask) = queries, passages
        pair_q = torch.as_tensor(np.asarray(pair_q, dtype=np.int64), device=q_emb.device)
        pair_p = torch.as_tensor(np.asarray(pair_p, dtype=np.int64), device=q_emb.device)
        out = np.empty(len(pair_q), dtype=np.float32)
        for start in range(0, len(pair_q), pair_batch):
            qi = pair_q[start : start + pair_batch]
            pi = pair_p[start : start + pair_batch]
            scores = ColBERTModel.score_pairs(q_emb[qi], q_mask[qi], p_emb[pi], p_mask[pi])
            out[start : start + len(qi)] = scores.float().cpu().numpy()
        return out

    @staticmethod
    def score_matrix(
        q_emb: torch.Tensor,
        q_mask: torch.Tensor,
        p_emb: torch.Tensor,
        p_mask: torch.Tensor,
        max_elements: int = MAX_SIM_ELEMENTS,
    ) -> torch.Tensor:
        """MaxSim of every query with every passage: ``[Nq, Tq, d], …, [Np, Tp, d], … -> [Nq, Np]``.

        Passages are processed in chunks whose similarity tensor holds at most ``max_elements``
        entries (at least one passage per chunk). Differentiable.
        """
        nq, tq = q_mask.shape
        tp = p_mask.shape[1]
        chunk = max(1, int(max_elements) // max(1, nq * tq * tp))
        out = []
        for start in range(0, p_emb.shape[0], chunk):
            pe, pm = p_emb[start : start + chunk], p_mask[start : start + chunk]
            sim = torch.einsum("qid,pjd->qpij", q_emb, pe)
            out.append(_maxsim_reduce(sim, q_mask[:, None, :, None], pm[None, :, None, :]))
        if not out:
            return q_emb.new_zeros((nq, 0))
        return torch.cat(out, dim=1)

    # ------------------------------------------------------------------ inference
    @torch.inference_mode()
    def embed(
        self,
        texts: Sequence[str],
        kind: str = "passage",
        batch_size: int = 32,
        runtime: Runtime | None = None,
        progress: bool = False,
        desc: str | None = None,
        out_device: torch.device | str = "cpu",
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings of many texts without gradients, in the order of ``texts``.

        Batches are formed from texts sorted by length (least padding); ``runtime`` (default
        ``Runtime()``) gives each forward's autocast, caps its size (``max_forward_texts``), may
        size batches by a token budget instead of ``batch_size`` (``max_batch_tokens``) and
        tokenizes the next batch while this one runs (``prefetches``), as the bi-encoder's
        :meth:`~distillrank.models.bi_encoder.BiEncoder.encode` does
        (:mod:`distillrank.models.batching`).

        Returns:
            ``(emb, mask)``: emb [N, T, dim] float32 padded to the longest text, mask [N, T] bool,
            both on ``out_device``.
        """
        runtime = runtime or Runtime()
        was_training = self.training
        self.eval()
        n = len(texts)
        order = np.argsort([-len(t) for t in texts], kind="stable")
        chunks: list[tuple[np.ndarray, torch.Tensor, torch.Tensor]] = []
        bar = tqdm(total=n, desc=desc or f"encode {kind}s", unit=kind[0], disable=not progress)
        batches = row_batches(
            order, runtime.forward_texts(batch_size), max_tokens=runtime.max_batch_tokens,
            max_rows=runtime.max_forward_texts,
            token_lengths=lambda rows: self.token_lengths([texts[i] for i in rows], kind),
        )  # fmt: skip

        def tokenize(rows: np.ndarray) -> dict[str, torch.Tensor]:
            batch, mask = self.tokenize_cpu([texts[i] for i in rows], kind)
            return {**batch, SCORING_MASK: mask}

        device = self.device
        for idx, inputs in prepared(
            batches, tokenize, device, runtime.prefetches(device), runtime.max_forward_tokens,
            self.batch_tokenizer.pad_values(),
        ):
            mask = inputs.pop(SCORING_MASK)
            with runtime.autocast():
                emb, mask = self.encode_inputs(inputs, mask)
            chunks.append((idx, emb.float().to(out_device), mask.to(out_device)))
            bar.update(len(idx))
        bar.close()
        self.train(was_training)
        width = max((m.shape[1] for _, _, m in chunks), default=0)
        out = torch.zeros((n, width, self.dim), dtype=torch.float32, device=out_device)
        out_mask = torch.zeros((n, width), dtype=torch.bool, device=out_device)
        for idx, emb, mask in chunks:
            rows = torch.as_tensor(idx, device=out_device)
            out[rows, : emb.shape[1]] = emb
            out_mask[rows, : mask.shape[1]] = mask
        return out, out_mask

    # ------------------------------------------------------------------ saving
    def settings(self) -> dict:
        return {
            "query_prefix": self.query_prefix,
            "passage_prefix": self.passage_prefix,
            "query_max_length": self.query_max_length,
            "passage_max_length": self.passage_max_length,
            "do_query_expansion": self.do_query_expansion,
            "attend_to_expansion_tokens": self.attend_to_expansion_tokens,
            "skiplist_words": list(self.skiplist_words),
        }

    def save(self, path: str | Path, model_card: str | None = None) -> Path:
        """Save atomically as a PyLate-layout folder (see the module docstring)."""
        path = Path(path)
        with atomic_dir(path) as tmp:
            self.backbone.save_pretrained(tmp, safe_serialization=True)
            self.tokenizer.save_pretrained(tmp)
            (tmp / DENSE_DIR).mkdir()
            weight = self.projection.weight.detach().float().cpu().contiguous()
            save_file(
                {"linear.weight": weight},
                str(tmp / DENSE_DIR / "model.safetensors"),
                metadata={"format": "pt"},
            )
            _write_json(
                tmp / DENSE_DIR / "config.json",
                {
                    "in_features": self.projection.in_features,
                    "out_features": self.dim,
                    "bias": False,
                    "activation_function": "torch.nn.modules.linear.Identity",
                    "use_residual": False,
                },
            )
            _write_json(
                tmp / "modules.json",
                [
                    {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                    {"idx": 1, "name": "1", "path": DENSE_DIR, "type": "pylate.models.Dense"},
                ],
            )
            _write_json(
                tmp / "sentence_bert_config.json",
                {"max_seq_length": self.passage_max_length - 1, "do_lower_case": False},
            )
            _write_json(
                tmp / "config_sentence_transformers.json",
                {
                    "model_type": "ColBERT",
                    "prompts": {},
                    "default_prompt_name": None,
                    "similarity_fn_name": "MaxSim",
                    "query_prefix": self.query_prefix,
                    "document_prefix": self.passage_prefix,
                    "query_length": self.query_max_length,
                    "document_length": self.passage_max_length,
                    "do_query_expansion": self.do_query_expansion,
                    "attend_to_expansion_tokens": self.attend_to_expansion_tokens,
                    "skiplist_words": list(self.skiplist_words),
                },
            )
            _write_json(tmp / SETTINGS_FILE, {"dim": self.dim, **self.settings()})
            if model_card:
                (tmp / "README.md").write_text(model_card, encoding="utf-8")
        return path


# ---------------------------------------------------------------------------- helpers
def _maxsim_reduce(sim: torch.Tensor, q_mask: torch.Tensor, p_mask: torch.Tensor) -> torch.Tensor:
    """Sum over query tokens (q_mask) of the max over passage tokens (p_mask) of ``sim [..., Tq, Tp]``.

    A passage without any scored token contributes 0.
    """
    best = sim.masked_fill(~p_mask, float("-inf")).amax(dim=-1)
    best = torch.where(p_mask.any(dim=-1), best, torch.zeros_like(best))
    return (best * q_mask.squeeze(-1).to(best.dtype)).sum(dim=-1)


def _in_vocab(tokenizer, token: str) -> bool:
    return token in tokenizer.get_vocab()


def _keep_layers(backbone: nn.Module, num_layers: int, selection: str) -> list[int]:
    return keep_layers(backbone, num_layers, selection)


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")


def _weight_files(path: Path) -> list[Path]:
    files = sorted(path.glob("*.safetensors")) or sorted(path.glob("pytorch_model*.bin"))
    return files


def _read_tensor(path: Path, name: str) -> torch.Tensor | None:
    """Tensor ``name`` from the safetensors / torch weight files of a folder (None when absent)."""
    for file in _weight_files(path):
        if file.suffix == ".safetensors":
            with safe_open(str(file), framework="pt", device="cpu") as f:
                if name in f.keys():
                    return f.get_tensor(name)
        else:
            state = torch.load(file, map_location="cpu", weights_only=True)
            if name in state:
                return state[name]
    return None


def _colbert_format(path: Path) -> str | None:
    """``distillrank``, ``pylate``, ``stanford`` or None (not a ColBERT folder)."""
    if (path / SETTINGS_FILE).is_file():
        return "distillrank"
    modules = path / "modules.json"
    if modules.is_file():
        entries = json.loads(modules.read_text())
        if any(e.get("type", "").startswith("pylate") and e.get("path") == DENSE_DIR for e in entries):
            return "pylate"
        if any(e.get("type", "").startswith("pylate") for e in entries):
            raise ConfigError(
                f"{path}: only PyLate folders with their Dense module at {DENSE_DIR} are supported"
            )
    if _read_tensor(path, "linear.weight") is not None:
        return "stanford"
    return None


def _read_settings(path: Path, kind: str) -> dict:
    """Class keyword arguments from the settings a ColBERT folder stores."""
    if kind == "distillrank":
        settings = json.loads((path / SETTINGS_FILE).read_text())
        settings.pop("dim", None)
        return settings
    if kind == "pylate":
        st_file = path / "config_sentence_transformers.json"
        st = json.loads(st_file.read_text()) if st_file.is_file() else {}
        names = {
            "query_prefix": "query_prefix",
            "document_prefix": "passage_prefix",
            "query_length": "query_max_length",
            "document_length": "passage_max_length",
            "do_query_expansion": "do_query_expansion",
            "attend_to_expansion_tokens": "attend_to_expansion_tokens",
            "skiplist_words": "skiplist_words",
        }
        settings = {ours: st[theirs] for theirs, ours in names.items() if st.get(theirs) is not None}
        settings.setdefault("query_prefix", PYLATE_MARKERS[0])  # PyLate's defaults
        settings.setdefault("passage_prefix", PYLATE_MARKERS[1])
        return settings
    # Stanford ColBERT: [unused0] / [unused1] markers; artifact.metadata holds its ColBERTConfig.
    settings = {"query_prefix": STANFORD_MARKERS[0], "passage_prefix": STANFORD_MARKERS[1]}
    meta_file = path / "artifact.metadata"
    if meta_file.is_file():
        meta = json.loads(meta_file.read_text())
        if meta.get("query_maxlen"):
            settings["query_max_length"] = int(meta["query_maxlen"])
        if meta.get("doc_maxlen"):
            settings["passage_max_length"] = int(meta["doc_maxlen"])
        if meta.get("attend_to_mask_tokens") is not None:
            settings["attend_to_expansion_tokens"] = bool(meta["attend_to_mask_tokens"])
        if meta.get("mask_punctuation") is False:
            settings["skiplist_words"] = []
        if meta.get("similarity", "cosine") != "cosine":
            log.warning(
                "%s: similarity=%s; distillrank's ColBERT scores by cosine MaxSim", path, meta["similarity"]
            )
    return settings
