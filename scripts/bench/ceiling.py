"""Benchmark 5: the ceiling. The machine's fp32 and bf16 matrix-multiply rates and the fraction of
each the encoders reach in that precision (issue 16: "of the fp32 matmul ceiling, or of the bf16
ceiling when bf16 is chosen" — ``hardware=auto`` chooses bf16 autocast on CPUs with bf16 units).

* matmul: the machine's matrix-product rate in each precision (fp32, then bf16): the best of
  ``torch.matmul`` of two [n, n] matrices (2·n³ FLOPs) and of the encoder's own linear layers'
  products (``F.linear`` of [tokens, in] by [out, in], 2·tokens·in·out FLOPs), each a median of
  repeats. With AMX the square bf16 product is not the fastest: the encoder's shapes (hidden 384
  → 1,536) ran at 2.1–2.8 TFLOP/s where 2048² gave 1.1–1.9 (Xeon-AMX-2), so a square-only
  ceiling would flatter the encoders.
* the ``_bf16`` encoder cases run under ``torch.autocast("cpu", torch.bfloat16)``, as
  ``hardware.precision=bf16`` runs them (``distillrank.runtime.autocast``), against the bf16
  matmul rate. They run only where ``hardware=auto`` would consider bf16: when its bf16 probe
  (:func:`distillrank.calibration.probe_bf16`, a linear of the encoder's width) runs at
  :data:`~distillrank.calibration.BF16_PROBE_MIN` of fp32's speed or more. On a CPU without bf16
  units bf16 is emulated (EPYC-2, AVX2 only: the probe 0.09-0.20x, the products 18-21 GFLOP/s, a
  2048² product so slow it read 0) and auto never chooses it; measuring it there took 29 of the
  ceiling's 30 minutes, for a fraction no goal uses. The ``matmul_bf16`` case then records the
  probe and why the bf16 cases were not run.
* encoder forward (inference, ``torch.inference_mode``): the bi-encoder on a full batch of
  passages at ``passage_max_length`` tokens as one forward; FLOPs estimated as 2 · P · tokens.
* encoder forward as the pipeline runs it (``bi_encoder_encode``): the same batch through
  ``BiEncoder.encode`` under ``hardware=cpu``'s runtime (conf/hardware/cpu.yaml, the case's
  precision), i.e. in forwards of at most ``max_forward_texts`` texts and ``max_forward_tokens``
  tokens each cut to its rows' padding (:func:`distillrank.models.batching.forward_pieces`), the
  way teachers and the mining encoder run on a CPU; tokenization included, as in the one-forward
  case. Its tokens are those the backbone was given (a hook counts them), and the matmul rate is
  measured at its forwards' rows too (``linear_gflops`` at both row counts), so that smaller,
  faster products do not flatter it.
* student forward + backward (training): the 2-layer student on the same batch; 6 · P · tokens;
  its dropout as the training loop runs it on CPU (``train.dropout_masks=fast``,
  :mod:`distillrank.models.dropout`).

P counts the parameters that take part in matrix products, the token-embedding table left out
(it is a lookup); attention's score and value products (about 4 · layers · L · hidden per token)
are not in the estimate, so the fraction slightly understates the work done.
"""

from __future__ import annotations

import contextlib
import time

import numpy as np
import torch

from bench.common import Context, distillrank_runtime
from distillrank.calibration import Probe, probe_bf16


def _median_seconds(call, repeats: int) -> float:
    """Median seconds of ``call()`` after 3 warm-up calls (AMX units, like caches, start slow); a
    median of 10 at least, as short products move (3 gave 662-1,824 GFLOP/s bf16 on AMX)."""
    for _ in range(3):
        call()
    times = []
    for _ in range(max(repeats, 10)):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def matmul_gflops(n: int, repeats: int, dtype: torch.dtype = torch.float32) -> float:
    """Median GFLOP/s of an [n, n] @ [n, n] product in ``dtype``."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    return 2 * n**3 / _median_seconds(lambda: torch.matmul(a, b), repeats) / 1e9


def linear_shapes(backbone: torch.nn.Module) -> list[tuple[int, int]]:
    """The distinct (in, out) sizes of the backbone's linear layers."""
    return sorted({(m.in_features, m.out_features) for m in backbone.modules() if isinstance(m, torch.nn.Linear)})


def linear_gflops(tokens: int, shapes: list[tuple[int, int]], repeats: int, dtype: torch.dtype) -> dict[str, float]:
    """Median GFLOP/s of ``F.linear`` of [tokens, in] by [out, in] (+ bias) in ``dtype``, per shape."""
    rates = {}
    for fan_in, fan_out in shapes:
        x, w, b = torch.randn(tokens, fan_in).to(dtype), torch.randn(fan_out, fan_in).to(dtype), torch.randn(fan_out).to(dtype)
        seconds = _median_seconds(lambda x=x, w=w, b=b: torch.nn.functional.linear(x, w, b), repeats)
        rates[f"{tokens}x{fan_in}->{fan_out}"] = 2 * tokens * fan_in * fan_out / seconds / 1e9
    return rates


def matmul_params(backbone: torch.nn.Module) -> int:
    """Parameters of the backbone's linear layers (what 2·P·tokens counts)."""
    return sum(m.weight.numel() for m in backbone.modules() if isinstance(m, torch.nn.Linear))


def _encoder_rate(encoder, texts: list[str], train: bool, repeats: int, runtime=None) -> tuple[float, list[int]]:
    """Median seconds of one forward (or forward + backward) over ``texts``, and the tokens of
    each forward; with ``runtime``, of ``encoder.encode`` under it instead (inference: the forwards
    the pipeline runs), and the tokens its backbone was given in each."""
    if runtime is not None:
        given = pipeline_forwards(encoder, texts, runtime)
    else:
        given = [int(encoder.tokenize(texts, "passage")["attention_mask"].numel())]
    times = []
    for r in range(max(repeats, 5) + 1):  # a median of 5 at least: quick's 2 moved fractions by 2x
        start = time.perf_counter()
        if runtime is not None:
            encoder.encode(texts, "passage", batch_size=len(texts), runtime=runtime)
        elif train:
            encoder.train()
            encoder.zero_grad(set_to_none=True)
            out = encoder(texts, "passage")
            with torch.autocast("cpu", enabled=False):  # the backward outside autocast, as training runs it
                out.float().pow(2).sum().backward()
        else:
            with torch.inference_mode():
                encoder.eval()(texts, "passage")
        if r:  # the first call is a warm-up
            times.append(time.perf_counter() - start)
    return float(np.median(times)), given


def pipeline_forwards(encoder, texts: list[str], runtime) -> list[int]:
    """The tokens (rows × padded length) of each forward ``encoder.encode(texts)`` gives its
    backbone under ``runtime``, counted by a hook on the backbone."""
    given: list[int] = []
    hook = encoder.backbone.register_forward_pre_hook(
        lambda _module, _args, kwargs: given.append(int(kwargs["input_ids"].numel())), with_kwargs=True
    )
    try:
        encoder.encode(texts, "passage", batch_size=len(texts), runtime=runtime)
    finally:
        hook.remove()
    return given


def run(ctx: Context) -> dict:
    from distillrank.models.bi_encoder import BiEncoder

    s = ctx.sizes
    texts = ctx.collection.passage_texts(range(min(s.batch_size, len(ctx.collection.corpus))))
    encoder = BiEncoder.load(ctx.bi_encoder, passage_max_length=s.passage_max_length)
    tokens = int(encoder.tokenize(texts, "passage")["attention_mask"].numel())
    # the products at the one forward's rows and at the largest of the pipeline's forwards' rows
    rows = sorted({tokens, max(pipeline_forwards(encoder, texts, distillrank_runtime("cpu")))})
    shapes = linear_shapes(encoder.backbone)
    cases = []
    probe = bf16_probe(encoder.backbone.config.hidden_size)
    precisions = [("fp32", torch.float32)] + ([("bf16", torch.bfloat16)] if probe.pays else [])
    for precision, dtype in precisions:  # as auto decides: emulated bf16 is neither chosen nor measured
        # the products measured before and after the encoder cases, the best of each kept: a
        # machine whose rate drifts (Xeon-AMX-2: fp32 178-315, bf16 740-2,190 GFLOP/s within an
        # hour) must not pass a slow spell of the ceiling off as the encoders' efficiency
        def rates(dtype=dtype) -> tuple[float, dict[str, float]]:
            by_rows = [linear_gflops(n, shapes, s.repeats, dtype) for n in rows]
            return matmul_gflops(s.matmul_n, s.repeats, dtype), {k: v for r in by_rows for k, v in r.items()}

        before = rates()
        encoders = _encoder_cases(ctx, texts, precision)
        after = rates()
        square = max(before[0], after[0])
        by_shape = {k: max(before[1][k], after[1][k]) for k in before[1]}
        peak = max(square, *by_shape.values())
        values = {
            "n": s.matmul_n, "gflops": peak, "square_gflops": square, "linear_gflops": by_shape,
            "square_gflops_before_after": [before[0], after[0]],
        }  # fmt: skip
        cases.append({"case": f"matmul_{precision}", "unit": "GFLOP/s", "values": values})
        for case in encoders:
            case["values"]["fraction_of_matmul"] = case["values"]["gflops"] / peak
        cases += encoders
    if not probe.pays:
        cases.append(skipped_bf16(probe))
    return {
        "benchmark": "ceiling",
        "settings": {"precision": "fp32, then bf16 autocast (the _bf16 cases) where the bf16 probe lets auto consider it", "torch_threads": torch.get_num_threads(), "repeats": s.repeats, "bf16_probe": probe.as_dict()},
        "cases": cases,
        "notes": [
            "FLOPs: 2·P·tokens forward, 6·P·tokens forward+backward, P = linear-layer weights (embeddings and attention products not counted); each encoder case's fraction is of the matmul rate of its own precision",
            "the matmul rate (gflops) is the best of the square product (square_gflops) and the encoder's linear layers' products (linear_gflops, at the one forward's rows and at the pipeline's forwards' rows), each measured before and after the encoder cases",
            "bi_encoder_encode: the same batch through BiEncoder.encode under hardware=cpu's runtime (its forward caps; the case's precision), tokenization included; tokens: those its backbone was given",
            "forward + backward trains as the training loop does: on CPU, dropout's masks drawn 16 bits at a time (train.dropout_masks=fast)",
            "the forward runs the encoder frozen, as teachers and the mining encoder run: under bf16 its linear weights stored in bf16 once (models.half_weights)",
        ],
    }


def bf16_probe(hidden: int) -> Probe:
    """``hardware=auto``'s bf16 probe for an encoder of width ``hidden`` (inference)."""
    return probe_bf16(hidden)


def skipped_bf16(probe: Probe) -> dict:
    """The ``matmul_bf16`` case of a CPU whose bf16 probe says bf16 is emulated: no rate, the
    probe, and why no bf16 case ran."""
    reason = f"{probe.verdict()}: emulated on this CPU, never chosen by hardware=auto; the bf16 cases were not run"
    return {"case": "matmul_bf16", "unit": "GFLOP/s", "values": {"gflops": None, "skipped": reason, "probe": probe.as_dict()}}


def _encoder_cases(ctx: Context, texts: list[str], precision: str) -> list[dict]:
    """The encoder forward and the student's forward + backward under ``precision``'s autocast
    (``hardware.precision``'s); :func:`run` adds each one's fraction of that precision's matmul rate."""
    from distillrank.models.bi_encoder import BiEncoder
    from distillrank.models.dropout import cpu_dropout
    from distillrank.models.half_weights import frozen
    from distillrank.runtime import autocast

    s = ctx.sizes
    suffix = "" if precision == "fp32" else f"_{precision}"
    cases = []
    for name, folder, train, factor in (
        ("bi_encoder_forward", ctx.bi_encoder, False, 2),
        ("bi_encoder_encode", ctx.bi_encoder, False, 2),
        ("student_forward_backward", ctx.student, True, 6),
    ):
        encoder = BiEncoder.load(folder, passage_max_length=s.passage_max_length)
        if not train:  # a frozen encoder, as the teachers and the mining encoder load it for this precision
            frozen(encoder, precision)
        masks = cpu_dropout(encoder) if train else contextlib.nullcontext()  # as the training loop trains
        runtime = distillrank_runtime("cpu", precision) if name == "bi_encoder_encode" else None
        if runtime is not None:  # encode applies the runtime's autocast itself
            seconds, forwards = _encoder_rate(encoder, texts, train, s.repeats, runtime)
        else:
            with autocast(torch.device("cpu"), precision), masks:
                seconds, forwards = _encoder_rate(encoder, texts, train, s.repeats)
        params = matmul_params(encoder.backbone)
        tokens = sum(forwards)
        gflops = factor * params * tokens / seconds / 1e9
        values = {
            "model": str(folder), "matmul_params": params, "batch": len(texts), "tokens": tokens,
            "seconds": seconds, "gflops": gflops,
        }  # fmt: skip
        if runtime is not None:
            values["forward_tokens"] = forwards
            values["runtime"] = {"option": "cpu", "precision": precision, "max_forward_texts": runtime.max_forward_texts,
                                 "max_forward_tokens": runtime.max_forward_tokens}  # fmt: skip
        cases.append({"case": name + suffix, "unit": "GFLOP/s", "values": values})
    return cases
