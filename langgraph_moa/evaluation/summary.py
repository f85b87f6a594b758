"""From per-item results to an eval's summary: the score with its interval, the A-vs-B comparison,
and what the answers cost (calls, tokens, $, latency p50/p95, degraded rate).

A side's calls, tokens and $ are the topology's own: calls served from the call cache (another
side's, an earlier eval's) are counted and priced as they were made, so a topology costs the same
whatever ran before it; what this eval actually paid is kept beside it (``spent_usd``). A cached
call whose cache entry did not keep its usage (a cache older than that) makes the item's own cost
unknown (None, counted in ``unknown_cost_items``), never $0.

Which score leads, per scoring:

- exact: accuracy (%, share of items whose final answer equals the gold one);
- pairwise: AlpacaEval's length-controlled win rate for ``alpaca-eval``, the verdict-weighted
  score for ``arena-hard``, the plain win rate otherwise; all three are always reported, with the
  share of pairs whose two orders agreed;
- rating: the mean 1-10 grade over every graded turn, with each turn's mean beside it.

Every interval is a 90% bootstrap over items (:mod:`langgraph_moa.evaluation.stats`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from langgraph_moa.evaluation.datasets import Scoring
from langgraph_moa.evaluation.stats import (
    IntervalEstimate,
    length_controlled_win_rate,
    mean_estimate,
    paired_bootstrap,
    weighted_rate,
)


@dataclass
class Generation:
    """One topology's answer(s) to one item, one entry per turn, with what they cost.

    ``calls``, ``tokens`` and ``cost_usd`` are the topology's own (cached calls counted and
    priced as made; ``cost_usd`` is None when a model has no price or a cached call's usage is
    unknown, ``cost_unknown`` > 0); ``spent_usd`` is what generating it paid (cached calls
    free), ``cached_calls`` how many calls the cache served."""

    answers: list[str | None]
    calls: int = 0
    tokens: int = 0
    cost_usd: float | None = None
    latency_s: float = 0.0
    degraded: bool = False
    error: str | None = None
    spent_usd: float | None = None
    cached_calls: int = 0
    cost_unknown: int = 0  # cached samples whose original usage the cache did not keep

    @property
    def ok(self) -> bool:
        return self.error is None and all(a is not None for a in self.answers)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class ItemResult:
    """What one item scored. ``score`` is the item's contribution to the leading metric's base
    (1/0 correct, preference 0-1, mean grade); None when it could not be scored."""

    id: str
    score: float | None = None
    baseline_score: float | None = None  # the baseline topology's, on a gold or graded set
    weighted: float | None = None
    weight: float | None = None
    consistent: bool | None = None
    length_diff: int | None = None
    turn_scores: list[float | None] = field(default_factory=list)
    category: str | None = None
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (nearest rank), None when there are no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def cost_summary(generations: Sequence[Generation]) -> dict[str, Any]:
    """Per item: the topology's own calls, tokens and $ (cached calls as made; $ None when a
    model has no price or a cached call's usage is unknown), what this eval spent
    (``spent_usd_per_item``), latency p50/p95 over items (every turn of an item summed, each
    item's wall time while the others in flight ran too), the degraded and failed shares."""
    n = len(generations)
    if n == 0:
        return {"items": 0}
    costs = [g.cost_usd for g in generations]
    priced = all(c is not None for c in costs)
    spent = [g.spent_usd for g in generations]
    paid = all(c is not None for c in spent)
    latencies = [g.latency_s for g in generations]
    return {
        "items": n,
        "cost_basis": "own: cached calls priced as made",
        "calls_per_item": sum(g.calls for g in generations) / n,
        "cached_calls_per_item": sum(g.cached_calls for g in generations) / n,
        "tokens_per_item": sum(g.tokens for g in generations) / n,
        "usd_per_item": sum(c or 0.0 for c in costs) / n if priced else None,
        "usd_total": sum(c or 0.0 for c in costs) if priced else None,
        "unknown_cost_items": sum(g.cost_unknown > 0 for g in generations),
        "spent_usd_per_item": sum(c or 0.0 for c in spent) / n if paid else None,
        "spent_usd_total": sum(c or 0.0 for c in spent) if paid else None,
        "latency_p50_s": percentile(latencies, 50),
        "latency_p95_s": percentile(latencies, 95),
        "seconds_per_item": sum(latencies) / n,
        "degraded_rate": sum(g.degraded for g in generations) / n,
        "failed_rate": sum(not g.ok for g in generations) / n,
    }


def _leading(benchmark: str) -> str:
    return {"alpaca-eval": "lc_win_rate", "arena-hard": "weighted_score"}.get(benchmark, "win_rate")


def summarise(
    benchmark: str,
    scoring: Scoring,
    results: Sequence[ItemResult],
    *,
    resamples: int = 1000,
) -> dict[str, Any]:
    """The metrics of one eval (every value in percent for exact and pairwise, 1-10 for
    rating), the leading one named by ``metric``, and the paired comparison when a baseline
    topology was scored on the same items."""
    scored = [(r, r.score) for r in results if r.score is not None]
    out: dict[str, Any] = {"scored": len(scored), "unscored": len(results) - len(scored)}
    metrics: dict[str, IntervalEstimate] = {}
    if scoring is Scoring.exact:
        metrics["accuracy"] = mean_estimate([100 * s for _, s in scored], resamples=resamples)
        out["metric"] = "accuracy"
    elif scoring is Scoring.pairwise:
        metrics["win_rate"] = mean_estimate([100 * s for _, s in scored], resamples=resamples)
        metrics["weighted_score"] = weighted_rate(
            [100 * (r.weighted or 0.0) for r, _ in scored],
            [r.weight or 0.0 for r, _ in scored],
            resamples=resamples,
        )
        lengths = [(s, float(r.length_diff)) for r, s in scored if r.length_diff is not None]
        metrics["lc_win_rate"] = length_controlled_win_rate(
            [s for s, _ in lengths], [d for _, d in lengths], resamples=resamples
        )
        agreed = [r.consistent for r, _ in scored if r.consistent is not None]
        out["order_agreement"] = sum(agreed) / len(agreed) if agreed else None
        out["metric"] = _leading(benchmark)
    else:
        metrics["mean_grade"] = mean_estimate([s for _, s in scored], resamples=resamples)
        turns = max((len(r.turn_scores) for r, _ in scored), default=0)
        for t in range(turns):
            values = [
                grade
                for r, _ in scored
                if t < len(r.turn_scores) and (grade := r.turn_scores[t]) is not None
            ]
            metrics[f"turn_{t + 1}"] = mean_estimate(values, resamples=resamples)
        by_category: dict[str, list[float]] = {}
        for r, s in scored:
            by_category.setdefault(r.category or "other", []).append(s)
        out["by_category"] = {c: sum(v) / len(v) for c, v in sorted(by_category.items())}
        out["metric"] = "mean_grade"
    paired = [(s, b) for r, s in scored if (b := r.baseline_score) is not None]
    if paired and scoring is not Scoring.pairwise:
        factor = 100.0 if scoring is Scoring.exact else 1.0
        diff, p = paired_bootstrap(
            [factor * s for s, _ in paired], [factor * b for _, b in paired], resamples=resamples
        )
        baseline = mean_estimate([factor * b for _, b in paired], resamples=resamples)
        out["paired"] = {
            "items": len(paired),
            "difference": diff.to_dict(),
            "baseline": baseline.to_dict(),
            "p_not_better": p,
        }
    out["metrics"] = {k: v.to_dict() for k, v in metrics.items()}
    return out
