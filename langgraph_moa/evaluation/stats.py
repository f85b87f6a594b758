"""The statistics behind every score: means with bootstrap intervals, a paired A-vs-B bootstrap,
and AlpacaEval's length-controlled win rate.

Hand-written on numpy rather than taken from statsmodels/scikit-learn/scipy: the only model fitted
is a logistic regression with two or three coefficients, which a few Newton (IRLS) steps solve
exactly, and none of those libraries is a dependency of this project (numpy comes with the
``[eval]`` extra, through matplotlib).

Length control, and how it differs from upstream AlpacaEval 2.0
-----------------------------------------------------------------
Upstream fits, per model, ``logit P(win) = (theta_model - theta_baseline)
+ phi * tanh(len_diff / std(len_diff)) + psi * gamma_instruction`` over all its instructions, and
reports the predicted win rate with the length term set to zero. ``gamma_instruction`` is a
per-instruction difficulty fitted once on many models' outputs and fetched at run time; it is not
shipped in any package available offline, so here the model is

    logit P(win_i) = b0 + b1 * tanh(len_diff_i / sd(len_diff))

fitted by maximum likelihood on the fractional preferences ``p_i`` in [0, 1] (a tie counts 0.5;
a pair judged in both orders gives the mean of its two outcomes), with a small ridge penalty on
``b1`` as upstream regularises. The length-controlled win rate is ``100 * sigmoid(b0)``: what the
judge would prefer if both answers were equally long. Without the difficulty term the estimate is
the same in expectation when difficulty is unrelated to the length difference, and somewhat
noisier otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

_Floats = NDArray[np.float64]
_DEFAULT_RESAMPLES = 1000
_DEFAULT_LEVEL = 0.90


@dataclass(frozen=True)
class IntervalEstimate:
    """A point value with a two-sided bootstrap interval at ``level`` (percentile method).
    Over no item (``n`` 0) the numbers are NaN here and null in :meth:`to_dict`: no number."""

    value: float
    low: float
    high: float
    n: int
    level: float = _DEFAULT_LEVEL

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def to_dict(self) -> dict[str, float | int | None]:
        """The estimate for JSON: a value that is not a number (no item: ``n`` 0) is None."""
        return {
            "value": _number(self.value),
            "low": _number(self.low),
            "high": _number(self.high),
            "n": self.n,
            "level": self.level,
        }


def _number(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def bootstrap(
    statistic: Callable[[NDArray[np.intp]], float],
    n: int,
    *,
    resamples: int = _DEFAULT_RESAMPLES,
    level: float = _DEFAULT_LEVEL,
    seed: int = 0,
) -> IntervalEstimate:
    """``statistic(indices)`` on all ``n`` items, with a percentile interval from ``resamples``
    resamples of the items (drawn with replacement, seeded: the same data give the same
    interval)."""
    if n == 0:
        nan = float("nan")
        return IntervalEstimate(nan, nan, nan, 0, level)
    value = statistic(np.arange(n))
    rng = _rng(seed)
    draws = np.array([statistic(rng.integers(0, n, size=n)) for _ in range(resamples)])
    draws = draws[np.isfinite(draws)]
    tail = (1 - level) / 2 * 100
    if draws.size == 0:
        return IntervalEstimate(value, value, value, n, level)
    low, high = np.percentile(draws, [tail, 100 - tail])
    return IntervalEstimate(float(value), float(low), float(high), n, level)


def mean_estimate(
    values: Sequence[float], *, resamples: int = _DEFAULT_RESAMPLES, seed: int = 0
) -> IntervalEstimate:
    """The mean of ``values`` with its bootstrap interval."""
    data = np.asarray(values, dtype=float)
    return bootstrap(lambda idx: float(data[idx].mean()), len(data), resamples=resamples, seed=seed)


def weighted_rate(
    scores: Sequence[float],
    weights: Sequence[float],
    *,
    resamples: int = _DEFAULT_RESAMPLES,
    seed: int = 0,
) -> IntervalEstimate:
    """``sum(w * s) / sum(w)`` over items, resampling items (Arena-Hard's strong verdicts weigh
    more: each item brings its games' weights)."""
    s = np.asarray(scores, dtype=float)
    w = np.asarray(weights, dtype=float)

    def stat(idx: NDArray[np.intp]) -> float:
        total = w[idx].sum()
        return float((s[idx] * w[idx]).sum() / total) if total > 0 else float("nan")

    return bootstrap(stat, len(s), resamples=resamples, seed=seed)


def paired_bootstrap(
    a: Sequence[float], b: Sequence[float], *, resamples: int = _DEFAULT_RESAMPLES, seed: int = 0
) -> tuple[IntervalEstimate, float]:
    """Mean of ``a - b`` over the same items, its interval, and the share of resamples in which
    the difference is not above zero (a one-sided bootstrap p-value for "A beats B")."""
    diff = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    n = len(diff)
    estimate = bootstrap(lambda idx: float(diff[idx].mean()), n, resamples=resamples, seed=seed)
    if n == 0:
        return estimate, float("nan")
    rng = _rng(seed + 1)
    means = np.array([diff[rng.integers(0, n, size=n)].mean() for _ in range(resamples)])
    return estimate, float((means <= 0).mean())


@dataclass(frozen=True)
class LengthControlledFit:
    """``logit P(win) = intercept + length_coef * tanh(len_diff / scale)``."""

    intercept: float
    length_coef: float
    scale: float

    @property
    def win_rate(self) -> float:
        """Predicted win rate (0-100) at zero length difference."""
        return 100.0 / (1.0 + float(np.exp(-self.intercept)))


def _sigmoid(x: _Floats) -> _Floats:
    return 1.0 / (1.0 + np.exp(-x))


def fit_length_controlled(
    preferences: Sequence[float] | _Floats,
    length_diffs: Sequence[float] | _Floats,
    *,
    ridge: float = 1e-2,
    iterations: int = 50,
) -> LengthControlledFit:
    """Fit the logistic model above to fractional preferences by penalised IRLS (Newton)."""
    p = np.clip(np.asarray(preferences, dtype=float), 0.0, 1.0)
    d = np.asarray(length_diffs, dtype=float)
    scale = float(d.std()) or 1.0
    x = np.column_stack([np.ones_like(d), np.tanh(d / scale)])
    penalty = np.diag([0.0, ridge * len(p)])
    beta = np.zeros(2)
    for _ in range(iterations):
        mu = _sigmoid(x @ beta)
        w = np.clip(mu * (1 - mu), 1e-9, None)
        gradient = x.T @ (p - mu) - penalty @ beta
        hessian = (x.T * w) @ x + penalty
        step = np.linalg.solve(hessian + 1e-9 * np.eye(2), gradient)
        beta = beta + step
        if np.abs(step).max() < 1e-10:
            break
    # all wins or all losses: the MLE is at infinity; a bounded intercept says the same thing
    beta[0] = float(np.clip(beta[0], -30, 30))
    return LengthControlledFit(float(beta[0]), float(beta[1]), scale)


def length_controlled_win_rate(
    preferences: Sequence[float],
    length_diffs: Sequence[float],
    *,
    resamples: int = _DEFAULT_RESAMPLES,
    seed: int = 0,
) -> IntervalEstimate:
    """The length-controlled win rate (0-100) with a bootstrap interval (the model is refitted
    on every resample)."""
    p = np.asarray(preferences, dtype=float)
    d = np.asarray(length_diffs, dtype=float)
    return bootstrap(
        lambda idx: fit_length_controlled(p[idx], d[idx]).win_rate,
        len(p),
        resamples=resamples,
        seed=seed,
    )
