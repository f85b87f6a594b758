"""The evaluation's statistics on synthetic data with planted values."""

from __future__ import annotations

import numpy as np
import pytest

from langgraph_moa.evaluation.stats import (
    fit_length_controlled,
    length_controlled_win_rate,
    mean_estimate,
    paired_bootstrap,
    weighted_rate,
)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


def _planted(
    n: int, intercept: float, length_coef: float, seed: int
) -> tuple[list[float], list[float]]:
    """Outcomes of a judge that prefers longer answers: P(win) depends on the length gap."""
    rng = np.random.default_rng(seed)
    diffs = rng.normal(300.0, 400.0, size=n)  # the candidate is mostly longer
    p = _sigmoid(intercept + length_coef * np.tanh(diffs / diffs.std()))
    wins = (rng.random(n) < p).astype(float)
    return list(wins), list(diffs)


def test_lc_fit_recovers_a_planted_length_bias() -> None:
    wins, diffs = _planted(4000, intercept=-0.4, length_coef=1.5, seed=1)
    fit = fit_length_controlled(wins, diffs)
    assert abs(fit.intercept - -0.4) < 0.15
    assert abs(fit.length_coef - 1.5) < 0.3
    true_lc = 100 * float(_sigmoid(np.array(-0.4)))  # 40.1
    raw = 100 * float(np.mean(wins))
    assert raw > true_lc + 10  # the raw rate is inflated by length...
    assert abs(fit.win_rate - true_lc) < 4  # ...the length-controlled one is not


def test_lc_equals_raw_rate_without_length_effect() -> None:
    wins, diffs = _planted(3000, intercept=0.8, length_coef=0.0, seed=2)
    lc = length_controlled_win_rate(wins, diffs, resamples=100)
    assert abs(lc.value - 100 * np.mean(wins)) < 3


def test_lc_interval_covers_the_planted_value() -> None:
    wins, diffs = _planted(800, intercept=0.3, length_coef=1.0, seed=3)
    lc = length_controlled_win_rate(wins, diffs, resamples=300)
    planted = 100 * float(_sigmoid(np.array(0.3)))
    assert lc.low < planted < lc.high
    assert lc.high - lc.low < 15


def test_lc_fit_survives_all_wins() -> None:
    fit = fit_length_controlled([1.0] * 50, list(range(50)))
    assert fit.win_rate > 99


def test_bootstrap_interval_covers_the_planted_mean_about_90_percent_of_the_time() -> None:
    rng = np.random.default_rng(4)
    covered = 0
    trials = 60
    for seed in range(trials):
        sample = rng.random(200) < 0.7  # accuracy 70%
        estimate = mean_estimate(list(100.0 * sample), resamples=300, seed=seed)
        covered += estimate.low <= 70.0 <= estimate.high
    assert 0.75 * trials <= covered <= trials  # nominal 90%, with room for chance


def test_weighted_rate_counts_strong_verdicts_more() -> None:
    # one strong win (weight 3) and one plain loss (weight 1): 3/4, not 1/2
    estimate = weighted_rate([1.0, 0.0], [3.0, 1.0], resamples=50)
    assert estimate.value == 0.75


def test_paired_bootstrap_finds_a_planted_difference() -> None:
    rng = np.random.default_rng(5)
    base = rng.random(400) < 0.5
    better = base | (rng.random(400) < 0.2)  # the same items, some more right
    diff, p = paired_bootstrap(list(100.0 * better), list(100.0 * base), resamples=500)
    planted = 100 * (better.mean() - base.mean())
    assert diff.value == pytest.approx(planted) and diff.low < planted < diff.high
    assert diff.low > 0 and p < 0.01
    same, p_same = paired_bootstrap(list(100.0 * base), list(100.0 * base), resamples=100)
    assert same.value == 0 and p_same == 1.0


def test_empty_input_gives_no_number() -> None:
    estimate = mean_estimate([])
    assert estimate.n == 0 and np.isnan(estimate.value)
