"""Changes to a frozen encoder's forward, tried against the matmul ceiling (issue 16, item 2) and
timed side by side with the forward the teachers and the mining encoder run.

The reference (``eager``) is MiniLM-L6 loaded as a frozen teacher is (in eval mode, without
gradients; under bf16 its linear weights stored in bf16 once, :mod:`distillrank.models.half_weights`),
run under the precision's autocast on the ceiling benchmark's batch (32 SciFact passages at
≤ 128 tokens). Each variant is the same model changed one way:

* ``fused_qkv``: each attention layer's query, key and value products as one product of the
  concatenated weights ([3·hidden, hidden]), attention over its three slices (one activation cast
  and one bias copy a layer instead of three);
* ``gelu_epilogue``: each intermediate layer's bias and GELU computed in the product's epilogue by
  oneDNN (``torch.ops.mkldnn._linear_pointwise``, the operator inductor fuses into) instead of the
  bias broadcast into the output, the product, then GELU over the output again;
* ``inductor_frozen``: the backbone compiled by inductor with its weights frozen into the graph
  (``torch.compile(dynamic=True, options={"freezing": True})``), the setting Intel recommends for
  CPU inference; the first call's seconds (the compile) are recorded apart (``--no-compile`` skips it).

Every variant is timed against ``eager`` in turn (the order flipping each round, so a machine whose
speed drifts slows both alike); the largest difference of its hidden states from ``eager``'s is
recorded. None was adopted: docs/BENCHMARKS.md ("Fused QKV, the GELU epilogue, inductor with frozen
weights") has the numbers and why.

    python scripts/bench/forward_variants.py --precision bf16 --out docs/bench/variants   # ~3 minutes

Writes ``<out>/forward_variants.json`` and ``<out>/forward_variants.md``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import types
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``bench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from bench.common import MINILM, REPO_ROOT, alternate, load_average, machine, machine_line, write_result  # noqa: E402

VARIANTS = ("fused_qkv", "gelu_epilogue", "inductor_frozen")


def _self_attentions(backbone: nn.Module) -> list[nn.Module]:
    """The attention modules with separate query / key / value linear layers (BERT and its kind)."""
    return [
        m for m in backbone.modules()
        if all(type(getattr(m, n, None)) is nn.Linear for n in ("query", "key", "value"))
        and hasattr(m, "attention_head_size")
    ]  # fmt: skip


def fuse_qkv(backbone: nn.Module) -> int:
    """Replace each self-attention's three products by one of the concatenated weights, in place;
    how many layers were changed. Inference only: the attention's dropout is not applied."""
    changed = 0
    for m in _self_attentions(backbone):
        q, k, v = m.query, m.key, m.value
        fused = nn.Linear(q.in_features, 3 * q.out_features, device=q.weight.device, dtype=q.weight.dtype)
        with torch.no_grad():
            fused.weight.copy_(torch.cat([q.weight, k.weight, v.weight]))
            fused.bias.copy_(torch.cat([q.bias, k.bias, v.bias]))
        fused.requires_grad_(False)
        m.qkv = fused
        del m.query, m.key, m.value

        def forward(self, hidden_states, attention_mask=None, *args, **kwargs):
            b, length, _ = hidden_states.shape
            heads = self.qkv.out_features // (3 * self.attention_head_size)
            qkv = self.qkv(hidden_states).view(b, length, 3, heads, self.attention_head_size).permute(2, 0, 3, 1, 4)
            out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], attn_mask=attention_mask, scale=self.scaling)
            return out.transpose(1, 2).reshape(b, length, -1), None

        m.forward = types.MethodType(forward, m)
        changed += 1
    return changed


def gelu_epilogue(backbone: nn.Module) -> int:
    """Compute each intermediate layer's bias and (exact) GELU in oneDNN's product epilogue, in
    place; how many layers were changed. Layers with bf16 weights stay as they are where oneDNN has
    no bf16 inner product (a CPU without AVX-512: ``_linear_pointwise`` fails there)."""
    changed = 0
    bf16_ok = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    for m in backbone.modules():
        dense, act = getattr(m, "dense", None), getattr(m, "intermediate_act_fn", None)
        if type(dense) is not nn.Linear or act is None or "GELU" not in type(act).__name__:
            continue
        if dense.weight.dtype == torch.bfloat16 and not bf16_ok:
            continue

        def forward(self, hidden_states):
            d = self.dense
            return torch.ops.mkldnn._linear_pointwise(hidden_states.to(d.weight.dtype), d.weight, d.bias, "gelu", [], "none")

        m.forward = types.MethodType(forward, m)
        changed += 1
    return changed


def _load(precision: str):
    from distillrank.models.bi_encoder import BiEncoder
    from distillrank.models.half_weights import frozen
    from distillrank.models.hub import resolve_model

    return frozen(BiEncoder.load(resolve_model(MINILM), passage_max_length=128), precision)


def run(precision: str, repeats: int, cache: Path, batch: int = 32, compile_: bool = True) -> dict[str, Any]:
    from bench.profile_encoder import _texts
    from distillrank.runtime import Runtime, autocast

    Runtime(precision="fp32").apply()  # the allocator's setting, as every stage runs
    texts = _texts(batch, cache)
    eager = _load(precision)
    inputs = eager.tokenize(texts, "passage")
    context = lambda: autocast(torch.device("cpu"), precision)  # noqa: E731

    def hidden(backbone) -> torch.Tensor:
        with torch.inference_mode(), context():
            return backbone(**inputs).last_hidden_state.float()

    def timed(backbone) -> float:
        start = time.perf_counter()
        hidden(backbone)
        return time.perf_counter() - start

    reference = hidden(eager.backbone)
    results: dict[str, Any] = {}
    for name in VARIANTS:
        if name == "inductor_frozen" and not compile_:
            continue
        model = _load(precision)
        extra: dict[str, Any] = {}
        if name == "fused_qkv":
            extra["layers_changed"] = fuse_qkv(model.backbone)
            backbone = model.backbone
        elif name == "gelu_epilogue":
            extra["layers_changed"] = gelu_epilogue(model.backbone)
            backbone = model.backbone
        else:
            backbone = torch.compile(model.backbone, dynamic=True, options={"freezing": True})
            start = time.perf_counter()
            hidden(backbone)
            extra["first_call_seconds"] = time.perf_counter() - start  # the compile
        diff = float((hidden(backbone) - reference).abs().max())
        times = alternate({"eager": lambda: timed(eager.backbone), name: lambda b=backbone: timed(b)}, repeats)
        pairs = [e / v for e, v in zip(times["eager"], times[name], strict=True)]
        results[name] = {
            "eager_ms": 1000 * statistics.median(times["eager"]),
            "variant_ms": 1000 * statistics.median(times[name]),
            "speedup": statistics.median(times["eager"]) / statistics.median(times[name]),
            "pairwise_speedups": pairs,
            "max_abs_diff": diff,
            "runs_s": times,
            **extra,
        }
    return {
        "benchmark": "forward_variants",
        "machine": machine(),
        "settings": {
            "precision": precision, "batch": batch, "max_length": 128, "repeats": repeats,
            "tokens": int(inputs["attention_mask"].numel()), "threads": torch.get_num_threads(),
        },  # fmt: skip
        "variants": results,
        "load_average": [load_average()],
    }


def markdown(r: dict[str, Any]) -> str:
    s = r["settings"]
    lines = [
        machine_line(r["machine"], r["load_average"][-1]),
        "",
        f"MiniLM-L6 forward, frozen as a teacher ({s['precision']}), on {s['batch']} SciFact passages at "
        f"≤ {s['max_length']} tokens, {s['threads']} threads; each variant against the reference in turn, "
        f"{s['repeats']} forwards each.",
        "",
        "| variant | reference ms | variant ms | speed-up (median of pairs) | largest difference of hidden states | notes |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for name, v in r["variants"].items():
        notes = (
            f"first call (compile) {v['first_call_seconds']:.1f} s" if "first_call_seconds" in v
            else f"{v['layers_changed']} layers changed"
        )  # fmt: skip
        lines.append(
            f"| {name} | {v['eager_ms']:.1f} | {v['variant_ms']:.1f} | **{v['speedup']:.2f}×** "
            f"({statistics.median(v['pairwise_speedups']):.2f}) | {v['max_abs_diff']:.2g} | {notes} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="bf16")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--no-compile", dest="compile_", action="store_false", help="skip inductor (~30 s of compiling)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "bench" / "variants")
    parser.add_argument(
        "--cache", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "distillrank-bench-cache"
    )
    args = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    result = run(args.precision, args.repeats, args.cache, args.batch, args.compile_)
    write_result(args.out, "forward_variants", result, markdown(result))
    return result


if __name__ == "__main__":
    main()
