"""Benchmark 7: where the speed comes from — each technique switched off, one at a time.

Every case times the same work with and without one technique, alternating the variants round by
round (A B, B A, …) after one untimed call each, and reports the medians and the speed-up
(technique on / off). No sentence-transformers side: these are distillrank's own choices.

* ``length_sorting``: :meth:`BiEncoder.encode` (texts sorted by length, then batched) against the
  same batches in corpus order, on SciFact queries and passages mixed (the scoring stage's
  workload: short queries and long passages), with the padded share of the tokens of each.
* ``mask_skip``: the all-ones attention mask dropped before the backbone
  (:mod:`distillrank.models.masking`) against always passing it, on passages at the maximum length.
* ``forward_cap``: ``hardware.max_forward_texts`` 16 and 8 against no cap, and 16 with
  ``hardware.max_forward_tokens=2048`` (the CPU defaults), encoding at ``batch_size``.
* ``dropout``: one student forward + backward with the checkpoint's dropout, without attention
  dropout, and with ``student.dropout=0``.
* ``tokenization``: the tokenizer's share of an encode (what a pre-tokenised cache could save at most).
* ``torch_compile`` (full mode only; it compiles for a minute on 2 cores): the encoder forward and a
  student step through ``torch.compile(dynamic=True)`` against eager, with the first call's seconds.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Callable

import numpy as np
import torch

from bench.common import Context, load_average, timed


def _alternate(variants: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Seconds of each variant, ``repeats`` times, alternating; one untimed call of each first."""
    for fn in variants.values():
        fn()
    names = list(variants)
    out: dict[str, list[float]] = {name: [] for name in names}
    for r in range(max(repeats, 1)):
        for name in names if r % 2 == 0 else reversed(names):
            out[name].append(timed(variants[name]))
    return out


def _case(name: str, runs: dict[str, list[float]], on: str, off: str, **values) -> dict:
    med = {k: statistics.median(v) for k, v in runs.items()}
    return {
        "case": name,
        "unit": "s",
        "values": {
            "median_s": med,
            "runs_s": runs,
            "on": on,
            "off": off,
            "speedup": med[off] / med[on],
            **values,
        },
    }


def _padding_share(model, texts: list[str], step: int, sort: bool) -> float:
    """Padded fraction of the token slots of the batches of ``texts`` (sorted by length or not)."""
    order = np.argsort([-len(t) for t in texts], kind="stable") if sort else np.arange(len(texts))
    real = slots = 0
    for start in range(0, len(texts), step):
        batch = model.tokenize([texts[i] for i in order[start : start + step]], "passage")
        mask = batch["attention_mask"]
        real += int(mask.sum())
        slots += mask.numel()
    return 1.0 - real / slots


def _unsorted_encode(model, texts: list[str], step: int) -> None:
    """``encode`` without its length sort: the same batch size, the texts in the given order."""
    with torch.inference_mode():
        for start in range(0, len(texts), step):
            model(texts[start : start + step], "passage")


def encode_cases(ctx: Context) -> list[dict]:
    from bench.common import distillrank_runtime
    from distillrank.models import bi_encoder as bi_module
    from distillrank.models.bi_encoder import BiEncoder

    s = ctx.sizes
    coll = ctx.collection
    n = min(s.precision_texts, len(coll.doc_ids()))
    passages = coll.passage_texts(list(range(n)))
    queries = [t for _, t in coll.split_queries("test")][: n // 4]
    mixed = [t for pair in zip(passages, queries + [None] * n, strict=False) for t in pair if t]  # interleaved
    model = BiEncoder.load(ctx.bi_encoder, passage_max_length=s.passage_max_length).eval()
    runtime = distillrank_runtime()  # conf/hardware/cpu.yaml: what a user gets by default
    step = runtime.forward_texts(s.batch_size)
    cases = []

    runs = _alternate(
        {
            "sorted": lambda: model.encode(mixed, "passage", s.batch_size, runtime),
            "unsorted": lambda: _unsorted_encode(model, mixed, step),
        },
        s.repeats,
    )
    cases.append(
        _case(
            "length_sorting", runs, "sorted", "unsorted", texts=len(mixed), queries=len(queries),
            padding_sorted=_padding_share(model, mixed, step, True),
            padding_unsorted=_padding_share(model, mixed, step, False),
        )
    )

    def masked() -> None:
        original = bi_module.backbone_inputs
        bi_module.backbone_inputs = dict  # the mask always passed
        try:
            model.encode(passages, "passage", s.batch_size, runtime)
        finally:
            bi_module.backbone_inputs = original

    runs = _alternate({"skip": lambda: model.encode(passages, "passage", s.batch_size, runtime), "always": masked}, s.repeats)
    cases.append(_case("mask_skip", runs, "skip", "always", texts=len(passages)))

    def capped(cap: int | None, tokens: int | None = None) -> Callable[[], object]:
        # hardware.max_forward_texts=cap hardware.max_forward_tokens=tokens
        capped_runtime = dataclasses.replace(runtime, max_forward_texts=cap, max_forward_tokens=tokens)

        def run() -> None:
            model.encode(passages, "passage", s.batch_size, capped_runtime)

        return run

    arms = {"cap_16": capped(16), "cap_8": capped(8), "no_cap": capped(None), "tokens_2048": capped(16, 2048)}
    runs = _alternate(arms, s.repeats)
    case = _case("forward_cap", runs, "cap_16", "no_cap", texts=len(passages), batch_size=s.batch_size)
    case["values"]["speedup_cap_8"] = case["values"]["median_s"]["no_cap"] / case["values"]["median_s"]["cap_8"]
    case["values"]["speedup_tokens_2048"] = case["values"]["median_s"]["no_cap"] / case["values"]["median_s"]["tokens_2048"]
    cases.append(case)

    tokenize = timed(lambda: model.tokenize(passages, "passage"))
    encode = statistics.median(timed(lambda: model.encode(passages, "passage", s.batch_size, runtime)) for _ in range(max(s.repeats, 1)))
    cases.append(
        {
            "case": "tokenization",
            "unit": "s",
            "values": {"texts": len(passages), "tokenize_s": tokenize, "encode_s": encode, "share": tokenize / encode},
        }
    )
    return cases


def dropout_case(ctx: Context) -> dict:
    from distillrank.models.bi_encoder import BiEncoder
    from distillrank.models.layers import set_dropout

    s = ctx.sizes
    coll = ctx.collection
    batch = coll.passage_texts(list(range(min(max(2, s.train_batch * 4), len(coll.doc_ids())))))

    def student(variant: str) -> BiEncoder:
        model = BiEncoder.load(ctx.student, passage_max_length=s.passage_max_length).train()
        if variant == "no_attention_dropout":  # BERT's attention reads its nn.Dropout's p at call time
            for name, module in model.backbone.named_modules():
                if name.endswith("attention.self"):
                    module.dropout.p = 0.0
        elif variant == "off":
            set_dropout(model.backbone, 0.0)
        return model

    models = {v: student(v) for v in ("default", "no_attention_dropout", "off")}

    def step(model: BiEncoder) -> Callable[[], None]:
        def run() -> None:
            model.zero_grad(set_to_none=True)
            model(batch, "passage").square().sum().backward()

        return run

    runs = _alternate({k: step(m) for k, m in models.items()}, s.repeats)
    case = _case("dropout", runs, "off", "default", texts=len(batch), max_length=s.passage_max_length)
    med = case["values"]["median_s"]
    case["values"]["speedup_no_attention_dropout"] = med["default"] / med["no_attention_dropout"]
    return case


def compile_cases(ctx: Context) -> list[dict]:
    from bench.common import distillrank_runtime
    from distillrank.models.bi_encoder import BiEncoder

    s = ctx.sizes
    coll = ctx.collection
    passages = coll.passage_texts(list(range(min(s.precision_texts, len(coll.doc_ids())))))
    batch = passages[: max(2, s.train_batch * 4)]
    eager = BiEncoder.load(ctx.bi_encoder, passage_max_length=s.passage_max_length).eval()
    compiled = BiEncoder.load(ctx.bi_encoder, passage_max_length=s.passage_max_length).eval()
    compiled.backbone = torch.compile(compiled.backbone, dynamic=True)
    runtime = distillrank_runtime()
    first = timed(lambda: compiled.encode(passages, "passage", s.batch_size, runtime))
    runs = _alternate(
        {
            "compiled": lambda: compiled.encode(passages, "passage", s.batch_size, runtime),
            "eager": lambda: eager.encode(passages, "passage", s.batch_size, runtime),
        },
        s.repeats,
    )
    cases = [_case("torch_compile_encode", runs, "compiled", "eager", texts=len(passages), first_call_s=first)]

    students = {k: BiEncoder.load(ctx.student, passage_max_length=s.passage_max_length).train() for k in ("eager", "compiled")}
    students["compiled"].backbone = torch.compile(students["compiled"].backbone, dynamic=True)

    def step(model: BiEncoder) -> Callable[[], None]:
        def run() -> None:
            model.zero_grad(set_to_none=True)
            model(batch, "passage").square().sum().backward()

        return run

    first = timed(step(students["compiled"]))
    runs = _alternate({k: step(m) for k, m in students.items()}, s.repeats)
    cases.append(_case("torch_compile_train_step", runs, "compiled", "eager", texts=len(batch), first_call_s=first))
    return cases


def run(ctx: Context) -> dict:
    load_before = load_average()
    cases = encode_cases(ctx) + [dropout_case(ctx)]
    if ctx.mode == "full":
        cases += compile_cases(ctx)
    return {
        "benchmark": "ablation",
        "settings": {
            "bi_encoder": str(ctx.bi_encoder),
            "student": str(ctx.student),
            "batch_size": ctx.sizes.batch_size,
            "passage_max_length": ctx.sizes.passage_max_length,
            "texts": ctx.sizes.precision_texts,
            "repeats": ctx.sizes.repeats,
            "torch_compile": ctx.mode == "full",
        },
        "cases": cases,
        "load_average": [load_before, load_average()],
        "notes": [
            "speedup = median seconds with the technique off / on (above 1: the technique pays)",
            "torch.compile runs in full mode only (a minute of compilation on 2 cores)",
        ],
    }
