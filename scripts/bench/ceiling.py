"""Benchmark 5: the ceiling. The machine's fp32 matrix-multiply rate and the fraction of it the
encoders reach.

* matmul: ``torch.matmul`` of two fp32 [n, n] matrices, 2·n³ FLOPs each, median of repeats.
* encoder forward (inference, ``torch.inference_mode``): the bi-encoder on a full batch of
  passages at ``passage_max_length`` tokens; FLOPs estimated as 2 · P · tokens.
* student forward + backward (training): the 2-layer student on the same batch; 6 · P · tokens.

P counts the parameters that take part in matrix products, the token-embedding table left out
(it is a lookup); attention's score and value products (about 4 · layers · L · hidden per token)
are not in the estimate, so the fraction slightly understates the work done.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from bench.common import Context


def matmul_gflops(n: int, repeats: int) -> float:
    """Median GFLOP/s of an fp32 [n, n] @ [n, n] product."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.matmul(a, b)
    times = []
    for _ in range(max(repeats, 3)):
        start = time.perf_counter()
        torch.matmul(a, b)
        times.append(time.perf_counter() - start)
    return 2 * n**3 / float(np.median(times)) / 1e9


def matmul_params(backbone: torch.nn.Module) -> int:
    """Parameters of the backbone's linear layers (what 2·P·tokens counts)."""
    return sum(m.weight.numel() for m in backbone.modules() if isinstance(m, torch.nn.Linear))


def _encoder_rate(encoder, texts: list[str], train: bool, repeats: int) -> tuple[float, int]:
    """Median seconds of one forward (or forward + backward) over ``texts``, and the token count."""
    tokens = int(encoder.tokenize(texts, "passage")["attention_mask"].numel())
    times = []
    for r in range(max(repeats, 1) + 1):
        start = time.perf_counter()
        if train:
            encoder.train()
            encoder.zero_grad(set_to_none=True)
            encoder(texts, "passage").float().pow(2).sum().backward()
        else:
            with torch.inference_mode():
                encoder.eval()(texts, "passage")
        if r:  # the first call is a warm-up
            times.append(time.perf_counter() - start)
    return float(np.median(times)), tokens


def run(ctx: Context) -> dict:
    from distillrank.models.bi_encoder import BiEncoder

    s = ctx.sizes
    peak = matmul_gflops(s.matmul_n, s.repeats)
    texts = ctx.collection.passage_texts(range(min(s.batch_size, len(ctx.collection.corpus))))
    cases = [{"case": "matmul_fp32", "unit": "GFLOP/s", "values": {"n": s.matmul_n, "gflops": peak}}]
    for name, folder, train, factor in (
        ("bi_encoder_forward", ctx.bi_encoder, False, 2),
        ("student_forward_backward", ctx.student, True, 6),
    ):
        encoder = BiEncoder.load(folder, passage_max_length=s.passage_max_length)
        seconds, tokens = _encoder_rate(encoder, texts, train, s.repeats)
        params = matmul_params(encoder.backbone)
        gflops = factor * params * tokens / seconds / 1e9
        cases.append(
            {
                "case": name, "unit": "GFLOP/s",
                "values": {
                    "model": str(folder), "matmul_params": params, "batch": len(texts), "tokens": tokens,
                    "seconds": seconds, "gflops": gflops, "fraction_of_matmul": gflops / peak,
                },
            }
        )
    return {
        "benchmark": "ceiling",
        "settings": {"precision": "fp32", "torch_threads": torch.get_num_threads(), "repeats": s.repeats},
        "cases": cases,
        "notes": ["FLOPs: 2·P·tokens forward, 6·P·tokens forward+backward, P = linear-layer weights (embeddings and attention products not counted)"],
    }
