"""Benchmark 1: teacher scoring throughput (pairs/s) on SciFact BM25 candidates.

Cases (every one scores the same pairs with both tools; the ratio is distillrank / ST):

* ``cross_encoder``: :class:`distillrank.teachers.CrossEncoderTeacher.score` vs
  ``sentence_transformers.CrossEncoder.predict``, same folder, batch size, pair truncation, fp32.
  ``cross_encoder_int8``: the same teacher under ``hardware.precision=int8`` (dynamic int8
  quantization, :mod:`distillrank.models.quantize`) against the same ST fp32 runs.
* ``bi_encoder``: :class:`distillrank.teachers.BiEncoderTeacher.score` vs ``SentenceTransformer.encode``
  of the distinct queries (max length ``query_max_length``) and distinct passages
  (``passage_max_length``) followed by the dot products of the pairs: the same work, each text
  encoded once. ``bi_encoder_int8``: our teacher in int8 against the same ST fp32 runs.
* mined candidates (``mined_*``): training queries × their first judged positive + 8 BM25 negatives
  (9 pairs per query, as the score stage sees them after mining). Our teacher receives the pairs as
  indices into the distinct texts (what the score stage passes) and encodes each text once. ST is
  run two ways: ``naive`` is the plain loop over pairs, ``encode(pair_queries)`` and
  ``encode(pair_passages)`` (every query encoded 9 times, a recurring passage every time it
  recurs); ``dedup`` is ST with the de-duplication written by hand (distinct texts encoded once,
  then indexed), which is the same work as ours.

int8 rows compare distillrank int8 with ST fp32: the user-facing comparison of what each tool does
out of the box. ST also offers an ONNX Runtime backend with int8 quantization
(``backend="onnx"`` and ``export_dynamic_quantized_onnx_model``; it needs ``optimum`` and
``onnxruntime``, the ``bench-onnx`` extra). When both are importable, the ``*_vs_st_onnx`` cases
compare against it, like for like: distillrank fp32 against ST ONNX fp32, and distillrank int8
against ST ONNX int8 (dynamic quantization for the CPU's instruction set, ``avx512_vnni`` or
``avx2``). Without them those cases are left out and the result says so.

distillrank's own ONNX Runtime backend (``hardware.backend=onnx``, :mod:`distillrank.models.onnx_runtime`)
adds the ``*_onnx`` cases when its packages are installed (the ``onnx`` extra, part of ``dev``):
distillrank ONNX fp32 against ST fp32 (PyTorch), and against ST ONNX fp32 when that is installed
too. Exported graphs are cached under ``<cache>/onnx``.

``cross_encoder_auto`` / ``bi_encoder_auto``: the teacher under ``hardware=auto`` (the default), the
headline of the scoring goal. :func:`bench.auto.calibrate_ranker` runs the calibration the score
stage runs, on this benchmark's teacher; the chosen runtime then scores the same pairs, timed as the
other arms; its fidelity against our fp32 (Spearman, top-1 unchanged, nDCG@10 on the SciFact test
judgements) decides, with the speed, whether the goal is met.

Both tools' scores are compared by Spearman correlation (sentence-transformers' cross-encoder
applies its activation, a monotone map, so the ranking is what must agree).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

from bench import auto
from bench.assets import bm25_candidates
from bench.common import Context, alternate, comparison, load_average, timed

GOAL = 1.5
MINED_NEGATIVES = 8
WARMUP_PAIRS = 32


def _agreement(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 3:
        return 1.0
    return float(spearmanr(a, b).statistic)


def mined_pairs(ctx: Context, n_queries: int) -> tuple[list[str], list[str], list[tuple[int, int]]]:
    """Training queries × (first judged positive + ``MINED_NEGATIVES`` BM25 negatives): distinct
    query texts, distinct passage texts, and (query index, passage index) pairs."""
    from distillrank.mining.bm25 import BM25Index

    coll = ctx.collection
    queries = coll.split_queries(coll_train_split(ctx))[:n_queries]
    index = BM25Index.build_or_load(coll, ctx.cache, progress=False)
    rows, _ = index.search([t for _, t in queries], MINED_NEGATIVES + 8, progress=False)
    doc_ids = coll.doc_ids()
    qrels = coll.qrels.get(coll_train_split(ctx), {})
    slot: dict[int, int] = {}
    pairs: list[tuple[int, int]] = []
    kept: list[str] = []
    for (qid, text), ranked in zip(queries, rows, strict=True):
        positives = [d for d, rel in qrels.get(qid, {}).items() if rel > 0]
        if not positives:
            continue
        qi = len(kept)
        kept.append(text)
        negatives = [int(r) for r in ranked if r >= 0 and doc_ids[int(r)] not in positives][:MINED_NEGATIVES]
        for r in [coll.doc_row(positives[0])] + negatives:
            pairs.append((qi, slot.setdefault(int(r), len(slot))))
    return kept, coll.passage_texts(list(slot)), pairs


def onnx_available() -> bool:
    """Whether sentence-transformers' ONNX backend can run here (``optimum`` and ``onnxruntime``)."""
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("onnxruntime", "optimum"))


def _quantization_config() -> str:
    """ST's dynamic int8 preset for this CPU: ``avx512_vnni`` where the CPU has it, else ``avx2``."""
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8")
    except OSError:
        flags = ""
    return "avx512_vnni" if "avx512_vnni" in flags else "avx2"


def st_onnx_models(ctx: Context, scratch: Path) -> dict:
    """sentence-transformers' ONNX models, fp32 and int8, of the bench's cross-encoder and bi-encoder
    (exported into copies under ``scratch``, so the cached model folders stay as they are)."""
    import shutil

    from sentence_transformers import CrossEncoder, SentenceTransformer, export_dynamic_quantized_onnx_model

    config = _quantization_config()
    int8_file = f"onnx/model_qint8_{config}.onnx"
    models = {"quantization_config": config}
    for kind, source, cls in (("cross_encoder", ctx.cross_encoder, CrossEncoder), ("bi_encoder", ctx.bi_encoder, SentenceTransformer)):
        folder = scratch / f"onnx-{kind}"
        if not folder.exists():
            shutil.copytree(source, folder)
        kwargs = {"max_length": ctx.sizes.ce_max_length} if kind == "cross_encoder" else {}
        fp32 = cls(str(folder), backend="onnx", device="cpu", **kwargs)
        fp32.save(str(folder))  # writes onnx/model.onnx beside the weights
        export_dynamic_quantized_onnx_model(fp32, config, str(folder), push_to_hub=False, create_pr=False)
        int8 = cls(str(folder), backend="onnx", device="cpu", model_kwargs={"file_name": int8_file}, **kwargs)
        models[kind] = {"fp32": fp32, "int8": int8}
    return models


def coll_train_split(ctx: Context) -> str:
    return "train" if "train" in ctx.collection.splits() else ctx.collection.splits()[0]


def run(ctx: Context) -> dict:
    import os

    from distillrank.models import onnx_runtime

    ours_onnx = not onnx_runtime.missing_packages()
    previous = os.environ.get(onnx_runtime.CACHE_ENV)
    os.environ.setdefault(onnx_runtime.CACHE_ENV, str(ctx.cache / "onnx"))  # exports kept with the bench's models
    try:
        return _run(ctx, ours_onnx)
    finally:
        if previous is None:
            os.environ.pop(onnx_runtime.CACHE_ENV, None)


def _runtime(backend: str, precision: str):
    """The runtime of an arm: ``hardware=cpu`` for PyTorch, ``cpu_onnx`` for ONNX, in ``precision``."""
    from bench.common import distillrank_runtime

    return distillrank_runtime("cpu_onnx" if backend == "onnx" else "cpu", precision)


def _run(ctx: Context, ours_onnx: bool) -> dict:
    from sentence_transformers import CrossEncoder, SentenceTransformer

    from distillrank.ranking import Pairs
    from distillrank.teachers import BiEncoderTeacher, CrossEncoderTeacher


    s = ctx.sizes
    bm25 = bm25_candidates(ctx, "test", s.score_queries, s.score_depth)
    queries, passages, pairs = bm25["queries"], bm25["passages"], bm25["pairs"]
    pair_q = np.array([q for q, _ in pairs], dtype=np.int64)
    pair_p = np.array([p for _, p in pairs], dtype=np.int64)
    n = len(pairs)
    w = min(WARMUP_PAIRS, n)
    cases = []
    out: dict[str, np.ndarray] = {}
    qrels = ctx.collection.qrels.get("test", {})

    def auto_fidelity(key: str) -> dict:
        """The auto arm's scores (``out[key]``) against fp32's, with both rankings' nDCG@10."""
        ndcg = {k: auto.ndcg_at_10(qrels, bm25["qids"], bm25["docids"], np.asarray(pairs), out[v]) for k, v in (("fp32", "fp32"), ("auto", key))}
        return auto.score_fidelity(out["fp32"], out[key], pair_q, ndcg)

    # ------------------------------------------------------------------ cross-encoder
    def ce_teacher() -> CrossEncoderTeacher:
        return CrossEncoderTeacher(str(ctx.cross_encoder), max_length=s.ce_max_length, batch_size=s.batch_size)

    ours_ce, ours_ce8 = ce_teacher(), ce_teacher()
    ours_ce.cross_encoder(_runtime("torch", "fp32"))
    ours_ce8.cross_encoder(_runtime("torch", "int8"))
    theirs_ce = CrossEncoder(str(ctx.cross_encoder), max_length=s.ce_max_length, device="cpu")
    text_pairs = [(queries[q], passages[p]) for q, p in pairs]

    def ce_ours(teacher, precision: str, key: str, m: int = n, backend: str = "torch") -> float:
        runtime = _runtime(backend, precision)
        scored = Pairs(queries, passages, pair_q[:m], pair_p[:m])
        t = timed(lambda: out.__setitem__(key, teacher.score_pairs(scored, runtime, progress=False)))
        return m / t

    def ce_theirs(m: int = n, model=theirs_ce, key: str = "st") -> float:
        t = timed(lambda: out.__setitem__(key, np.asarray(model.predict(text_pairs[:m], batch_size=s.batch_size, show_progress_bar=False))))
        return m / t

    ce_choice = auto.calibrate_ranker(ctx, ce_teacher())  # what the score stage's hardware=auto chooses
    ours_ce_auto = ce_teacher()
    onnx = st_onnx_models(ctx, ctx.scratch) if onnx_available() else None
    ce_runs = {
        "distillrank": lambda: ce_ours(ours_ce, "fp32", "fp32"),
        "distillrank_int8": lambda: ce_ours(ours_ce8, "int8", "int8"),
        "sentence_transformers": ce_theirs,
    }
    ce_warm = {
        "distillrank": lambda: ce_ours(ours_ce, "fp32", "fp32", w),
        "distillrank_int8": lambda: ce_ours(ours_ce8, "int8", "int8", w),
        "sentence_transformers": lambda: ce_theirs(w),
    }
    ce_runs[auto.TOOL] = lambda: ce_ours(ours_ce_auto, ce_choice["precision"], "auto", n, ce_choice["backend"])
    ce_warm[auto.TOOL] = lambda: ce_ours(ours_ce_auto, ce_choice["precision"], "auto", w, ce_choice["backend"])
    if ours_onnx:
        ours_ce_onnx = ce_teacher()
        ce_runs["distillrank_onnx"] = lambda: ce_ours(ours_ce_onnx, "fp32", "onnx", n, "onnx")
        ce_warm["distillrank_onnx"] = lambda: ce_ours(ours_ce_onnx, "fp32", "onnx", w, "onnx")  # exports once
    if onnx:
        for p in ("fp32", "int8"):
            model = onnx["cross_encoder"][p]
            ce_runs[f"st_onnx_{p}"] = lambda model=model, p=p: ce_theirs(n, model, f"st_onnx_{p}")
            ce_warm[f"st_onnx_{p}"] = lambda model=model, p=p: ce_theirs(w, model, f"st_onnx_{p}")
    load_before = load_average()
    rates = alternate(ce_runs, s.repeats, warmup=ce_warm)
    load = [load_before, load_average()]
    st = rates["sentence_transformers"]
    cases.append(
        auto.auto_case(
            "cross_encoder_auto", "pairs/s", rates[auto.TOOL], st, GOAL, ce_choice, auto_fidelity("auto"),
            "teacher scoring (cross-encoder)", spearman=_agreement(out["auto"], out["st"]), load_average=load,
        )
    )
    cases.append(comparison("cross_encoder", "pairs/s", rates["distillrank"], st, GOAL, precision="fp32", spearman=_agreement(out["fp32"], out["st"]), load_average=load))
    cases.append(
        comparison(
            "cross_encoder_int8", "pairs/s", rates["distillrank_int8"], st, GOAL, precision="distillrank int8, sentence-transformers fp32",
            spearman=_agreement(out["int8"], out["st"]), spearman_vs_own_fp32=_agreement(out["int8"], out["fp32"]), load_average=load,
        )
    )
    if ours_onnx:
        cases.append(
            comparison(
                "cross_encoder_onnx", "pairs/s", rates["distillrank_onnx"], st, GOAL, precision="fp32, distillrank ONNX Runtime",
                spearman=_agreement(out["onnx"], out["st"]), max_abs_diff_vs_own_torch=float(np.max(np.abs(out["onnx"] - out["fp32"]))),
                load_average=load,
            )
        )
        if onnx:
            cases.append(
                comparison(
                    "cross_encoder_onnx_vs_st_onnx", "pairs/s", rates["distillrank_onnx"], rates["st_onnx_fp32"], GOAL,
                    precision="fp32, both ONNX Runtime", spearman=_agreement(out["onnx"], out["st_onnx_fp32"]), load_average=load,
                )
            )
    if onnx:
        for p, ours_key in (("fp32", "distillrank"), ("int8", "distillrank_int8")):
            cases.append(
                comparison(
                    f"cross_encoder{'_int8' if p == 'int8' else ''}_vs_st_onnx", "pairs/s", rates[ours_key], rates[f"st_onnx_{p}"], GOAL,
                    precision=f"{p} vs ST ONNX {p}", spearman=_agreement(out[p], out[f"st_onnx_{p}"]), load_average=load,
                )
            )

    # ------------------------------------------------------------------ bi-encoder
    def bi_teacher() -> BiEncoderTeacher:
        return BiEncoderTeacher(
            str(ctx.bi_encoder), query_max_length=s.query_max_length, passage_max_length=s.passage_max_length,
            batch_size=s.batch_size,
        )

    ours_bi, ours_bi8 = bi_teacher(), bi_teacher()
    ours_bi.encoder(_runtime("torch", "fp32"))
    ours_bi8.encoder(_runtime("torch", "int8"))
    theirs_bi = SentenceTransformer(str(ctx.bi_encoder), device="cpu")

    def st_encode(texts: list[str], max_length: int, model=theirs_bi) -> torch.Tensor:
        model.max_seq_length = max_length
        return model.encode(texts, batch_size=s.batch_size, convert_to_tensor=True, show_progress_bar=False)

    def st_dedup(qs: list[str], ps: list[str], pq: np.ndarray, pp: np.ndarray, model=theirs_bi) -> np.ndarray:
        """ST with de-duplication by hand: each distinct text once, then the pairs' dot products."""
        q, p = st_encode(qs, s.query_max_length, model), st_encode(ps, s.passage_max_length, model)
        return (q[torch.as_tensor(pq)] * p[torch.as_tensor(pp)]).sum(-1).numpy()

    def st_naive(qs: list[str], ps: list[str], pq: np.ndarray, pp: np.ndarray) -> np.ndarray:
        """ST's plain loop over pairs: the pair lists' texts encoded as they come."""
        q = st_encode([qs[i] for i in pq], s.query_max_length)
        p = st_encode([ps[i] for i in pp], s.passage_max_length)
        return (q * p).sum(-1).numpy()

    ours_bi_onnx = bi_teacher()
    bi_choice = auto.calibrate_ranker(ctx, bi_teacher())  # what the score stage's hardware=auto chooses
    ours_bi_auto = bi_teacher()

    def bi_case(
        name: str, qs: list[str], ps: list[str], pq: np.ndarray, pp: np.ndarray, st_ways: dict, with_onnx: bool = False,
        with_auto: bool = False,
    ) -> None:
        m = len(pq)
        wq, wp = pq[: min(WARMUP_PAIRS, m)], pp[: min(WARMUP_PAIRS, m)]

        def ours(teacher, precision: str, key: str, a: np.ndarray = pq, b: np.ndarray = pp, backend: str = "torch") -> float:
            runtime = _runtime(backend, precision)
            scored = Pairs(qs, ps, a, b)
            t = timed(lambda: out.__setitem__(key, teacher.score_pairs(scored, runtime, progress=False)))
            return len(a) / t

        def theirs(fn, key: str, a: np.ndarray = pq, b: np.ndarray = pp) -> float:
            t = timed(lambda: out.__setitem__(key, fn(qs, ps, a, b)))
            return len(a) / t

        runs = {"distillrank": lambda: ours(ours_bi, "fp32", "fp32"), "distillrank_int8": lambda: ours(ours_bi8, "int8", "int8")}
        warm = {
            "distillrank": lambda: ours(ours_bi, "fp32", "fp32", wq, wp),
            "distillrank_int8": lambda: ours(ours_bi8, "int8", "int8", wq, wp),
        }
        if with_onnx:
            runs["distillrank_onnx"] = lambda: ours(ours_bi_onnx, "fp32", "onnx", backend="onnx")
            warm["distillrank_onnx"] = lambda: ours(ours_bi_onnx, "fp32", "onnx", wq, wp, backend="onnx")
        if with_auto:
            p, b = bi_choice["precision"], bi_choice["backend"]
            runs[auto.TOOL] = lambda: ours(ours_bi_auto, p, "auto", backend=b)
            warm[auto.TOOL] = lambda: ours(ours_bi_auto, p, "auto", wq, wp, backend=b)
        for way, fn in st_ways.items():
            runs[way] = lambda fn=fn, way=way: theirs(fn, way)
            warm[way] = lambda fn=fn, way=way: theirs(fn, way, wq, wp)
        load_before = load_average()
        rates = alternate(runs, s.repeats, warmup=warm)
        load = [load_before, load_average()]
        if with_auto:
            cases.append(
                auto.auto_case(
                    f"{name}_auto", "pairs/s", rates[auto.TOOL], rates["sentence_transformers"], GOAL, bi_choice,
                    auto_fidelity("auto"), "teacher scoring (bi-encoder)",
                    spearman=_agreement(out["auto"], out["sentence_transformers"]),
                    max_abs_diff=float(np.max(np.abs(out["auto"] - out["sentence_transformers"]))) if m else 0.0,
                    load_average=load,
                )
            )
        if with_onnx:
            for way in [k for k in st_ways if k in ("sentence_transformers", "st_onnx_fp32")]:
                cases.append(
                    comparison(
                        f"{name}_onnx" + ("_vs_st_onnx" if way == "st_onnx_fp32" else ""), "pairs/s", rates["distillrank_onnx"], rates[way], GOAL,
                        precision="fp32, both ONNX Runtime" if way == "st_onnx_fp32" else "fp32, distillrank ONNX Runtime",
                        spearman=_agreement(out["onnx"], out[way]),
                        max_abs_diff=float(np.max(np.abs(out["onnx"] - out[way]))) if m else 0.0,
                        load_average=load,
                    )
                )
        for way in st_ways:
            if way.startswith("st_onnx_"):  # like for like: our fp32 / int8 against ST ONNX fp32 / int8
                p = way.removeprefix("st_onnx_")
                ours_key = "distillrank" if p == "fp32" else "distillrank_int8"
                cases.append(
                    comparison(
                        f"{name}{'_int8' if p == 'int8' else ''}_vs_st_onnx", "pairs/s", rates[ours_key], rates[way], GOAL,
                        precision=f"{p} vs ST ONNX {p}", spearman=_agreement(out[p], out[way]), load_average=load,
                    )
                )
                continue
            suffix = "" if len([k for k in st_ways if not k.startswith("st_onnx_")]) == 1 else f"_vs_st_{way.removeprefix('st_')}"
            for ours_key, label, prec in (("distillrank", "", "fp32"), ("distillrank_int8", "_int8", "distillrank int8, sentence-transformers fp32")):
                out_key = "fp32" if ours_key == "distillrank" else "int8"
                cases.append(
                    comparison(
                        f"{name}{label}{suffix}", "pairs/s", rates[ours_key], rates[way], GOAL, precision=prec,
                        spearman=_agreement(out[out_key], out[way]),
                        max_abs_diff=float(np.max(np.abs(out[out_key] - out[way]))) if m else 0.0,
                        load_average=load,
                        **({"st_way": way} if len(st_ways) > 1 else {}),
                    )
                )

    bi_ways = {"sentence_transformers": st_dedup}
    if onnx:
        for p in ("fp32", "int8"):
            bi_ways[f"st_onnx_{p}"] = lambda qs, ps, pq, pp, model=onnx["bi_encoder"][p]: st_dedup(qs, ps, pq, pp, model)
    bi_case("bi_encoder", queries, passages, pair_q, pair_p, bi_ways, with_onnx=ours_onnx, with_auto=True)

    mq, mp, mpairs = mined_pairs(ctx, s.mined_queries)
    m_q = np.array([q for q, _ in mpairs], dtype=np.int64)
    m_p = np.array([p for _, p in mpairs], dtype=np.int64)
    bi_case("mined_bi_encoder", mq, mp, m_q, m_p, {"st_naive": st_naive, "st_dedup": st_dedup})

    return {
        "benchmark": "scoring",
        "settings": {
            "pairs": n,
            "distinct_queries": len(queries),
            "distinct_passages": len(passages),
            "bm25_depth": s.score_depth,
            "mined_pairs": len(mpairs),
            "mined_distinct_queries": len(mq),
            "mined_distinct_passages": len(mp),
            "mined_negatives_per_query": MINED_NEGATIVES,
            "batch_size": s.batch_size,
            "cross_encoder_max_length": s.ce_max_length,
            "query_max_length": s.query_max_length,
            "passage_max_length": s.passage_max_length,
            "precision": "fp32 unless the case says int8",
            "cross_encoder": str(ctx.cross_encoder),
            "bi_encoder": str(ctx.bi_encoder),
            "repeats": s.repeats,
            "warmup_pairs": WARMUP_PAIRS,
            "st_onnx": None if onnx is None else {"quantization_config": onnx["quantization_config"]},
            "distillrank_onnx": ours_onnx,
            "hardware_auto": {"cross_encoder": ce_choice, "bi_encoder": bi_choice},
        },
        "cases": cases,
        "notes": [
            "cross-encoder: MiniLM-L6 backbone with a random 1-logit head (architecture and cost of "
            "cross-encoder/ms-marco-MiniLM-L6-v2, which has no offline copy)",
            "bi_encoder*: both tools encode each distinct text once (ST's de-duplication done by hand)",
            "mined_*: 1 positive + 8 BM25 negatives per training query; st_naive encodes every pair's texts, "
            "st_dedup is ST with the de-duplication written by hand",
            "*_auto: distillrank under hardware=auto (the default): the calibration a stage runs, on this "
            "benchmark's model and the collection's training queries, then the chosen runtime measured as the "
            "other arms; fidelity against distillrank fp32 on the same pairs (nDCG@10 of SciFact test judgements)",
            "int8 rows: distillrank int8 (torch dynamic quantization) vs sentence-transformers fp32",
            "*_vs_st_onnx: against sentence-transformers' ONNX Runtime backend in the same precision"
            if onnx
            else "ST's ONNX backend not measured: optimum and onnxruntime are not installed (pip install -e .[bench-onnx])",
        ],
    }
