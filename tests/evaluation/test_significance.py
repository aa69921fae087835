"""Paired t-test, Holm–Bonferroni, comparison against a baseline, and the marks in the table."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from distillrank.evaluation.significance import (
    compare_to_baseline,
    holm_adjusted,
    holm_bonferroni,
    paired_t_test,
)
from distillrank.evaluation.tables import BETTER, WORSE, results_table


def _q(values: list[float]) -> dict[str, float]:
    return {f"q{i}": v for i, v in enumerate(values)}


def test_paired_t_test_by_hand():
    a = _q([0.5, 0.7, 0.3, 0.9, 0.6])
    b = _q([0.4, 0.5, 0.35, 0.6, 0.5])
    # d = a - b = [0.1, 0.2, -0.05, 0.3, 0.1]; mean(d) = 0.65 / 5 = 0.13
    # deviations from the mean: -0.03, 0.07, -0.18, 0.17, -0.03; squares sum to 0.068
    # sd = sqrt(0.068 / 4) = sqrt(0.017) = 0.130384; se = sd / sqrt(5) = 0.058310
    # t = 0.13 / 0.058310 = 2.229482; p = 2 * P(T_4 > 2.229482) = 0.089663
    mean, sd, n = 0.13, math.sqrt(0.017), 5
    expected_t = mean / (sd / math.sqrt(n))
    assert expected_t == pytest.approx(2.229482, abs=1e-6)
    expected_p = 2 * stats.t.sf(expected_t, df=n - 1)
    assert expected_p == pytest.approx(0.089663, abs=1e-6)

    t, p = paired_t_test(a, b)
    assert t == pytest.approx(expected_t, rel=1e-9)
    assert p == pytest.approx(expected_p, rel=1e-9)
    assert p == pytest.approx(stats.ttest_rel(list(a.values()), list(b.values())).pvalue, rel=1e-9)
    t_rev, p_rev = paired_t_test(b, a)  # two-sided: symmetric
    assert t_rev == pytest.approx(-t) and p_rev == pytest.approx(p)


def test_paired_t_test_uses_only_common_queries():
    a = {**_q([0.5, 0.7, 0.3, 0.9, 0.6]), "extra_a": 1.0}
    b = {**_q([0.4, 0.5, 0.35, 0.6, 0.5]), "extra_b": 0.0}
    assert paired_t_test(a, b) == pytest.approx(
        paired_t_test(_q([0.5, 0.7, 0.3, 0.9, 0.6]), _q([0.4, 0.5, 0.35, 0.6, 0.5]))
    )


def test_identical_and_degenerate_vectors_give_no_nan():
    a = _q([0.1, 0.4, 0.4, 0.9])
    assert paired_t_test(a, dict(a)) == (0.0, 1.0)
    assert paired_t_test(_q([0.3]), _q([0.1])) == (0.0, 1.0)  # one query: no variance estimate
    assert paired_t_test({}, {}) == (0.0, 1.0)
    t, p = paired_t_test(_q([0.3, 0.5, 0.7]), _q([0.2, 0.4, 0.6]))  # constant difference 0.1
    assert t == math.inf and p == 0.0


def test_holm_by_hand():
    # m = 3, sorted: A 0.01 <= 0.05/3 = 0.0167 -> reject; C 0.03 > 0.05/2 = 0.025 -> stop,
    # so C and B (0.04) are kept although 0.04 < 0.05: the procedure steps down and stops at C.
    p = {"A": 0.01, "B": 0.04, "C": 0.03}
    assert holm_bonferroni(p, 0.05) == {"A": True, "B": False, "C": False}
    # adjusted: A 3*0.01 = 0.03; C max(0.03, 2*0.03) = 0.06; B max(0.06, 1*0.04) = 0.06
    assert holm_adjusted(p) == pytest.approx({"A": 0.03, "B": 0.06, "C": 0.06})
    # 0.01 <= 0.0167, 0.02 <= 0.025, 0.04 <= 0.05: Holm rejects all three, where plain Bonferroni
    # (every p against 0.05/3) would reject only the first.
    p = {"A": 0.01, "B": 0.02, "C": 0.04}
    assert holm_bonferroni(p, 0.05) == {"A": True, "B": True, "C": True}
    assert all((v <= 0.05) for v in holm_adjusted(p).values())
    assert holm_bonferroni({}, 0.05) == {}
    assert holm_bonferroni({"A": 0.2}, 0.05) == {"A": False}


def _per_query(n: int = 20) -> dict[str, dict[str, dict[str, float]]]:
    rng = np.random.default_rng(0)
    base = rng.uniform(0.2, 0.6, n)
    noise = rng.normal(0, 0.02, (3, n))
    systems = {
        "bm25": base,
        "better": base + 0.2 + noise[0],
        "worse": base - 0.15 + noise[1],
        "same": base + noise[2],
    }
    return {
        s: {f"q{i}": {"nDCG@10": float(v[i]), "R@100": float(v[i])} for i in range(n)}
        for s, v in systems.items()
    }


def test_compare_to_baseline_structure():
    per_query = _per_query()
    out = compare_to_baseline(per_query, "bm25", ["nDCG@10", "R@100"], alpha=0.05)
    assert set(out) == {"better", "worse", "same"}
    for system, by_measure in out.items():
        assert set(by_measure) == {"nDCG@10", "R@100"}
        for entry in by_measure.values():
            assert set(entry) == {"p", "p_holm", "significant", "delta"}
            assert 0.0 <= entry["p"] <= entry["p_holm"] <= 1.0
            values = {q: v["nDCG@10"] for q, v in per_query[system].items()}
            base = {q: v["nDCG@10"] for q, v in per_query["bm25"].items()}
            assert entry["p"] == pytest.approx(paired_t_test(values, base)[1])
    assert out["better"]["nDCG@10"]["significant"] and out["better"]["nDCG@10"]["delta"] > 0.15
    assert out["worse"]["nDCG@10"]["significant"] and out["worse"]["nDCG@10"]["delta"] < -0.1
    assert not out["same"]["nDCG@10"]["significant"]
    raw = {s: out[s]["nDCG@10"]["p"] for s in out}
    assert {s: out[s]["nDCG@10"]["p_holm"] for s in out} == pytest.approx(holm_adjusted(raw))
    with pytest.raises(KeyError):
        compare_to_baseline(per_query, "nope", ["nDCG@10"])


def test_table_marks_better_and_worse_with_a_legend():
    per_query = _per_query()
    results = {
        s: {
            "metrics": {m: float(np.mean([v[m] for v in qs.values()])) for m in ("nDCG@10", "R@100")},
            "passages_per_s": None,
            "parameters": None,
        }
        for s, qs in per_query.items()
    }
    significance = compare_to_baseline(per_query, "bm25", ["nDCG@10", "R@100"], 0.05)
    table = results_table(results, ["nDCG@10", "R@100"], significance, baseline="bm25", alpha=0.05)
    rows = {line.split("|")[1].strip(): line for line in table.splitlines() if line.startswith("| ")}
    assert rows["better"].count(BETTER) == 2 and WORSE not in rows["better"]
    assert rows["worse"].count(WORSE) == 2 and BETTER not in rows["worse"]
    assert BETTER not in rows["same"] and WORSE not in rows["same"]
    assert BETTER not in rows["bm25"] and WORSE not in rows["bm25"]
    legend = table.strip().splitlines()[-1]
    assert "bm25" in legend and "paired t-test" in legend and "Holm" in legend and "0.05" in legend
    # the baseline is inferred when not named; no significance, no marks and no legend
    assert "than bm25" in results_table(results, ["nDCG@10"], significance)
    plain = results_table(results, ["nDCG@10", "R@100"])
    assert BETTER not in plain and WORSE not in plain and "Holm" not in plain
