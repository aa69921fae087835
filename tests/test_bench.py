"""The benchmark runner's smoke form: every benchmark runs on tiny models and writes its JSON.

A speed is never asserted (benchmarks are not timed tests). What is: every benchmark writes its
results; each derived number (median, ratio, goal met, speed-up, share) follows from the raw runs
it was computed from; and where two ways must agree (bf16 / int8 against fp32, both tools on the
same pairs, sorted against unsorted padding), they do.

The ``hardware=auto`` arms' calibrations are faked in the smoke run (:func:`_fake_calibrations`: a
fixed choice each, recorded as a real one; the plumbing is what is tested there, and a real
calibration of the tiny models costs ~60 s, mostly ONNX exports); the real calibration functions
are run apart, on the tiny models without ONNX Runtime candidates.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from bench import auto, ceiling
from bench import run as bench_run
from bench.common import alternate, comparison

from distillrank.calibration import BF16_PROBE_MIN, Choice, Measured, Probe

# what the fake calibrations choose: a runtime other than torch fp32 where the benchmark has one
# without an export (scoring: torch int8), and torch fp32 (mining, training), whose results must
# then be fp32's own
FAKE = {"teacher": ("int8", "torch"), "mining": ("fp32", "torch"), "student": ("fp32", "torch")}


def _fake_choice(precision: str, backend: str) -> Choice:
    candidates = [Measured("fp32", "torch", 0.2, 1.0, timed=3, spent=1.0, spearman=1.0, top1=1.0)]
    if (precision, backend) != ("fp32", "torch"):
        candidates.append(
            Measured(precision, backend, 0.1, 2.0, timed=3, spent=1.0, spearman=0.999, top1=1.0)
        )
    candidates.append(Measured("bf16", "torch", None, None, rejected="bf16 probe: faked"))
    return Choice(precision, backend, tuple(candidates), seconds=2.0)


@pytest.fixture(scope="module")
def calibrated() -> list[tuple[str, str]]:
    """The (role, model folder) of every calibration the smoke run asked for."""
    return []


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory, calibrated: list) -> Path:
    out = tmp_path_factory.mktemp("bench")
    with pytest.MonkeyPatch.context() as mp:
        _fake_calibrations(mp, calibrated)
        # the ceiling's bf16 cases run whatever this CPU's bf16 (the probe skips them where it is
        # emulated: test_the_ceiling_skips_bf16_where_the_probe_finds_it_emulated)
        mp.setattr(ceiling, "bf16_probe", lambda hidden: Probe(hidden, False, 1e-3, 1e-3, 1.0, 0.01))
        bench_run.main(["--smoke", "--out", str(out), "--cache", str(out / "cache")])
    return out / "smoke"


def _fake_calibrations(mp: pytest.MonkeyPatch, calibrated: list) -> None:
    """Replace the auto arms' calibrations with fixed choices (:data:`FAKE`), recorded as real ones."""

    def ranker(ctx, model, *, mining=False):
        role = "mining" if mining else "teacher"
        calibrated.append((role, str(model.model)))
        return auto.record(_fake_choice(*FAKE[role]), 2.5, False)

    def student(ctx, make_student, lr):
        calibrated.append(("student", str(ctx.student)))
        make_student()  # the benchmark's student builds
        return auto.record(_fake_choice(*FAKE["student"]), 2.5, False)

    mp.setattr(auto, "calibrate_ranker", ranker)
    mp.setattr(auto, "calibrate_student", student)


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def test_every_benchmark_writes_json_and_the_summary(smoke: Path) -> None:
    summary = json.loads((smoke / "summary.json").read_text())
    assert summary["mode"] == "smoke"
    assert set(summary["results"]) == set(bench_run.BENCHMARKS)
    for key in ("cpu", "isa", "cpu_info", "cores", "torch", "torch_threads", "load_average", "gpu"):
        assert key in summary["machine"]
    assert {"vendor", "family", "model_number", "stepping", "torch_capability", "affinity"} <= set(
        summary["machine"]["cpu_info"]
    )
    for name in bench_run.BENCHMARKS:
        result = json.loads((smoke / f"{name}.json").read_text())
        assert result["benchmark"] == name
        assert isinstance(result["settings"], dict) and result["cases"]


def test_comparison_cases_hold_medians_ratio_and_goal(smoke: Path) -> None:
    from bench.scoring import onnx_available

    scoring = {
        "cross_encoder",
        "cross_encoder_int8",
        "bi_encoder",
        "bi_encoder_int8",
        "cross_encoder_auto",
        "bi_encoder_auto",
    } | {f"mined_bi_encoder{p}_vs_st_{way}" for p in ("", "_int8") for way in ("naive", "dedup")}
    from distillrank.models.onnx_runtime import missing_packages

    ours_onnx = not missing_packages()  # distillrank's ONNX Runtime backend (the onnx extra, in dev)
    if ours_onnx:
        scoring |= {"cross_encoder_onnx", "bi_encoder_onnx"}
    if onnx_available():  # sentence-transformers' ONNX backend installed (the bench-onnx extra)
        scoring |= {
            f"{kind}{p}_vs_st_onnx" for kind in ("cross_encoder", "bi_encoder") for p in ("", "_int8")
        }
        if ours_onnx:
            scoring |= {"cross_encoder_onnx_vs_st_onnx", "bi_encoder_onnx_vs_st_onnx"}
    mining = (
        {"dense_mining", "dense_mining_onnx", "dense_mining_auto"}
        if ours_onnx
        else {"dense_mining", "dense_mining_auto"}
    )
    expected = {
        "scoring": scoring,
        "training": {
            "margin_mse_1q_1p_7n",
            "margin_mse_dropout0_vs_st_default",
            "margin_mse_dropout0_vs_st_dropout0",
            "margin_mse_auto",
        },
        "mining": mining,
    }
    for name, cases in expected.items():
        result = json.loads((smoke / f"{name}.json").read_text())
        assert {c["case"] for c in result["cases"]} == cases
        for case in result["cases"]:
            for tool in ("distillrank", "sentence_transformers"):
                assert _number(case[tool]["median"]) and case[tool]["median"] > 0
                assert len(case[tool]["runs"]) == result["settings"]["repeats"]
                assert case[tool]["median"] == pytest.approx(statistics.median(case[tool]["runs"]))
            ours, theirs = case["distillrank"]["median"], case["sentence_transformers"]["median"]
            assert case["ratio"] == pytest.approx(
                ours / theirs if case["higher_is_better"] else theirs / ours
            )
            assert _number(case["goal"])
            memory_met = (
                bool(case["memory_met"]) if "memory_met" in case else True
            )  # mining: a memory goal too
            quality_met = case.get("fidelity", {}).get("quality_met") is not False  # auto: equal quality too
            assert case["met"] is (case["ratio"] >= case["goal"] and memory_met and quality_met)
    mining = json.loads((smoke / "mining.json").read_text())["cases"][0]
    assert set(mining["peak_memory"]) == {"distillrank", "sentence_transformers"}
    assert (
        mining["peak_memory"]["distillrank"]["tuples"]
        == mining["peak_memory"]["sentence_transformers"]["tuples"]
    )


def test_both_tools_score_the_same_pairs(smoke: Path) -> None:
    scoring = json.loads((smoke / "scoring.json").read_text())
    bi = next(c for c in scoring["cases"] if c["case"] == "bi_encoder")
    assert bi["spearman"] > 0.99 and bi["max_abs_diff"] < 1e-4
    ce = next(c for c in scoring["cases"] if c["case"] == "cross_encoder")
    assert ce["spearman"] > 0.99
    for case in (
        "mined_bi_encoder_vs_st_naive",
        "mined_bi_encoder_vs_st_dedup",
    ):  # naive and by-hand dedup agree with ours
        mined = next(c for c in scoring["cases"] if c["case"] == case)
        assert mined["spearman"] > 0.99 and mined["max_abs_diff"] < 1e-4
    settings = scoring["settings"]
    assert (
        settings["mined_distinct_queries"] < settings["mined_pairs"] <= settings["mined_distinct_queries"] * 9
    )
    for case in scoring["cases"]:
        if "auto" in case:  # its precision is the calibration's choice
            continue
        assert ("int8" in case["case"]) == ("int8" in case["precision"])
        if case["case"] in ("cross_encoder_onnx", "bi_encoder_onnx"):  # ONNX Runtime scores as PyTorch does
            assert case["spearman"] > 0.99


def test_precision_speed_and_fidelity(smoke: Path) -> None:
    result = json.loads((smoke / "precision.json").read_text())
    cases = {c["case"]: c["values"] for c in result["cases"]}
    assert set(cases) == {"forward", "train_step", "fidelity"}
    assert all(_number(cases["forward"][f"{p}_texts_per_s"]) for p in ("fp32", "bf16", "int8"))
    assert all(_number(cases["train_step"][f"{p}_texts_per_s"]) for p in ("fp32", "bf16"))
    for case, precisions in (("forward", ("bf16", "int8")), ("train_step", ("bf16",))):
        values = cases[case]
        for p in precisions:  # speed-up = fp32 time / p time = p rate / fp32 rate
            assert values[f"{p}_speedup"] == pytest.approx(
                values[f"{p}_texts_per_s"] / values["fp32_texts_per_s"]
            )
    fidelity = cases["fidelity"]
    ndcg = fidelity["ndcg_at_10"]
    assert set(ndcg) == {"bm25", "fp32", "int8", "bf16"}
    for precision in ("int8", "bf16"):  # the lower precisions rank (almost) as fp32 does
        assert ndcg[precision] == pytest.approx(ndcg["fp32"], abs=0.05), precision
        agreement = fidelity["agreement_with_fp32"][precision]
        assert agreement["spearman_mean"] > 0.9 and agreement["kendall_mean"] > 0.8, precision
        assert agreement["top1_unchanged"] >= 0.75, precision


def test_scale_and_ceiling_measurements(smoke: Path) -> None:
    scale = json.loads((smoke / "scale.json").read_text())
    by_corpus = scale["cases"][0]["values"]["by_corpus"]
    assert [r["corpus"] for r in by_corpus] == scale["settings"]["corpora"]
    assert all(r["same_top1"] == 1.0 for r in by_corpus)
    table = scale["cases"][1]["values"]
    assert table["check"]["rows"] == table["rows"]
    assert table["check"]["queries"] == table["check"]["positives"] == table["rows"] // 100
    ceiling = json.loads((smoke / "ceiling.json").read_text())
    assert [c["case"] for c in ceiling["cases"]] == [
        "matmul_fp32",
        "bi_encoder_forward",
        "bi_encoder_encode",
        "student_forward_backward",
        "matmul_bf16",
        "bi_encoder_forward_bf16",
        "bi_encoder_encode_bf16",
        "student_forward_backward_bf16",
    ]
    rates = {c["case"]: c["values"] for c in ceiling["cases"]}
    for suffix, precision in (("", "fp32"), ("_bf16", "bf16")):  # the forward as encode runs it under hardware=cpu
        encode = rates["bi_encoder_encode" + suffix]
        assert encode["runtime"]["option"] == "cpu" and encode["runtime"]["precision"] == precision
        assert encode["tokens"] == sum(encode["forward_tokens"]) <= rates["bi_encoder_forward" + suffix]["tokens"]
        # the product rate is measured at the rows of the pipeline's largest forward too
        assert f"{max(encode['forward_tokens'])}x" in " ".join(rates["matmul_" + precision]["linear_gflops"])
    for case in ("bi_encoder_forward", "bi_encoder_encode", "student_forward_backward"):  # each against its own precision's matmul
        for suffix, matmul in (("", "matmul_fp32"), ("_bf16", "matmul_bf16")):
            values = rates[case + suffix]
            assert values["fraction_of_matmul"] == pytest.approx(values["gflops"] / rates[matmul]["gflops"])
    assert all(_number(c["values"]["gflops"]) and c["values"]["gflops"] > 0 for c in ceiling["cases"])
    for matmul in ("matmul_fp32", "matmul_bf16"):  # the rate: the best of the square and the encoder's products
        values = rates[matmul]
        assert len(values["linear_gflops"]) >= 2  # the tiny encoder's hidden -> hidden and -> intermediate
        assert values["gflops"] == max(values["square_gflops"], *values["linear_gflops"].values())
        assert values["square_gflops"] == max(values["square_gflops_before_after"])  # before and after the encoders


def test_the_ceiling_skips_bf16_where_the_probe_finds_it_emulated(smoke: Path) -> None:
    """On a CPU whose bf16 probe runs under BF16_PROBE_MIN of fp32 (EPYC-2, AVX2: 0.09-0.20x),
    auto never chooses bf16, and measuring it took 29 of the ceiling's 30 minutes: the fp32 cases
    run, and matmul_bf16 records the probe and why nothing bf16 ran; the report says so."""
    from bench.report import ceiling as ceiling_lines

    out = smoke.parent / "emulated"
    slow = Probe(384, False, 1e-3, 1e-2, 0.1, 0.2)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ceiling, "bf16_probe", lambda hidden: slow)
        bench_run.main(["--smoke", "--only", "ceiling", "--out", str(out), "--cache", str(smoke.parent / "cache")])
    result = json.loads((out / "smoke" / "ceiling.json").read_text())
    cases = {c["case"]: c["values"] for c in result["cases"]}
    assert list(cases) == ["matmul_fp32", "bi_encoder_forward", "bi_encoder_encode", "student_forward_backward", "matmul_bf16"]
    assert cases["matmul_bf16"]["gflops"] is None and cases["matmul_bf16"]["probe"]["speedup"] == 0.1
    assert "0.10x" in cases["matmul_bf16"]["skipped"] and f"< {BF16_PROBE_MIN}" in cases["matmul_bf16"]["skipped"]
    assert result["settings"]["bf16_probe"]["speedup"] == 0.1
    for case in ("bi_encoder_forward", "student_forward_backward"):  # the fp32 fractions as ever
        assert cases[case]["fraction_of_matmul"] == pytest.approx(cases[case]["gflops"] / cases["matmul_fp32"]["gflops"])
    lines = ceiling_lines({"results": {"ceiling": result}})
    assert any(line.startswith("| matmul_bf16 (not measured: bf16 probe") for line in lines)
    # measured with the fast probe (the smoke run), bf16's rate is a number and its cases ran
    fast = {c["case"]: c["values"] for c in json.loads((smoke / "ceiling.json").read_text())["cases"]}
    assert "skipped" not in fast["matmul_bf16"] and fast["matmul_bf16"]["gflops"] > 0


def test_the_headline_holds_the_ceiling_goals_in_the_precision_auto_chose() -> None:
    """issue 16: "of the fp32 matmul ceiling, or of the bf16 ceiling when bf16 is chosen": the
    forward's row follows the bi-encoder teacher's choice, forward + backward the student's."""
    from bench.report import ceiling_headline

    def case(name, fraction):
        return {"case": name, "values": {"fraction_of_matmul": fraction}}

    ceiling = [case("bi_encoder_forward", 0.71), case("student_forward_backward", 0.62),
               case("bi_encoder_forward_bf16", 0.27), case("student_forward_backward_bf16", 0.15)]  # fmt: skip

    def summary(teacher, student, with_ceiling=True):
        results = {
            "scoring": {"cases": [{"case": "bi_encoder_auto", "auto": {"backend": teacher[1], "precision": teacher[0]}}]},
            "training": {"cases": [{"case": "margin_mse_auto", "auto": {"backend": "torch", "precision": student}}]},
        }
        if with_ceiling:
            results["ceiling"] = {"cases": ceiling}
        return {"results": results}

    rows = ceiling_headline(summary(("bf16", "torch"), "fp32"))
    assert [(r["case"], r["ratio"], r["met"], r["ratio_goal"]) for r in rows] == [
        ("bi_encoder_forward_bf16", 0.27, False, 0.75),
        ("student_forward_backward", 0.62, True, 0.60),
    ]
    assert [r["case"] for r in ceiling_headline(summary(("int8", "torch"), "bf16"))] == ["student_forward_backward_bf16"]
    assert [r["case"] for r in ceiling_headline(summary(("fp32", "onnx"), "fp32"))] == ["student_forward_backward"]
    assert ceiling_headline(summary(("fp32", "torch"), "fp32", with_ceiling=False)) == []


def test_alternate_flips_the_order_and_comparison_ratio_direction() -> None:
    calls: list[str] = []
    out = alternate({"a": lambda: calls.append("a") or 1.0, "b": lambda: calls.append("b") or 2.0}, 3)
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]  # warm-up, then a b, b a, a b
    assert out == {"a": [1.0] * 3, "b": [2.0] * 3}
    rate = comparison("x", "pairs/s", [3.0], [1.5], goal=1.5)
    assert rate["ratio"] == 2.0 and rate["met"] is True
    time = comparison("x", "s", [3.0], [1.5], goal=1.2, higher_is_better=False)
    assert time["ratio"] == 0.5 and time["met"] is False


def test_report_renders_every_table(smoke: Path) -> None:
    from bench import report

    summary = json.loads((smoke / "summary.json").read_text())
    text = report.render(summary)
    header = text.splitlines()[1]  # the one-line machine header: the CPU and its ISA flags
    assert header.startswith(f"Machine: {summary['machine']['cpu']}") and "cores, torch " in header
    isa = summary["machine"]["isa"]
    assert ("ISA flags unknown" in header) if isa is None else (f"({', '.join(isa) or 'none of'}" in header)
    for needle in (
        "| scoring | mined_bi_encoder_int8_vs_st_naive | int8 vs ST fp32 |",
        "| int8 |",
        "matmul_fp32",
    ):
        assert needle in text


def test_ablation_switches_each_technique(smoke: Path) -> None:
    result = json.loads((smoke / "ablation.json").read_text())
    cases = {c["case"]: c["values"] for c in result["cases"]}
    assert set(cases) == {
        "length_sorting",
        "mask_skip",
        "forward_cap",
        "dropout",
        "tokenization",
    }  # compile: full only
    for name, v in cases.items():
        if name == "tokenization":
            assert _number(v["tokenize_s"]) and _number(v["encode_s"]) and v["tokenize_s"] > 0
            assert v["share"] == pytest.approx(v["tokenize_s"] / v["encode_s"])
            continue
        assert set(v["median_s"]) >= {v["on"], v["off"]}
        assert all(len(runs) == result["settings"]["repeats"] for runs in v["runs_s"].values())
        assert all(
            v["median_s"][k] == pytest.approx(statistics.median(runs)) for k, runs in v["runs_s"].items()
        )
        assert v["speedup"] == pytest.approx(v["median_s"][v["off"]] / v["median_s"][v["on"]])
    sorting = cases["length_sorting"]
    assert 0 <= sorting["padding_sorted"] < sorting["padding_unsorted"] < 1  # sorting removes padding
    assert set(cases["dropout"]["median_s"]) == {"default", "no_attention_dropout", "off"}


@pytest.mark.parametrize("negatives", [1, 3])
def test_st_quality_gives_sentence_transformers_the_loops_examples(make_cfg, negatives) -> None:
    import numpy as np
    from bench.st_quality import st_columns

    from distillrank.training.batching import QueryPool, epoch_examples

    pools = [
        QueryPool(f"q{i}", [(f"p{i}", 5.0 + i)], [(f"n{i}_{j}", float(j)) for j in range(4)])
        for i in range(6)
    ]
    cfg = make_cfg(
        f"train.negatives_per_example={negatives}", "train.batch_size=4", "train.max_steps=2", "seed=7"
    )
    columns = st_columns(
        cfg, pools, {p.qid: f"text of {p.qid}" for p in pools}, lambda ids: [f"text of {d}" for d in ids]
    )
    per_epoch = len(epoch_examples(pools, negatives, np.random.default_rng(0)))
    assert len(columns["query"]) == min(
        8, per_epoch * int(cfg.train.epochs)
    )  # max_steps x batch_size caps them
    rng = np.random.default_rng(7)  # one rng, drawn epoch after epoch, as train_student does
    drawn = epoch_examples(pools, negatives, rng) + epoch_examples(pools, negatives, rng)
    for row, ex in enumerate(drawn[: len(columns["query"])]):
        assert columns["query"][row] == f"text of {ex.qid}"
        assert columns["positive"][row] == f"text of {ex.docids[0]}"
        margins = [ex.teacher[0] - t for t in ex.teacher[1:]]
        assert columns["label"][row] == (margins[0] if negatives == 1 else margins)
        keys = ["negative"] if negatives == 1 else [f"negative_{k + 1}" for k in range(negatives)]
        assert [columns[k][row] for k in keys] == [f"text of {d}" for d in ex.docids[1:]]


@pytest.mark.slow  # about 100 s: each stage in a fresh process, then 1 and 2 gloo ranks (make test-slow)
def test_scale_pipeline_runs_the_stages_and_reports_identity(tmp_path: Path) -> None:
    """The pipeline scale benchmark at smoke size: every stage ran in its own process with a peak
    RSS, pairs grow with the queries, sharded runs match one process, and the table shows it all."""
    from bench import scale_pipeline

    result = scale_pipeline.main(
        ["--mode", "smoke", "--out", str(tmp_path / "out"), "--cache", str(tmp_path / "cache")]
    )
    saved = json.loads((tmp_path / "out" / "scale_pipeline.json").read_text())
    assert saved["goal"] == result["goal"]
    sizes = scale_pipeline.SIZES["smoke"]
    assert [r["train_queries"] for r in saved["scale"]] == list(sizes.train_queries)
    pairs = [r["pairs"] for r in saved["scale"]]
    assert pairs == sorted(pairs) and pairs[0] < pairs[-1]
    for row in saved["scale"]:
        assert row["stages"]["score"]["counts"]["pairs"] == row["pairs"]
        assert row["stages"]["score"]["counts"]["pairs_scored"] == row["pairs"]  # the score cache was emptied
        for s in row["stages"].values():
            assert _number(s["wall_s"]) and 0 < s["rss_before_gib"] <= s["peak_rss_gib"]
    assert "evaluate" in saved["scale"][-1]["stages"] and "evaluate" not in saved["scale"][0]["stages"]
    largest = saved["scale"][-1]["stages"]
    assert saved["goal"]["rss_met"] is (
        max(largest["score"]["peak_rss_gib"], largest["train"]["peak_rss_gib"]) < 4
    )
    by_world = saved["identity"]["by_world"]
    assert [(c["processes"], c["threads"]) for c in by_world] == [(w, 1) for w in sizes.worlds] + [(1, 2)]
    assert saved["identity"]["lr"] == scale_pipeline.IDENTITY_LR
    for c in by_world:
        assert c["scores_identical"] and c["weights_within_1e-5"] and c["metrics_identical"], c
        assert len(c["score_peak_rss_gib_ranks"]) == len(c["train_peak_rss_gib_ranks"]) == c["processes"]
    table = (tmp_path / "out" / "scale_pipeline.md").read_text()
    assert f"| {sizes.train_queries[-1]} | {pairs[-1]:,} | evaluate |" in table
    assert f"| {sizes.worlds[-1]} | True |" in table


def test_the_identity_check_trains_at_the_largest_recipe_learning_rate() -> None:
    """The sharded-identity runs use the largest ``train.lr`` any shipped recipe sets: the weight
    differences of another summation order grow with lr (Adam's step is ~lr whatever the gradient),
    so a smaller one would make the 1e-5 check easier than real training is."""
    from bench import scale_pipeline
    from omegaconf import OmegaConf

    from distillrank.config import TrainConfig

    root = Path(__file__).resolve().parents[1] / "conf"
    rates = [TrainConfig().lr]
    for path in sorted((root / "exp").glob("*.yaml")):
        lr = OmegaConf.select(OmegaConf.load(path), "train.lr")
        if lr is not None:
            rates.append(float(lr))
    assert len(rates) > 3
    assert float(scale_pipeline.IDENTITY_LR) == max(rates)


def test_scale_collection_is_seeded_and_bm25_learnable(tmp_path: Path) -> None:
    from bench.scale_pipeline import make_collection

    a = make_collection(tmp_path / "a", 300, 20, 10, seed=3)
    b = make_collection(tmp_path / "b", 300, 20, 10, seed=3)
    for name in ("corpus.jsonl", "queries.jsonl", "qrels/train.tsv", "qrels/test.tsv"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    docs = {
        d["_id"]: set(d["text"].split())
        for d in map(json.loads, (a / "corpus.jsonl").read_text().splitlines())
    }
    queries = {
        q["_id"]: q["text"].split() for q in map(json.loads, (a / "queries.jsonl").read_text().splitlines())
    }
    assert len(docs) == 300 and len(queries) == 30
    qrels = [line.split("\t") for line in (a / "qrels" / "train.tsv").read_text().splitlines()[1:]]
    qrels += [line.split("\t") for line in (a / "qrels" / "test.tsv").read_text().splitlines()[1:]]
    assert len(qrels) == 30 and len({d for _, d, _ in qrels}) == 30  # one distinct positive a query
    for qid, docid, _ in qrels:
        assert set(queries[qid]) <= docs[docid] and len(set(queries[qid])) == 5


def test_auto_arms_calibrate_the_benchmarks_models_and_measure_the_choice(
    smoke: Path, calibrated: list
) -> None:
    scoring = json.loads((smoke / "scoring.json").read_text())
    settings = scoring["settings"]
    assert sorted(calibrated) == sorted(
        [("teacher", settings["cross_encoder"]), ("teacher", settings["bi_encoder"]),
         ("mining", settings["bi_encoder"]), ("student", json.loads((smoke / "training.json").read_text())["settings"]["student"])]
    )  # fmt: skip
    cases = {c["case"]: c for c in scoring["cases"]}
    for kind in ("cross_encoder", "bi_encoder"):
        case = cases[f"{kind}_auto"]
        assert (case["auto"]["precision"], case["auto"]["backend"]) == FAKE["teacher"]
        assert case["precision"] == "hardware=auto: torch int8"
        assert settings["hardware_auto"][kind] == case["auto"]
        # the arm ran the chosen runtime: torch int8 scores the pairs as the int8 arm does
        assert case["spearman"] == pytest.approx(cases[f"{kind}_int8"]["spearman"], abs=1e-9)
        f = case["fidelity"]
        assert 0 <= f["top1_vs_fp32"] <= 1 and -1 <= f["spearman_vs_fp32"] <= 1
        assert set(f["ndcg_at_10"]) == {"fp32", "auto"}
        assert f["ndcg_delta"] == pytest.approx(f["ndcg_at_10"]["auto"] - f["ndcg_at_10"]["fp32"])
        assert f["quality_met"] is (f["top1_vs_fp32"] >= 0.98 and abs(f["ndcg_delta"]) <= 0.005)
        assert case["met"] is (case["speed_met"] and f["quality_met"])
    mining = {c["case"]: c for c in json.loads((smoke / "mining.json").read_text())["cases"]}[
        "dense_mining_auto"
    ]
    assert mining["fidelity"]["same_negatives_vs_fp32"] == 1.0  # torch fp32 chosen: fp32's own negatives
    assert (
        mining["peak_memory"]["distillrank"]["tuples"]
        == mining["peak_memory"]["sentence_transformers"]["tuples"]
    )
    training = {c["case"]: c for c in json.loads((smoke / "training.json").read_text())["cases"]}[
        "margin_mse_auto"
    ]
    assert training["auto"]["precision"] == "fp32"
    assert training["fidelity"]["loss_rdiff_vs_fp32"] == auto.chosen(training["auto"])["loss_rdiff"]

    summary = json.loads((smoke / "summary.json").read_text())
    rows = {r["case"]: r for r in summary["headline"]}
    # the ceiling's goal in the precision auto chose: the student's (fp32 here); the teacher's int8 has none
    assert set(rows) == {"cross_encoder_auto", "bi_encoder_auto", "margin_mse_auto", "dense_mining_auto", "student_forward_backward"}
    ceiling_row = rows.pop("student_forward_backward")
    fraction = {c["case"]: c for c in summary["results"]["ceiling"]["cases"]}["student_forward_backward"]["values"]["fraction_of_matmul"]
    assert ceiling_row["ratio"] == fraction and ceiling_row["met"] is (fraction >= 0.6) and ceiling_row["choice"] == "torch fp32"
    for name, result in summary["results"].items():
        for c in result["cases"]:
            if c["case"] in rows:
                assert rows[c["case"]]["ratio"] == c["ratio"] and rows[c["case"]]["met"] is c["met"]
                assert rows[c["case"]]["benchmark"] == name and rows[c["case"]]["calibration_s"] == 2.5
    assert rows["dense_mining_auto"]["goal"].startswith("dense mining ≥ 1.2×")

    from bench import report

    text = report.render(summary)
    assert text.index("Headline: `hardware=auto`") < text.index(
        "| benchmark | case | precision |"
    )  # named arms: detail
    assert "| teacher scoring ≥ 1.5× ST | scoring/cross_encoder_auto | torch int8 (2.00×) | 2.5 |" in text
    assert "| cross_encoder_auto | torch bf16 | – | 0 | – | – | – | bf16 probe: faked |" in text
    assert "| distillrank (hardware=auto) |" in text  # the mining memory table


@pytest.fixture
def tiny_ctx(tmp_path: Path, tiny_beir: Path, tiny_bi_encoder: Path, tiny_cross_encoder: Path):
    from types import SimpleNamespace

    from bench.common import SIZES, Context

    from distillrank.data import load_collection

    data = SimpleNamespace(
        name="tiny", source="beir", path=str(tiny_beir), train_split="train", test_split="test"
    )
    collection = load_collection(data, tmp_path / "cache")
    return Context(
        "smoke", SIZES["smoke"], tiny_bi_encoder, tiny_cross_encoder, tiny_bi_encoder, collection, tmp_path,
        tmp_path / "cache", lambda msg: None,
    )  # fmt: skip


def test_the_auto_arms_run_the_stages_calibration(tiny_ctx, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real calibrations, on tiny models (ONNX Runtime's candidates left out: their export is
    the calibration's cost): every candidate recorded, the reference first, the choice among them."""
    from distillrank import calibration
    from distillrank.builders import hardware
    from distillrank.models.bi_encoder import BiEncoder
    from distillrank.students.factory import as_student
    from distillrank.teachers import BiEncoderTeacher, CrossEncoderTeacher

    monkeypatch.setattr(calibration, "missing_onnx_packages", lambda: ["onnxruntime"])
    teacher = CrossEncoderTeacher(str(tiny_ctx.cross_encoder), max_length=32, batch_size=8)
    for made, pairs in (
        (auto.calibrate_ranker(tiny_ctx, teacher), {("fp32", "torch"), ("bf16", "torch"), ("int8", "torch")}),
        (auto.calibrate_student(tiny_ctx, lambda: as_student(BiEncoder.load(tiny_ctx.student)), 2e-5),
         {("fp32", "torch"), ("bf16", "torch")}),
    ):  # fmt: skip
        measured = [(m["precision"], m["backend"]) for m in made["candidates"]]
        assert measured[0] == ("fp32", "torch") and set(measured) == pairs
        assert (made["precision"], made["backend"]) in measured
        assert made["speedup_vs_fp32"] == auto.chosen(made)["speedup"]
        assert 0 < made["seconds"] <= made["wall_s"] and made["met"] is (made["wall_s"] < 30)
        assert made["first_use"] is False  # smoke: the bench's ONNX cache is shared
        json.dumps(made)  # the benchmark's JSON

    seen = []  # the mining encoder: the stage's mining candidates (no int8), on the same batch

    def fake(ranker, base, candidates, batch, folders, precision="auto", backend="auto"):
        seen.append(([(c.precision, c.backend) for c in candidates], len(batch[0].pair_q), folders))
        return _fake_choice("fp32", "torch")

    monkeypatch.setattr(hardware, "calibrate_ranker", fake)
    encoder = BiEncoderTeacher(str(tiny_ctx.bi_encoder))
    assert auto.calibrate_ranker(tiny_ctx, encoder, mining=True)["candidates"][0]["precision"] == "fp32"
    assert seen == [
        (
            [("fp32", "torch"), ("bf16", "torch")],
            hardware.QUERIES * hardware.PASSAGES,
            [encoder.weights_folder()],
        )
    ]


def test_onnx_cache_points_exports_at_a_folder_and_restores_it(tmp_path: Path, monkeypatch) -> None:
    from distillrank.models.onnx_runtime import CACHE_ENV

    monkeypatch.setenv(CACHE_ENV, "before")
    with auto.onnx_cache(tmp_path):
        assert os.environ[CACHE_ENV] == str(tmp_path)
    assert os.environ[CACHE_ENV] == "before"
    monkeypatch.delenv(CACHE_ENV)
    with auto.onnx_cache(tmp_path):
        assert os.environ[CACHE_ENV] == str(tmp_path)
    assert CACHE_ENV not in os.environ
    with auto.onnx_cache(None):
        assert CACHE_ENV not in os.environ


def test_auto_case_needs_the_speed_and_equal_quality() -> None:
    groups = np.array([0, 0, 0, 1, 1, 1])
    reference = np.array([3.0, 2.0, 1.0, 1.0, 2.0, 3.0])
    same = auto.score_fidelity(reference, reference * 2, groups, {"fp32": 0.5, "auto": 0.504})
    assert same["spearman_vs_fp32"] == 1.0 and same["top1_vs_fp32"] == 1.0 and same["quality_met"] is True
    assert (
        auto.score_fidelity(reference, reference, groups, {"fp32": 0.5, "auto": 0.494})["quality_met"]
        is False
    )
    swapped = auto.score_fidelity(reference, np.array([2.0, 3.0, 1.0, 1.0, 2.0, 3.0]), groups)
    assert (
        swapped["top1_vs_fp32"] == 0.5 and swapped["quality_met"] is False and swapped["ndcg_at_10"] is None
    )
    choice = auto.record(_fake_choice("int8", "torch"), 1.0, True)
    fast = auto.auto_case("x", "pairs/s", [3.0], [1.0], 1.5, choice, swapped, "teacher scoring (bi-encoder)")
    assert (
        fast["ratio"] == 3.0 and fast["speed_met"] is True and fast["met"] is False
    )  # faster, not equal quality
    unmeasured = auto.auto_case("x", "s", [1.0], [2.0], 1.3, choice, {"quality_met": None}, "training", False)
    assert unmeasured["met"] is True and unmeasured["precision"] == "hardware=auto: torch int8"
    assert choice["speedup_vs_fp32"] == 2.0 and choice["met"] is True and choice["first_use"] is True


def test_profile_groups_operators_and_accounts_for_a_training_step(tiny_bi_encoder: Path) -> None:
    """The profiler table behind issue 16's item 2: every operator lands in one group (aten::t is a
    matrix transpose of the linear layers, aten::to a copy), the shares add up to the step, and a
    training step of a real (tiny) encoder shows linear-layer products, layer norm and backward work."""
    from bench.profile_encoder import group_of, profile_step

    from distillrank.models.bi_encoder import BiEncoder

    assert group_of("aten::t") == group_of("aten::addmm") == "matmul (linear layers)"
    assert group_of("aten::to") == group_of("aten::transpose") == "copies and layout"
    assert group_of("aten::_scaled_dot_product_flash_attention_for_cpu") == "attention"
    assert group_of("aten::native_layer_norm_backward") == "layer norm"
    assert group_of("aten::_foreach_addcdiv_") == "optimizer"
    encoder = BiEncoder.load(tiny_bi_encoder)
    opt = torch.optim.AdamW(encoder.parameters(), lr=1e-4)
    prof = profile_step(encoder, ["a short passage", "another passage about cells and genes"], True, 2, opt)
    shares = [g["share"] for g in prof["groups"].values()]
    assert math.isclose(sum(shares), 1.0, rel_tol=1e-9) and prof["step_ms"] > 0
    assert {"matmul (linear layers)", "layer norm", "optimizer"} <= set(prof["groups"])
    assert prof["top_ops"] and all(o["ms"] >= 0 for o in prof["top_ops"])
    # trained as the loop trains: dropout's masks 16 bits a draw (random_), not nn.Dropout's bernoulli_
    assert "aten::random_" in prof["ops"] and "aten::bernoulli_" not in prof["ops"]
    torch_masks = profile_step(encoder, ["a short passage", "another passage"], True, 2, opt, masks="torch")
    assert "aten::bernoulli_" in torch_masks["ops"] and torch_masks["groups"]["dropout"]["ms"] > 0


@pytest.mark.slow  # torch.compile compiles a forward and a backward graph: ~30 s (make test-slow)
def test_compiled_side_by_side_times_eager_and_compiled_steps(tiny_bi_encoder: Path) -> None:
    """profile_encoder.py --compile (docs/BENCHMARKS.md, "Where the time goes below the ceiling"):
    the compile is timed apart from the steps, eager and compiled alike for inference and training."""
    from bench.profile_encoder import compiled_side_by_side

    from distillrank.models.bi_encoder import BiEncoder

    fwd, student = BiEncoder.load(tiny_bi_encoder), BiEncoder.load(tiny_bi_encoder)
    times = compiled_side_by_side(fwd, student, ["a short passage", "another passage about cells"], 2)
    for case in ("forward", "forward_backward"):
        assert {f"{case}: eager", f"{case}: compiled", f"{case}: first compiled call (compiling)"} <= set(times)
        assert times[f"{case}: first compiled call (compiling)"] > times[f"{case}: compiled"] > 0
    assert any(p.grad is not None for p in student.parameters())  # the training case backpropagated


def test_score_memory_runs_the_stages_final_pass_cold_then_warm(tmp_path: Path) -> None:
    """``scripts/bench/score_memory.py`` (docs/SCALE.md, "Memory per pair") measures the score stage's
    own final pass: cold, every distinct pair scored into the cache; warm, none; scores.parquet
    written with the stage's columns."""
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[1] / "scripts" / "bench" / "score_memory.py"
    from bench.score_memory import make_candidates

    make_candidates(tmp_path / "candidates.parquet", 3000, passages=500)
    runs = {}
    for phase in ("cold", "warm"):
        out = subprocess.run(
            [sys.executable, str(script), "--phase", phase, "--work", str(tmp_path)],
            check=True,
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        )
        runs[phase] = json.loads(out.stdout.strip().splitlines()[-1])
    import pyarrow.parquet as pq

    table = pq.read_table(tmp_path / "candidates.parquet", columns=["qid", "docid"])
    distinct = len(set(zip(table["qid"].to_pylist(), table["docid"].to_pylist(), strict=True)))
    assert runs["cold"]["pairs"] == runs["warm"]["pairs"] == 3000
    assert runs["cold"]["scored"] == distinct and runs["warm"]["scored"] == 0
    assert runs["cold"]["peak_delta_mb"] >= 0 and runs["cold"]["bytes_per_pair"] >= 0
    scores = pq.read_table(tmp_path / "scores.parquet")
    assert scores.num_rows == 3000
    assert scores.column_names[-3:] == ["teacher", "dropped", "teacher_raw"]  # z-scored, de-noised


@pytest.mark.slow  # four processes started (two ranks, two sizes): ~30 s; the stage itself is tested fast
@pytest.mark.skipif(sys.platform != "linux", reason="gloo on a Linux CPU")
def test_score_memory_measures_the_final_pass_shared_by_ranks(tmp_path: Path) -> None:
    """``score_memory.py --world 2 --read final``: two gloo ranks score their shares, then each
    writes its row range of the final pass (the stage's ``assemble_share``) and rank 0 joins them."""
    import subprocess

    script = Path(__file__).resolve().parents[1] / "scripts" / "bench" / "score_memory.py"
    out = subprocess.run(
        [sys.executable, str(script), "--pairs", "2000", "6000", "--world", "2", "--read", "final"],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        timeout=300,
    ).stdout.strip().splitlines()
    ranks = json.loads(out[1].split(" ", 1)[1])
    assert [r["rank"] for r in ranks] == [0, 1] and all(r["rows"] == 6000 for r in ranks)
    assert all(r["peak_delta_mb"] >= r["part_peak_delta_mb"] >= 0 for r in ranks)
    assert out[-1].startswith("world 2, read final: bytes per further pair, per rank:")


def test_profile_encoder_bf16_runs_every_model_call_under_bf16_autocast(monkeypatch, tmp_path) -> None:
    """profile_encoder.py --precision bf16 (docs/BENCHMARKS.md, Xeon-AMX-2): the profile and the
    side-by-side settings run under the autocast hardware.precision=bf16 uses; fp32 under none."""
    import bench.profile_encoder as profile_encoder

    seen: dict = {}

    def fake_run(*args):
        seen.update(enabled=torch.is_autocast_enabled("cpu"), dtype=torch.get_autocast_dtype("cpu"), precision=args[-1])
        return {}

    monkeypatch.setattr(profile_encoder, "_run", fake_run)
    profile_encoder.run(1, 8, 1, tmp_path, precision="bf16")
    assert seen == {"enabled": True, "dtype": torch.bfloat16, "precision": "bf16"}
    profile_encoder.run(1, 8, 1, tmp_path)
    assert seen["enabled"] is False and seen["precision"] == "fp32"


def test_ceiling_counts_the_tokens_of_the_forwards_encode_runs(tiny_bi_encoder: Path) -> None:
    """ceiling.py's bi_encoder_encode case counts the tokens the backbone was given in each of
    encode's forwards (each cut to its rows' padding under the runtime's caps), not the padded batch."""
    from bench.ceiling import _encoder_rate, pipeline_forwards

    from distillrank.models.bi_encoder import BiEncoder
    from distillrank.runtime import Runtime

    encoder = BiEncoder.load(tiny_bi_encoder)
    texts = ["word " * 30, "word " * 30, "a b", "a", "word " * 12]
    one = int(encoder.tokenize(texts, "passage")["attention_mask"].numel())
    assert pipeline_forwards(encoder, texts, Runtime()) == [one]  # no cap: one padded forward
    capped = Runtime(max_forward_texts=2)
    forwards = pipeline_forwards(encoder, texts, capped)
    # encode sorts by length (longest first): the two 30-word passages, then the 12-word one with "a b", then "a"
    by_length = sorted(texts, key=len, reverse=True)
    expected = [int(encoder.tokenize(by_length[i : i + 2], "passage")["attention_mask"].numel()) for i in (0, 2, 4)]
    assert forwards == expected and sum(forwards) < one
    seconds, counted = _encoder_rate(encoder, texts, False, 1, capped)
    assert counted == expected and seconds > 0


def test_bench_training_steps_run_the_backward_outside_autocast(tiny_bi_encoder: Path) -> None:
    """profile_encoder.py's and ceiling.py's training steps (their bf16 cases run under autocast)
    backpropagate outside it, as the training loop does: under autocast the backward's products
    were cast to bf16 again, copies a real training step does not make."""
    from bench.ceiling import _encoder_rate
    from bench.profile_encoder import _step

    from distillrank.models.bi_encoder import BiEncoder

    encoder = BiEncoder.load(tiny_bi_encoder)
    seen: list[bool] = []
    weight = next(p for p in encoder.parameters() if p.dim() == 2)
    weight.register_hook(lambda grad: seen.append(torch.is_autocast_enabled("cpu")))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _step(encoder, ["a short passage", "another passage"], True)
        _encoder_rate(encoder, ["a short passage"], True, 1)
    assert seen and not any(seen)  # every backward ran with autocast off
    assert weight.grad is not None


def test_allocator_bench_alternates_arms_in_clean_processes(monkeypatch, tmp_path) -> None:
    """allocator.py (docs/BENCHMARKS.md, "The allocator"): each arm in its own child process, the
    two arms alternating so that drift slows both; the children's environment holds none of the
    user's malloc settings (which would make the default arm another allocator); the speed-up is
    the ratio of the arms' medians and each pair's ratio is reported."""
    import subprocess

    import bench.allocator as allocator_bench

    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=0")
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    order, seconds = [], {"default": iter([0.6, 0.5, 0.9]), "kept": iter([0.4, 0.5, 0.6])}
    real_run = subprocess.run

    def fake_run(args, env=None, **kwargs):
        if "--child" not in args:  # the machine's description (lscpu)
            return real_run(args, env=env, **kwargs)
        case, precision, arm = args[3:6]
        assert "GLIBC_TUNABLES" not in env and "MALLOC_MMAP_THRESHOLD_" not in env
        order.append((case, precision, arm))
        s = next(seconds[arm]) if (case, precision) == ("forward", "fp32") else 1.0
        result = {"seconds": s, "faults": 100 if arm == "default" else 0, "allocator": arm}
        return subprocess.CompletedProcess(args, 0, stdout="RESULT " + json.dumps(result) + "\n", stderr="")

    monkeypatch.setattr(allocator_bench.subprocess, "run", fake_run)
    result = allocator_bench.run(["fp32"], 3, 2, tmp_path, 4, 16)
    assert [arm for *_, arm in order] == ["default", "kept"] * 9  # alternating, every case and repeat
    assert {case for case, *_ in order} == {"forward", "forward_backward", "st_encode"}
    forward = result["summary"]["forward_fp32"]
    assert forward["median_ms"] == {"default": 600.0, "kept": 500.0}
    assert forward["speedup"] == pytest.approx(600 / 500)
    assert forward["pairwise_speedups"] == pytest.approx([1.5, 1.0, 1.5])
    assert forward["faults_per_step"] == {"default": 100, "kept": 0}
    assert (
        "| forward_fp32 | 600.0 (100) | 500.0 (0) | **1.20×** (1.50, 1.00, 1.50) |"
        in allocator_bench.markdown(result)
    )


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_forward_variants_change_the_layers_they_name_and_keep_the_forward(tiny_bi_encoder: Path, precision: str) -> None:
    """forward_variants.py (docs/BENCHMARKS.md, "Fused QKV, the GELU epilogue, inductor with frozen
    weights"): the fused query/key/value product and the GELU epilogue change every layer of a BERT
    and give its hidden states (fused QKV exactly: the same products, sliced)."""
    from bench.forward_variants import fuse_qkv, gelu_epilogue

    from distillrank.models.bi_encoder import BiEncoder
    from distillrank.models.half_weights import cast_linear_weights
    from distillrank.runtime import autocast

    def load() -> BiEncoder:
        encoder = BiEncoder.load(tiny_bi_encoder).eval().requires_grad_(False)
        cast_linear_weights(encoder, precision)
        return encoder

    reference, fused, epilogue = load(), load(), load()
    layers = reference.backbone.config.num_hidden_layers
    # oneDNN's bf16 inner product needs AVX-512: elsewhere (EPYC-2, AVX2) the epilogue leaves bf16 layers alone
    epilogue_layers = layers if precision == "fp32" or torch.ops.mkldnn._is_mkldnn_bf16_supported() else 0
    assert fuse_qkv(fused.backbone) == layers and gelu_epilogue(epilogue.backbone) == epilogue_layers
    assert not any(hasattr(m, "query") for m in fused.backbone.modules() if hasattr(m, "qkv"))
    inputs = reference.tokenize(["a cat sat on the mat", "stars burn hydrogen into helium, slowly"], "passage")
    with torch.inference_mode(), autocast(torch.device("cpu"), precision):
        want = reference.backbone(**inputs).last_hidden_state.float()
        assert torch.equal(fused.backbone(**inputs).last_hidden_state.float(), want)
        got = epilogue.backbone(**inputs).last_hidden_state.float()
    torch.testing.assert_close(got, want, atol=0.1 if precision == "bf16" else 1e-4, rtol=0)
