"""Synthetic queries for passages from a generative model (doc2query / docT5query style).

Nogueira & Lin 2019 ("From doc2query to docTTTTTquery") sample queries from a T5 fine-tuned to
write MS MARCO queries for a passage; GPL (Wang et al. 2022) uses
``BeIR/query-gen-msmarco-t5-base-v1`` with top-k 25 and top-p 0.95 sampling. A causal LM works too:
it is given a prompt holding the passage and its continuation (up to the first newline) is the query.

Determinism: every generated sequence samples from its own random stream, seeded from
``(seed, passage text, sample index)``, so a seed gives the same queries for a passage whatever the
other passages of the call, their order and the batch size (up to float noise from padding, which
moves a logit by ~1e-6 and flips a sampled token only in exceedingly rare ties). The sampling
(temperature, top-k, top-p, then inverse-CDF draw) is done by :class:`RowSampler` as a logits
processor of a greedy ``generate`` call: it leaves one finite logit per row, which greedy search
then picks.

Cleaning: each generation is cut at its first newline, whitespace-collapsed and stripped; empty
ones and per-passage duplicates (case-insensitive) are dropped. Passages left with fewer than
``n_per_passage`` queries get up to ``retries`` further rounds of ``n_per_passage`` fresh samples
(new sample indices, so still deterministic); a passage can still end with fewer (a model that
keeps writing the same query), never with more.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    LogitsProcessor,
    LogitsProcessorList,
)

from distillrank.errors import ConfigError
from distillrank.models.hub import resolve_model
from distillrank.runtime import autocast
from distillrank.workspace import dir_fingerprint, fingerprint

KINDS = ("auto", "seq2seq", "causal")
DEFAULT_PROMPTS = {"seq2seq": "{passage}", "causal": "Passage: {passage}\nQuery:"}


def row_seed(seed: int, passage: str, index: int) -> int:
    """The 63-bit seed of sample ``index`` of ``passage`` (stable across processes and platforms)."""
    digest = hashlib.sha256(f"{int(seed)}\x00{int(index)}\x00{passage}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class RowSampler(LogitsProcessor):
    """Top-k / top-p / temperature sampling with one ``torch.Generator`` per batch row.

    Returns logits that are ``-inf`` everywhere except at the sampled token, so a greedy
    ``generate`` takes exactly the sampled token.
    """

    def __init__(
        self, seeds: Sequence[int], top_k: int | None, top_p: float | None, temperature: float
    ) -> None:
        self.generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
        self.top_k = top_k
        self.top_p = top_p
        self.temperature = temperature

    def draw(self) -> torch.Tensor:
        """One uniform number per row, each from its row's stream (CPU, float64)."""
        return torch.stack([torch.rand((), generator=g, dtype=torch.float64) for g in self.generators])

    def sample(self, scores: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """Token ids [B] drawn from ``scores`` [B, V] with the uniforms ``u`` [B]."""
        logits = scores.float() / self.temperature
        k = logits.shape[-1] if not self.top_k else min(int(self.top_k), logits.shape[-1])
        values, index = logits.topk(k, dim=-1)  # sorted descending, ties in a fixed order
        probs = torch.softmax(values, dim=-1).double()
        if self.top_p is not None and self.top_p < 1.0:
            before = probs.cumsum(-1) - probs  # mass of the strictly more probable tokens
            keep = before < self.top_p
            keep[:, 0] = True
            probs = probs * keep
        cdf = probs.cumsum(-1)
        target = (u.to(cdf.device) * cdf[:, -1]).unsqueeze(-1)
        pos = torch.searchsorted(cdf, target, right=True).clamp_(max=k - 1)
        # a zero-probability slot after the kept ones is never chosen: step back to the last kept
        pos = torch.minimum(pos, (probs > 0).sum(-1, keepdim=True) - 1)
        return index.gather(-1, pos).squeeze(-1)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if scores.shape[0] != len(self.generators):
            raise RuntimeError(
                f"RowSampler has {len(self.generators)} rows but got a batch of {scores.shape[0]}"
            )
        tokens = self.sample(scores, self.draw())
        out = torch.full_like(scores, float("-inf"))
        out.scatter_(-1, tokens.unsqueeze(-1), 0.0)
        return out


def clean(text: str) -> str:
    """A generation as a query: its first line, whitespace collapsed, stripped."""
    return " ".join(text.split("\n", 1)[0].split())


def add_unique(kept: list[str], seen: set[str], candidates: Sequence[str], limit: int) -> None:
    """Append cleaned, non-empty candidates not seen yet (case-insensitive) until ``limit``."""
    for text in candidates:
        if len(kept) >= limit:
            return
        query = clean(text)
        key = query.casefold()
        if query and key not in seen:
            seen.add(key)
            kept.append(query)


class QueryGenerator:
    """Writes queries for passages with a seq2seq (docT5query) or causal language model.

    Args:
        model: folder or hub id (e.g. ``BeIR/query-gen-msmarco-t5-base-v1``).
        kind: ``seq2seq``, ``causal``, or ``auto`` (from the model config's ``is_encoder_decoder``).
        prompt: input template with a ``{passage}`` field; default ``{passage}`` for seq2seq and
            ``Passage: {passage}\\nQuery:`` for causal models.
        max_new_tokens: most tokens generated per query.
        batch_size: passages per ``generate`` call (each passage is repeated ``n_per_passage``
            times, so a call has ``batch_size * n_per_passage`` rows).
        do_sample: sample (True) or greedy (False: every sample of a passage is the same query, so
            one query per passage is returned after de-duplication).
        top_k: keep the k most probable tokens when sampling (0 or None: all).
        top_p: nucleus mass when sampling (1.0 or None: all).
        temperature: logits are divided by this before sampling.
        passage_max_length: passages are cut to this many tokens before they enter the prompt
            (at a token boundary of the original text, so the prompt suffix is never truncated).
        retries: extra sampling rounds for passages left with fewer than ``n_per_passage``
            distinct non-empty queries.
    """

    def __init__(
        self,
        model: str,
        kind: str = "auto",
        prompt: str | None = None,
        max_new_tokens: int = 32,
        batch_size: int = 16,
        do_sample: bool = True,
        top_k: int | None = 25,
        top_p: float | None = 0.95,
        temperature: float = 1.0,
        passage_max_length: int = 256,
        retries: int = 1,
    ) -> None:
        if kind not in KINDS:
            raise ConfigError(f"queries generator kind={kind!r}; expected one of {KINDS}")
        if prompt is not None and "{passage}" not in prompt:
            raise ConfigError(f"queries generator prompt={prompt!r} has no {{passage}} field")
        if temperature <= 0:
            raise ConfigError(f"queries generator temperature must be > 0, got {temperature}")
        if top_p is not None and not 0 < top_p <= 1:
            raise ConfigError(f"queries generator top_p must be in (0, 1], got {top_p}")
        if min(int(max_new_tokens), int(batch_size), int(passage_max_length)) < 1 or int(retries) < 0:
            raise ConfigError(
                "queries generator max_new_tokens, batch_size, passage_max_length must be >= 1, retries >= 0"
            )
        self.model = model
        self._kind = kind
        self._prompt = prompt
        self.max_new_tokens = int(max_new_tokens)
        self.batch_size = int(batch_size)
        self.do_sample = bool(do_sample)
        self.top_k = int(top_k) if top_k else None
        self.top_p = float(top_p) if top_p is not None else None
        self.temperature = float(temperature)
        self.passage_max_length = int(passage_max_length)
        self.retries = int(retries)
        self._model: torch.nn.Module | None = None
        self._tokenizer: Any = None

    # ------------------------------------------------------------------ settings
    @property
    def path(self) -> Path:
        return resolve_model(self.model)

    @property
    def kind(self) -> str:
        """``seq2seq`` or ``causal`` (``auto`` resolved from the model config, without weights)."""
        if self._kind == "auto":
            config = AutoConfig.from_pretrained(self.path)
            self._kind = "seq2seq" if getattr(config, "is_encoder_decoder", False) else "causal"
        return self._kind

    @property
    def prompt(self) -> str:
        return self._prompt if self._prompt is not None else DEFAULT_PROMPTS[self.kind]

    def fingerprint(self) -> str:
        """Identifies the queries this generator writes for a seed (weights + settings)."""
        return fingerprint(
            {
                "kind": "query_generator",
                "model_kind": self.kind,
                "weights": dir_fingerprint(self.path),
                "prompt": self.prompt,
                "max_new_tokens": self.max_new_tokens,
                "do_sample": self.do_sample,
                "top_k": self.top_k,
                "top_p": self.top_p,
                "temperature": self.temperature,
                "passage_max_length": self.passage_max_length,
                "retries": self.retries,
            }
        )

    # ------------------------------------------------------------------ loading
    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            tokenizer = AutoTokenizer.from_pretrained(self.path)
            if self.kind == "causal":
                tokenizer.padding_side = "left"  # generation continues right after the prompt
                if tokenizer.pad_token is None:
                    tokenizer.pad_token = tokenizer.eos_token
            self._tokenizer = tokenizer
        return self._tokenizer

    def lm(self, device: torch.device) -> torch.nn.Module:
        """The loaded model, frozen, in eval mode, on ``device`` (loaded once)."""
        if self._model is None:
            cls = AutoModelForSeq2SeqLM if self.kind == "seq2seq" else AutoModelForCausalLM
            model = cls.from_pretrained(self.path)
            model.eval().requires_grad_(False)
            self._model = model
        return self._model.to(device)

    # ------------------------------------------------------------------ generation
    def inputs(self, passages: Sequence[str]) -> list[str]:
        """The prompts of ``passages``, each passage cut to ``passage_max_length`` tokens."""
        enc = self.tokenizer(
            list(passages),
            add_special_tokens=False,
            truncation=True,
            max_length=self.passage_max_length,
            return_offsets_mapping=True,
        )
        out = []
        for passage, ids, offsets in zip(passages, enc["input_ids"], enc["offset_mapping"], strict=True):
            if len(ids) >= self.passage_max_length and offsets:
                passage = passage[: offsets[-1][1]]
            out.append(self.prompt.format(passage=passage))
        return out

    @torch.inference_mode()
    def _generate_rows(
        self, prompts: list[str], seeds: list[int], device: torch.device, precision: str
    ) -> list[str]:
        """One generation per (prompt, seed) row, decoded (the prompt itself left out)."""
        model = self.lm(device)
        tokenizer = self.tokenizer
        batch = tokenizer(prompts, padding=True, return_tensors="pt").to(device)
        pad_id = tokenizer.pad_token_id
        if pad_id is None:
            pad_id = model.generation_config.eos_token_id
        kwargs: dict[str, Any] = {
            "max_new_tokens": self.max_new_tokens,
            "do_sample": False,
            "num_beams": 1,
            "pad_token_id": pad_id,
        }
        if self.do_sample:
            kwargs["logits_processor"] = LogitsProcessorList(
                [RowSampler(seeds, self.top_k, self.top_p, self.temperature)]
            )
        with autocast(device, precision):
            out = model.generate(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **kwargs
            )
        if self.kind == "causal":
            out = out[:, batch["input_ids"].shape[1] :]
        return tokenizer.batch_decode(out, skip_special_tokens=True)

    def generate(
        self,
        passages: Sequence[str],
        n_per_passage: int,
        seed: int,
        device: torch.device,
        precision: str = "fp32",
        progress: bool = True,
    ) -> list[list[str]]:
        """Up to ``n_per_passage`` distinct non-empty queries per passage, in passage order.

        Deterministic for ``seed`` per passage (see the module docs); passages are processed in
        length-sorted batches so that padding is minimal.
        """
        if n_per_passage < 1:
            raise ConfigError(f"n_per_passage must be >= 1, got {n_per_passage}")
        passages = list(passages)
        results: list[list[str]] = [[] for _ in passages]
        seen: list[set[str]] = [set() for _ in passages]
        if not passages:
            return results
        prompts = self.inputs(passages)
        self.lm(device)
        rounds = 1 + (self.retries if self.do_sample else 0)
        bar = tqdm(total=len(passages), desc="queries: passages", unit="passage", disable=not progress)
        for r in range(rounds):
            todo = [i for i in range(len(passages)) if len(results[i]) < n_per_passage]
            if not todo:
                break
            todo.sort(key=lambda i: -len(prompts[i]))  # stable: ties keep passage order
            for start in range(0, len(todo), self.batch_size):
                idx = todo[start : start + self.batch_size]
                rows = [(i, r * n_per_passage + j) for i in idx for j in range(n_per_passage)]
                texts = self._generate_rows(
                    [prompts[i] for i, _ in rows],
                    [row_seed(seed, passages[i], j) for i, j in rows],
                    device,
                    precision,
                )
                for k, i in enumerate(idx):
                    chunk = texts[k * n_per_passage : (k + 1) * n_per_passage]
                    add_unique(results[i], seen[i], chunk, n_per_passage)
                if r == 0:
                    bar.update(len(idx))
        bar.close()
        return results


def flatten(
    docids: Sequence[str], queries: Sequence[Sequence[str]], prefix: str = "gen"
) -> list[tuple[str, str, str]]:
    """``(qid, text, docid)`` rows of generated queries, qid ``{prefix}-{docid}-{k}``.

    The docid the query was written from is its one positive (as in docT5query / GPL training).
    """
    rows = []
    for docid, qs in zip(docids, queries, strict=True):
        rows.extend((f"{prefix}-{docid}-{k}", q, docid) for k, q in enumerate(qs))
    return rows


__all__ = ["QueryGenerator", "RowSampler", "clean", "flatten", "row_seed"]
