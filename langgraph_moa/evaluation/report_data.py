"""The data of ``moa report``: every eval run under a folder read into rows (one per topology
and benchmark), and per benchmark the decision: the Pareto front and the recommended side.

Per benchmark the report names the Pareto front over (own $ per item, score): the sides no other
side beats on both, and the side it recommends under the stated objective (``quality``: the
highest score, ties broken by the lower own $ per item; ``cost``: the cheapest side whose score
lies inside the best side's 90% interval), with its interval and the sides the interval does not
separate from it. :mod:`langgraph_moa.evaluation.report` writes it out as Markdown and JSON,
:mod:`langgraph_moa.evaluation.report_plots` draws it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from langgraph_moa.errors import MoAInputError

SUMMARY_FILE = "summary.json"
OBJECTIVES = {
    "quality": "the highest score, ties broken by the lower own $ per item",
    "cost": "the lowest own $ per item among the sides whose score lies inside the best "
    "side's 90% interval",
}


@dataclass(frozen=True)
class ScoreRow:
    benchmark: str
    version: str
    topology: str
    role: str  # candidate or baseline
    metric: str
    score: float | None
    low: float | None
    high: float | None
    items: int
    cost: dict[str, Any]
    run: str
    judge: str | None
    paired: dict[str, Any] | None = None
    judge_usage: dict[str, Any] | None = None  # what judging the run took (on its first row)
    counts: dict[str, Any] | None = None  # items judged / unjudged / failed (older runs: None)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _rows_of(summary: dict[str, Any], run: str) -> list[ScoreRow]:
    scores = summary.get("scores") or {}
    metric = scores.get("metric", "")
    leading = (scores.get("metrics") or {}).get(metric) or {}
    rows: list[ScoreRow] = []
    judging = summary.get("judge_usage")
    for side in summary.get("topologies") or []:
        role = side.get("role", "candidate")
        value: dict[str, Any] = leading
        paired = None
        if role == "baseline":
            value = (scores.get("paired") or {}).get("baseline") or {}
            if not value and summary.get("scoring") not in (None, "pairwise"):
                value = {"n": 0}  # a scored side with no paired item: no data, not a reference
        elif scores.get("paired"):
            paired = scores["paired"]
        rows.append(
            ScoreRow(
                benchmark=str(summary.get("benchmark", "?")),
                version=str(summary.get("version", "")),
                topology=str(side.get("name", "?")),
                role=role,
                metric=metric if value else "reference",
                score=_number(value.get("value")),
                low=_number(value.get("low")),
                high=_number(value.get("high")),
                items=int(summary.get("items", 0)),
                cost=side.get("cost") or {},
                run=run,
                judge=summary.get("judge"),
                paired=paired,
                judge_usage=None if rows else judging,
                counts=side.get("counts"),
            )
        )
    return rows


def _number(value: Any) -> float | None:
    """A finite number, or None (a summary written before null replaced NaN may hold NaN)."""
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def collect(folder: Path) -> list[ScoreRow]:
    """Rows of every run found under ``folder`` (a run folder itself, or a folder of them)."""
    if not folder.is_dir():
        raise MoAInputError(f"{str(folder)!r} is not a folder of eval runs")
    found = sorted({*folder.glob(SUMMARY_FILE), *folder.glob(f"*/{SUMMARY_FILE}")})
    rows: list[ScoreRow] = []
    for path in found:
        try:
            summary = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError) as e:  # not UTF-8, not JSON, a huge int
            reason = " ".join(str(e).split())[:200]
            raise MoAInputError(f"cannot read the eval summary {str(path)!r}: {reason}") from None
        rows.extend(_rows_of(summary, path.parent.name))
    if not rows:
        raise MoAInputError(f"no eval runs under {str(folder)!r} (no */{SUMMARY_FILE})")
    return rows


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats: at most the cost (x) and at least the
    quality (y), strictly better in one. Sorted by cost."""
    front = []
    for i, (x, y) in enumerate(points):
        dominated = any(
            (x2 <= x and y2 >= y) and (x2 < x or y2 > y)
            for j, (x2, y2) in enumerate(points)
            if j != i
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i])


@dataclass(frozen=True)
class Decision:
    """What the report concludes for one benchmark."""

    benchmark: str
    objective: str
    front: list[ScoreRow]  # on the Pareto front over (own $ per item, score), by cost
    unpriced: list[ScoreRow]  # scored, but with no own $ per item: not placed on the front
    recommended: ScoreRow | None  # None when no side has a score
    close: list[ScoreRow]  # other sides whose score lies inside the recommended side's interval

    def to_dict(self) -> dict[str, Any]:
        rec = self.recommended
        return {
            "benchmark": self.benchmark,
            "objective": self.objective,
            "rule": OBJECTIVES[self.objective],
            "front": [label(r, self.front) for r in self.front],
            "unpriced": [label(r, self.unpriced) for r in self.unpriced],
            "recommended": None
            if rec is None
            else {
                "topology": rec.topology,
                "run": rec.run,
                "role": rec.role,
                "metric": rec.metric,
                "score": rec.score,
                "low": rec.low,
                "high": rec.high,
                "usd_per_item": rec.cost.get("usd_per_item"),
            },
            "within_interval": [label(r, self.close) for r in self.close],
        }


def label(row: ScoreRow, among: Sequence[ScoreRow] = ()) -> str:
    """The side's name, with its run when another side of ``among`` has the same name."""
    twins = [r for r in among if r.topology == row.topology]
    return f"{row.topology} ({row.run})" if len(twins) > 1 else row.topology


def _own_usd(row: ScoreRow) -> float | None:
    value = row.cost.get("usd_per_item")
    return None if value is None else float(value)


def decide(rows: Sequence[ScoreRow], benchmark: str, objective: str = "quality") -> Decision:
    """The Pareto front and the recommended side of ``benchmark`` under ``objective`` (a key of
    :data:`OBJECTIVES`)."""
    if objective not in OBJECTIVES:
        choices = ", ".join(OBJECTIVES)
        raise MoAInputError(f"unknown objective {objective!r} (choose {choices})")
    scored = [r for r in rows if r.benchmark == benchmark and r.score is not None]
    priced = [r for r in scored if _own_usd(r) is not None]
    points = [(_own_usd(r) or 0.0, float(r.score or 0.0)) for r in priced]
    front = [priced[i] for i in pareto_front(points)]
    unpriced = [r for r in scored if _own_usd(r) is None]
    if not scored:
        return Decision(benchmark, objective, front, unpriced, None, [])

    def cheap_first(r: ScoreRow) -> tuple[float, float]:
        usd = _own_usd(r)
        return (math.inf if usd is None else usd, -(r.score or 0.0))

    best = max(scored, key=lambda r: (r.score or 0.0, -cheap_first(r)[0]))
    chosen = best
    if objective == "cost":
        floor = best.low if best.low is not None else best.score or 0.0
        near = [r for r in priced if (r.score or 0.0) >= floor]
        if near:
            chosen = min(near, key=cheap_first)
    close = [
        r
        for r in scored
        if r is not chosen
        and chosen.low is not None
        and chosen.high is not None
        and chosen.low <= (r.score or 0.0) <= chosen.high
    ]
    return Decision(benchmark, objective, front, unpriced, chosen, close)


def in_flight(rows: Sequence[ScoreRow]) -> str:
    """How many items ran at once in these rows' runs, as words."""
    found = sorted({int(n) for r in rows if (n := r.cost.get("concurrency"))})
    if not found:
        return "several items in flight at once"
    return f"up to {'/'.join(map(str, found))} items in flight"
