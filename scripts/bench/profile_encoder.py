"""Where an encoder's time goes below the matmul ceiling (issue 16, item 2): ``torch.profiler`` over
the bench's MiniLM bi-encoder forward (inference) and its 2-layer student's forward + backward, on
the same batch of SciFact passages as the ceiling benchmark (``scripts/bench/ceiling.py``).

The profiler's self CPU time per operator is grouped into what it does — the linear layers' matrix
products, attention (SDPA and its softmax / score products), layer norm, GELU, embeddings,
element-wise arithmetic, copies and layout changes, the optimizer — and each group's share of the
step is reported with, for the matrix products, the GFLOP/s they reach against the machine's own
matrix-product rate (the best of a square product and the encoder's own linear-layer products,
as ``scripts/bench/ceiling.py`` measures it): a fraction well below 1 there means small GEMMs, a large share elsewhere means
the time is outside the GEMMs. Tokenization is timed apart (it runs before the model).

Then a few settings are timed side by side (median of ``--repeats`` alternating runs), each
against the default: padding to the batch's longest passage (the default) against length-sorted
micro-batches; SDPA against the eager ("math") attention; 1 thread against all; dropout's masks
drawn 16 bits at a time (``train.dropout_masks=fast``, how the training step is profiled) against
``nn.Dropout``'s; AdamW's ``foreach`` against ``fused``. A setting the loop or encoder can adopt is one that is faster here with the same
output.

    python scripts/bench/profile_encoder.py                       # batch 32, 128 tokens
    python scripts/bench/profile_encoder.py --batch 64 --max-length 256 --out /tmp/profile

Writes ``<out>/profile_encoder.json`` and ``<out>/profile_encoder.md`` (``--out`` defaults to
``docs/bench/profile``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

if __package__ in (None, ""):  # run as a script: make ``bench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.ceiling import linear_gflops, linear_shapes, matmul_gflops, matmul_params  # noqa: E402
from bench.common import MINILM, REPO_ROOT, load_average, machine, machine_line, write_result  # noqa: E402

# operator name (profiler key, lower case) -> group; the first pattern found in the name wins
# ("=name": the whole name, so that aten::t is not aten::to)
GROUPS: list[tuple[str, tuple[str, ...]]] = [
    ("optimizer", ("adam", "_foreach", "optimizer")),
    ("attention", ("scaled_dot_product", "flash_attention", "softmax", "bmm", "baddbmm", "masked_fill")),
    ("matmul (linear layers)", ("addmm", "=aten::mm", "=aten::linear", "matmul", "=aten::t", "mkldnn_linear")),
    ("layer norm", ("layer_norm",)),
    ("gelu", ("gelu",)),
    ("embedding", ("embedding",)),
    ("dropout", ("dropout", "bernoulli", "=aten::random_")),  # random_: the fast masks' draws
    ("copies and layout", ("copy_", "contiguous", "clone", "view", "reshape", "transpose", "permute",
                           "expand", "to", "cat", "stack", "empty", "zeros", "fill_", "select", "slice",
                           "index", "unsqueeze", "squeeze")),
    ("element-wise", ("add", "mul", "div", "sub", "pow", "sum", "mean", "neg", "rsub", "sqrt", "norm",
                      "where", "tanh", "exp", "clamp", "max", "min")),
]  # fmt: skip


def group_of(name: str) -> str:
    low = name.lower()
    for group, patterns in GROUPS:
        if any(low == p[1:] if p.startswith("=") else p in low for p in patterns):
            return group
    return "other"


def _minilm_student(cache: Path, layers: int, max_length: int) -> Path:
    from distillrank.models.bi_encoder import BiEncoder

    folder = cache / f"minilm-l{layers}-student"
    if not (folder / "config.json").is_file():
        student = BiEncoder.from_backbone(MINILM, num_layers=layers, passage_max_length=max_length)
        student.backbone.config.num_hidden_layers = layers
        student.save(folder)
    return folder


def _texts(n: int, cache: Path) -> list[str]:
    """The first ``n`` SciFact passages, as the ceiling benchmark takes them."""
    from types import SimpleNamespace

    from bench.assets import data_root
    from distillrank.data import load_collection

    data = SimpleNamespace(
        name="scifact",
        source="beir",
        path=str(data_root() / "scifact"),
        train_split="train",
        test_split="test",
    )
    collection = load_collection(data, cache)
    return collection.passage_texts(range(min(n, len(collection.corpus))))


def _step(encoder, texts: list[str], train: bool, optimizer=None, masks: str = "fast") -> None:
    """One forward (inference), or forward + backward (+ optimizer step) trained as the training
    loop trains: on CPU with ``masks="fast"`` (``train.dropout_masks``' default), dropout's masks
    drawn 16 bits at a time (:func:`distillrank.models.dropout.for_training`)."""
    if train:
        from distillrank.models.dropout import for_training

        with for_training(encoder, masks, torch.device("cpu")):
            encoder.train()
            encoder.zero_grad(set_to_none=True)
            out = encoder(texts, "passage")
            # the backward outside autocast, as the training loop runs it (under autocast, the
            # backward's products would be cast again: bf16 copies of fp32 tensors, 8% of a step)
            with torch.autocast("cpu", enabled=False):
                out.float().pow(2).sum().backward()
                if optimizer is not None:
                    optimizer.step()
    else:
        with torch.inference_mode():
            encoder.eval()(texts, "passage")


def profile_step(
    encoder, texts: list[str], train: bool, repeats: int, optimizer=None, masks: str = "fast"
) -> dict[str, Any]:
    """Self CPU time per group over ``repeats`` profiled steps (after a warm-up), and the linear
    layers' achieved GFLOP/s."""
    from torch.profiler import ProfilerActivity, profile

    _step(encoder, texts, train, optimizer, masks)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(repeats):
            _step(encoder, texts, train, optimizer, masks)
    by_group: dict[str, float] = defaultdict(float)
    by_op: dict[str, float] = defaultdict(float)
    for evt in prof.key_averages():
        us = evt.self_cpu_time_total
        by_group[group_of(evt.key)] += us
        by_op[evt.key] += us
    total = sum(by_group.values())
    return {
        "step_ms": total / repeats / 1e3,
        "groups": {g: {"ms": v / repeats / 1e3, "share": v / total} for g, v in sorted(by_group.items(), key=lambda kv: -kv[1])},
        "top_ops": [{"op": k, "ms": v / repeats / 1e3, "share": v / total} for k, v in sorted(by_op.items(), key=lambda kv: -kv[1])[:12]],
        "ops": sorted(by_op),
    }  # fmt: skip


def median_seconds(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def alternate(runs: dict[str, Any], repeats: int) -> dict[str, float]:
    """Median seconds of each run, the runs alternating (after one warm-up call each)."""
    for fn in runs.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {k: float(np.median(v)) for k, v in times.items()}


def sorted_batches(encoder, texts: list[str], size: int):
    """The step over ``texts`` in micro-batches of ``size`` sorted by length (less padding)."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    parts = [[texts[i] for i in order[k : k + size]] for k in range(0, len(texts), size)]

    def run() -> None:
        with torch.inference_mode():
            encoder.eval()
            for part in parts:
                encoder(part, "passage")

    return run


def run(
    batch: int, max_length: int, repeats: int, cache: Path, compile_too: bool = False, precision: str = "fp32"
) -> dict[str, Any]:
    """The profile and the side-by-side settings; with ``precision="bf16"`` every model call runs
    under the bf16 autocast ``hardware.precision=bf16`` uses, against the bf16 matmul rate."""
    from distillrank.runtime import autocast

    with autocast(torch.device("cpu"), precision):
        return _run(batch, max_length, repeats, cache, compile_too, precision)


def _run(batch: int, max_length: int, repeats: int, cache: Path, compile_too: bool, precision: str) -> dict[str, Any]:
    from distillrank.models.bi_encoder import BiEncoder
    from distillrank.models.hub import resolve_model

    host = machine()
    texts = _texts(batch, cache)
    models = {
        "forward": (BiEncoder.load(resolve_model(MINILM), passage_max_length=max_length), False, 2),
        "forward_backward": (BiEncoder.load(_minilm_student(cache, 2, max_length), passage_max_length=max_length), True, 6),
    }  # fmt: skip
    fwd_model = models["forward"][0]
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    square = matmul_gflops(2048, 5, dtype)
    tokens_in_batch = int(fwd_model.tokenize(texts, "passage")["attention_mask"].numel())
    by_shape = linear_gflops(tokens_in_batch, linear_shapes(fwd_model.backbone), 5, dtype)
    peak = max(square, *by_shape.values())
    result: dict[str, Any] = {
        "benchmark": "profile_encoder",
        "machine": host,
        "settings": {"batch": batch, "max_length": max_length, "repeats": repeats, "threads": torch.get_num_threads(), "precision": precision},
        "matmul_gflops": peak,
        "matmul_square_gflops": square,
        "matmul_linear_gflops": by_shape,
        "cases": {},
    }  # fmt: skip
    for name, (encoder, train, factor) in models.items():
        enc = encoder.tokenize(texts, "passage")
        mask = enc["attention_mask"]
        tokens, real = int(mask.numel()), int(mask.sum())
        tokenize_s = median_seconds(lambda enc=encoder: enc.tokenize(texts, "passage"), repeats)
        step_s = median_seconds(lambda enc=encoder, t=train: _step(enc, texts, t), repeats)
        prof = profile_step(encoder, texts, train, repeats)
        params = matmul_params(encoder.backbone)
        mm = prof["groups"].get("matmul (linear layers)", {"ms": float("nan")})["ms"] / 1e3
        flops = factor * params * tokens
        result["cases"][name] = {
            "layers": encoder.backbone.config.num_hidden_layers,
            "tokens": tokens,
            "padding_share": 1 - real / tokens,
            "tokenize_s": tokenize_s,
            "step_s": step_s,
            "fraction_of_matmul": flops / step_s / 1e9 / peak,
            "linear_gflops": flops / mm / 1e9 if mm > 0 else None,
            "linear_fraction_of_matmul": flops / mm / 1e9 / peak if mm > 0 else None,
            "profile": prof,
        }
    # settings side by side
    fwd = models["forward"][0]
    student = models["forward_backward"][0]
    settings: dict[str, Any] = {}
    settings["padding"] = alternate(
        {
            "one batch (padded to its longest)": lambda: _step(fwd, texts, False),
            "length-sorted batches of 8": sorted_batches(fwd, texts, 8),
        },
        repeats,
    )
    eager = BiEncoder.load(resolve_model(MINILM), passage_max_length=max_length)
    if hasattr(eager.backbone, "set_attn_implementation"):
        try:
            eager.backbone.set_attn_implementation("eager")
            settings["attention"] = alternate(
                {
                    "sdpa (default)": lambda: _step(fwd, texts, False),
                    "eager": lambda: _step(eager, texts, False),
                },
                repeats,
            )
        except (ValueError, NotImplementedError) as err:
            settings["attention"] = {"error": str(err)}
    threads = torch.get_num_threads()

    def one_thread() -> None:
        torch.set_num_threads(1)
        try:
            _step(fwd, texts, False)
        finally:
            torch.set_num_threads(threads)

    settings["threads"] = alternate(
        {f"{threads} threads": lambda: _step(fwd, texts, False), "1 thread": one_thread}, repeats
    )
    settings["dropout_masks"] = alternate(
        {
            "fast: 16 bits a draw (train.dropout_masks default)": lambda: _step(student, texts, True),
            "nn.Dropout (train.dropout_masks=torch)": lambda: _step(student, texts, True, masks="torch"),
        },
        repeats,
    )
    opts = {}
    for label, kwargs in (("AdamW foreach (torch's default)", {"foreach": True}), ("AdamW fused (the training loop's)", {"fused": True})):
        try:
            opt = torch.optim.AdamW(student.parameters(), lr=1e-6, **kwargs)
        except (RuntimeError, TypeError, ValueError) as err:
            opts[label] = f"unavailable: {err}"
            continue
        opts[label] = median_seconds(lambda o=opt: _opt_step(student, o), repeats)
    settings["optimizer_step"] = opts
    if compile_too:
        settings["torch.compile"] = compiled_side_by_side(fwd, student, texts, repeats)
    result["settings_side_by_side"] = settings
    result["load_average"] = [host["load_average"], load_average()]
    return result


def compiled_side_by_side(fwd, student, texts: list[str], repeats: int) -> dict[str, float]:
    """The forward and the student's forward + backward through ``torch.compile`` (inductor) of
    the encoder's ``embed`` against eager, alternating; and the first compiled call (the compile
    itself), which a run must win back before compiling pays."""
    out: dict[str, float] = {}
    for name, encoder, train in (("forward", fwd, False), ("forward_backward", student, True)):
        batch = encoder.tokenize(texts, "passage")
        compiled = torch.compile(encoder.embed)

        def step(embed, encoder=encoder, batch=batch, train=train) -> None:
            if train:
                encoder.train()
                encoder.zero_grad(set_to_none=True)
                out = embed(batch)
                with torch.autocast("cpu", enabled=False):  # as the training loop: backward outside autocast
                    out.float().pow(2).sum().backward()
            else:
                with torch.inference_mode():
                    encoder.eval()
                    embed(batch)

        start = time.perf_counter()
        step(compiled)
        out[f"{name}: first compiled call (compiling)"] = time.perf_counter() - start
        times = alternate({"eager": lambda e=encoder.embed: step(e), "compiled": lambda c=compiled: step(c)}, repeats)
        out[f"{name}: eager"], out[f"{name}: compiled"] = times["eager"], times["compiled"]
    return out


def _opt_step(model, optimizer) -> None:
    for p in model.parameters():
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    optimizer.step()


def markdown(r: dict[str, Any]) -> str:
    s = r["settings"]
    lines = [
        machine_line(r["machine"], r["load_average"][1]),
        "",
        f"Batch of {s['batch']} SciFact passages at ≤ {s['max_length']} tokens, {s['threads']} threads; "
        f"{s.get('precision', 'fp32')} matmul ceiling {r['matmul_gflops']:.0f} GFLOP/s (the best of 2048² "
        f"{r.get('matmul_square_gflops', r['matmul_gflops']):.0f} and the encoder's linear products "
        + ", ".join(f"{k} {g:.0f}" for k, g in r.get("matmul_linear_gflops", {}).items())
        + "; medians of 10)"
        + (" — every model call under bf16 autocast." if s.get("precision") == "bf16" else "."),
        "",
        "| case | layers | tokens (padding) | tokenize ms | step ms | fraction of ceiling | linear layers alone: GFLOP/s (fraction) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, c in r["cases"].items():
        lin = c["linear_gflops"]
        lines.append(
            f"| {name} | {c['layers']} | {c['tokens']:,} ({c['padding_share']:.0%}) | {c['tokenize_s'] * 1e3:.1f} | "
            f"{c['step_s'] * 1e3:.1f} | {c['fraction_of_matmul']:.0%} | "
            + (f"{lin:.0f} ({c['linear_fraction_of_matmul']:.0%}) |" if lin else "– |")
        )
    for name, c in r["cases"].items():
        lines += ["", f"Self CPU time by group, {name} (profiler, {c['profile']['step_ms']:.1f} ms a step profiled):", "",
                  "| group | ms a step | share |", "|---|---:|---:|"]  # fmt: skip
        for g, v in c["profile"]["groups"].items():
            lines.append(f"| {g} | {v['ms']:.1f} | {v['share']:.0%} |")
        lines += [
            "",
            "Top operators: "
            + ", ".join(f"`{o['op']}` {o['share']:.0%}" for o in c["profile"]["top_ops"][:8]),
        ]
    lines += ["", "Settings side by side (median seconds, alternating):", ""]
    for name, v in r["settings_side_by_side"].items():
        parts = [f"{k}: {x * 1e3:.1f} ms" if isinstance(x, float) else f"{k}: {x}" for k, x in v.items()]
        lines.append(f"- {name}: " + "; ".join(parts))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "bench" / "profile")
    parser.add_argument(
        "--cache", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "distillrank-bench-cache"
    )
    parser.add_argument(
        "--precision", choices=("fp32", "bf16"), default="fp32",
        help="bf16: the models under bf16 autocast (as hardware=auto chooses on CPUs with bf16 units), against the bf16 matmul",
    )  # fmt: skip
    parser.add_argument(
        "--compile", action="store_true", help="also time torch.compile (inductor) against eager (minutes: it compiles)"
    )
    args = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    result = run(args.batch, args.max_length, args.repeats, args.cache, compile_too=args.compile, precision=args.precision)
    write_result(args.out, "profile_encoder", result, markdown(result))
    return result


if __name__ == "__main__":
    main()
