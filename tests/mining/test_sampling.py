"""sample_negatives: window and top sampling, determinism, config errors."""

from __future__ import annotations

import numpy as np
import pytest

from distillrank.errors import ConfigError
from distillrank.mining.sampling import sample_negatives

RANKED = [f"d{i}" for i in range(1, 51)]  # d<i> sits at rank i
POSITIVES = {"d4", "d10", "d11", "d30"}


def _window(seed: int, num: int = 8, start: int = 3, end: int = 40, ranked=RANKED, positives=POSITIVES):
    return sample_negatives(ranked, positives, num, "window", start, end, np.random.default_rng(seed))


@pytest.mark.parametrize("seed", range(20))
def test_window_respects_positives_bounds_and_count(seed: int) -> None:
    picked = _window(seed)
    assert len(picked) == 8
    docids = [d for d, _ in picked]
    ranks = [r for _, r in picked]
    assert not set(docids) & POSITIVES
    assert all(3 <= r <= 40 for r in ranks)
    assert len(set(docids)) == 8  # without replacement
    assert all(RANKED[r - 1] == d for d, r in picked)  # ranks are 1-based ranks in the list
    assert ranks == sorted(ranks)  # returned in rank order


def test_window_ranks_count_positives_before_removal() -> None:
    # Window [4, 5] holds d4 (a positive) and d5: only d5 may come back, at its rank 5.
    picked = sample_negatives(RANKED, POSITIVES, 3, "window", 4, 5, np.random.default_rng(0))
    assert picked == [("d5", 5)]


def test_window_is_deterministic_per_seed_and_varies_across_seeds() -> None:
    assert _window(7) == _window(7)
    draws = {tuple(_window(seed)) for seed in range(10)}
    assert len(draws) > 1


def test_window_covers_every_eligible_rank() -> None:
    seen = set()
    for seed in range(200):
        seen.update(r for _, r in _window(seed, num=3, start=3, end=15))
    eligible = {r for r in range(3, 16) if f"d{r}" not in POSITIVES}
    assert seen == eligible


def test_window_end_beyond_list_is_fine() -> None:
    picked = sample_negatives(RANKED[:6], set(), 10, "window", 2, 100, np.random.default_rng(0))
    assert picked == [(f"d{r}", r) for r in range(2, 7)]


def test_short_window_returns_all_of_it() -> None:
    picked = _window(0, num=10, start=8, end=12)
    assert picked == [("d8", 8), ("d9", 9), ("d12", 12)]  # d10, d11 are positives


def test_top_returns_best_ranked_non_positives() -> None:
    rng = np.random.default_rng(0)
    picked = sample_negatives(RANKED, POSITIVES, 5, "top", 3, 40, rng)
    assert picked == [("d1", 1), ("d2", 2), ("d3", 3), ("d5", 5), ("d6", 6)]
    # The window does not restrict `top` and the result does not depend on the generator.
    again = sample_negatives(RANKED, POSITIVES, 5, "top", 30, 40, np.random.default_rng(99))
    assert again == picked


def test_top_short_list_returns_all_non_positives() -> None:
    picked = sample_negatives(["d4", "a", "d10", "b"], POSITIVES, 8, "top", 1, 10, np.random.default_rng(0))
    assert picked == [("a", 2), ("b", 4)]


def test_only_positives_gives_nothing() -> None:
    for sampling in ("top", "window"):
        assert sample_negatives(["d4", "d10"], POSITIVES, 3, sampling, 1, 10, np.random.default_rng(0)) == []


def test_bad_sampling_name_raises() -> None:
    with pytest.raises(ConfigError, match="mining.sampling='random'"):
        sample_negatives(RANKED, set(), 3, "random", 1, 10, np.random.default_rng(0))


@pytest.mark.parametrize(("start", "end"), [(0, 10), (-1, 5), (5, 4), (10, 1)])
def test_empty_or_invalid_window_raises(start: int, end: int) -> None:
    for sampling in ("window", "top"):
        with pytest.raises(ConfigError, match="window"):
            sample_negatives(RANKED, set(), 3, sampling, start, end, np.random.default_rng(0))
