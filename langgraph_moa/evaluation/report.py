"""``moa report``: every eval run under a folder side by side, as a Markdown table, a JSON file
and PNG plots, and a decision: the Pareto front and the recommended side.

One row per topology and benchmark: the leading score with its 90% interval, items, calls,
tokens and $ per item, latency p50/p95 and the degraded rate; A-vs-B rows (a baseline topology
on the same items) carry the paired difference. Calls, tokens and $ per item are the topology's
own (calls the shared call cache served priced as they were made, see
:mod:`langgraph_moa.evaluation.summary`); what the runs actually paid is the "spent" column.
Below it, per judged run, what the judging took
(judgments, how many were read back from the cache, calls, tokens and $ per item, latency of a
judgment p50/p95): the judge's cost is the evaluation's, not the topology's, so it is not added
to the topology's $ per item.

Per benchmark the report names the Pareto front over (own $ per item, score): the sides no other
side beats on both, and the side it recommends under the stated objective (``quality``: the
highest score, ties broken by the lower own $ per item; ``cost``: the cheapest side whose score
lies inside the best side's 90% interval), with its interval and the sides the interval does not
separate from it.

Two plots per benchmark like the MoA paper's cost figure: quality against own $ per item and
quality against latency (p50 wall time of one item while up to N items of the run were in
flight, N named on the axis), one point per side: a filled dot on the Pareto front, a cross off
it, the front drawn as a dashed line when it has two points or more; the legend lists only what
is drawn. Both axes start at zero; labels of sides that share a point (or nearly) are stacked,
not drawn over each other. matplotlib runs on its Agg backend (no display).

Unjudged is a number here too: per run and side, the items judged, unjudged and failed are
listed under the table and in a footer of each plot; a side whose score has no item behind it
shows "no data" (never ``nan``), and is drawn in the plots as a "no data" note, not left out or
plotted as an empty axis. ``report.json`` is strict JSON (null for a missing number).
"""

from __future__ import annotations

import json
import math
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from langgraph_moa.errors import MoAInputError
from langgraph_moa.evaluation import strict_json
from langgraph_moa.extras import require_extra

_SUMMARY_FILE = "summary.json"
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
    found = sorted({*folder.glob(_SUMMARY_FILE), *folder.glob(f"*/{_SUMMARY_FILE}")})
    rows: list[ScoreRow] = []
    for path in found:
        try:
            summary = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError) as e:  # not UTF-8, not JSON, a huge int
            reason = " ".join(str(e).split())[:200]
            raise MoAInputError(f"cannot read the eval summary {str(path)!r}: {reason}") from None
        rows.extend(_rows_of(summary, path.parent.name))
    if not rows:
        raise MoAInputError(f"no eval runs under {str(folder)!r} (no */{_SUMMARY_FILE})")
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


def _own_text(row: ScoreRow) -> str:
    """The side's own $ per item in a sentence ("$ unknown" or "unpriced" when missing)."""
    usd, unknown = row.cost.get("usd_per_item"), row.cost.get("unknown_cost_items") or 0
    if usd is None:
        return f"$ unknown for {unknown} items" if unknown else "unpriced"
    return f"{_usd(usd)}/item"


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


def _decision_lines(d: Decision) -> list[str]:
    mine = [*d.front, *d.unpriced]
    lines = ["", f"- **Objective** ({d.objective}): {OBJECTIVES[d.objective]}."]
    if d.front:
        names = ", ".join(f"{label(r, mine)} ({_own_text(r)})" for r in d.front)
        lines.append(f"- **Pareto front** (own $ per item against score; cheapest first): {names}.")
    else:
        lines.append("- **Pareto front**: none (no scored side has a known own $ per item).")
    if d.unpriced:
        names = ", ".join(f"{label(r, mine)} ({_own_text(r)})" for r in d.unpriced)
        lines.append(f"- Not placed on the front (own $ per item unknown or unpriced): {names}.")
    rec = d.recommended
    if rec is None:
        lines.append("- **Recommended**: none (no side has a score).")
        return lines
    interval = f"[{_fmt(rec.low, 1)}, {_fmt(rec.high, 1)}]"
    lines.append(
        f"- **Recommended**: {label(rec, mine)}, {rec.metric.replace('_', ' ')} "
        f"{_fmt(rec.score, 1)} {interval} (90% interval), {_own_text(rec)}."
    )
    if d.close:
        names = ", ".join(f"{label(r, mine)} ({_fmt(r.score, 1)}, {_own_text(r)})" for r in d.close)
        lines.append(
            f"- Inside its interval (not separated from it by these items): {names}; "
            "more items would be needed to tell them apart."
        )
    return lines


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _usd(value: Any, unknown: int = 0) -> str:
    if value is None:
        return f"unknown ({unknown} items)" if unknown else "unpriced"
    return f"${value:.5f}" if value < 0.01 else f"${value:.3f}"


def _in_flight(rows: Sequence[ScoreRow]) -> str:
    """How many items ran at once in these rows' runs, as words."""
    found = sorted({int(n) for r in rows if (n := r.cost.get("concurrency"))})
    if not found:
        return "several items in flight at once"
    return f"up to {'/'.join(map(str, found))} items in flight"


def markdown(
    rows: Sequence[ScoreRow], plots: Sequence[Path] = (), decisions: Sequence[Decision] = ()
) -> str:
    lines = ["# Evaluation report", ""]
    lines += [
        "Calls, tokens and $ per item are each topology's own: calls served by a shared call "
        "cache are counted and priced as they were made, so a side costs what it would on new "
        'data whatever ran before it. "spent" is what these runs actually paid. Latency '
        "(p50/p95 s) is the wall time of one item while other items of the run were in flight, "
        "not the time of one request alone.",
        "",
    ]
    for benchmark in sorted({r.benchmark for r in rows}):
        mine = [r for r in rows if r.benchmark == benchmark]
        judges = sorted({r.judge for r in mine if r.judge})
        lines += [f"## {benchmark}", "", f"Version: {mine[0].version}."]
        if judges:
            lines.append(f"Judge: {', '.join(judges)}.")
        lines += [
            "",
            "| topology | run | metric | score (90% CI) | items | calls/item | tokens/item "
            "| own $/item | spent $/item | p50 s | p95 s | degraded |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in mine:
            score = (
                ("reference" if r.metric == "reference" else "no data")
                if r.score is None
                else f"{r.score:.1f} [{_fmt(r.low, 1)}, {_fmt(r.high, 1)}]"
            )
            c = r.cost
            degraded = c.get("degraded_rate")
            lines.append(
                f"| {r.topology} ({r.role}) | {r.run} | {r.metric} | {score} | {r.items} "
                f"| {_fmt(c.get('calls_per_item'), 1)} | {_fmt(c.get('tokens_per_item'), 0)} "
                f"| {_usd(c.get('usd_per_item'), c.get('unknown_cost_items') or 0)} "
                f"| {_usd(c['spent_usd_per_item']) if 'spent_usd_per_item' in c else '-'} "
                f"| {_fmt(c.get('latency_p50_s'))} "
                f"| {_fmt(c.get('latency_p95_s'))} "
                f"| {'-' if degraded is None else f'{100 * degraded:.0f}%'} |"
            )
        judged = [r for r in mine if r.judge_usage]
        if judged:
            lines += [
                "",
                "What judging took (every judgment as it was made, whether read back from the "
                "eval's cache or not):",
                "",
                "| run | judge | judgments | read back | failed | calls/item | tokens/item "
                "| $/item | p50 s | p95 s |",
                "|---|---|---|---|---|---|---|---|---|---|",
            ]
        for r in judged:
            u = r.judge_usage or {}
            n = max(r.items, 1)
            tokens = (u.get("prompt_tokens") or 0) + (u.get("completion_tokens") or 0)
            usd = u.get("cost_usd")
            lines.append(
                f"| {r.run} | {r.judge} | {u.get('judgments', 0)} | {u.get('cached', 0)} "
                f"| {u.get('failed', 0)} | {_fmt((u.get('calls') or 0) / n, 1)} "
                f"| {_fmt(tokens / n, 0)} | {_usd(None if usd is None else usd / n)} "
                f"| {_fmt(u.get('latency_p50_s'))} | {_fmt(u.get('latency_p95_s'))} |"
            )
        lines += _counts_lines(mine)
        for r in mine:
            if r.paired:
                d = r.paired["difference"]
                lines.append(
                    f"\n{r.topology} minus its baseline on the same {r.paired['items']} items: "
                    f"{d['value']:+.2f} [{d['low']:+.2f}, {d['high']:+.2f}] (paired bootstrap; "
                    f"share of resamples where it is not better: {r.paired['p_not_better']:.3f})."
                )
        lines.append(f"\nLatency: {_in_flight(mine)}.")
        for d in decisions:
            if d.benchmark == benchmark:
                lines += _decision_lines(d)
        lines.append("")
    if plots:
        lines.append("## Plots\n")
        lines += [f"![{p.stem}]({p.name})" for p in plots]
        lines.append("")
    return "\n".join(lines)


def _counts_lines(rows: Sequence[ScoreRow]) -> list[str]:
    """Per run and side: items judged, unjudged and failed (runs that recorded them)."""
    counted = [r for r in rows if r.counts]
    if not counted:
        return []
    lines = [
        "",
        "Items per side: judged (a verdict, a grade or a gold check), unjudged (an answer the "
        "judge gave no verdict on), failed (no answer):",
        "",
        "| topology | run | judged | unjudged | failed | first unjudged |",
        "|---|---|---|---|---|---|",
    ]
    for r in counted:
        c = r.counts or {}
        example = c.get("unjudged_example")
        first = f"{example['id']}: {example['why']}" if example else "-"
        first = first.replace("|", "\\|").replace("\n", " ")
        judged = c.get("judged", 0)
        lines.append(
            f"| {r.topology} ({r.role}) | {r.run} | {judged}{' (no data)' if not judged else ''} "
            f"| {c.get('unjudged', 0)} | {c.get('failed', 0)} | {first} |"
        )
    return lines


def _no_data(rows: Sequence[ScoreRow], benchmark: str) -> list[ScoreRow]:
    """The scored sides of ``benchmark`` with no score: no item judged."""
    return [
        r for r in rows if r.benchmark == benchmark and r.score is None and r.metric != "reference"
    ]


def _note_no_data(ax: Any, missing: Sequence[ScoreRow], *, alone: bool) -> None:
    """Write "no data" for the sides with no judged item on the plot (centred when alone)."""
    if not missing:
        return
    names = ", ".join(dict.fromkeys(f"{r.topology} ({r.role})" for r in missing))
    if alone:
        ax.text(
            0.5,
            0.5,
            f"no data: no item judged\n{names}",
            ha="center",
            va="center",
            transform=ax.transAxes,
            fontsize=11,
            wrap=True,
        )
        ax.set_xticks([])
        ax.set_yticks([])
        return
    ax.text(
        0.02,
        0.98,
        f"no data (no item judged): {names}",
        ha="left",
        va="top",
        transform=ax.transAxes,
        fontsize=8,
        color="tab:gray",
    )


def _note_counts(ax: Any, rows: Sequence[ScoreRow], benchmark: str) -> None:
    """A footer under the plot, below its legend: per side, the items judged / unjudged /
    failed (the figure is saved with a tight bounding box, which takes it in)."""
    counted = [r for r in rows if r.benchmark == benchmark and r.counts]
    if not counted:
        return
    parts = []
    for r in counted:
        c = r.counts or {}
        parts.append(
            f"{r.topology} ({r.role}) {c.get('judged', 0)}/{c.get('unjudged', 0)}/"
            f"{c.get('failed', 0)}"
        )
    text = textwrap.fill("items judged / unjudged / failed: " + "; ".join(parts), 110)
    ax.text(
        0.0, -0.26, text, ha="left", va="top", transform=ax.transAxes, fontsize=7, color="dimgray"
    )


def _clusters(points: Sequence[tuple[float, float]], span: tuple[float, float]) -> list[list[int]]:
    """Points close enough on the plot (within 4% of each axis) that their labels would
    overlap, grouped; each group is labelled once, its names stacked."""
    groups: list[list[int]] = []
    for i, (x, y) in enumerate(points):
        for group in groups:
            gx, gy = points[group[0]]
            if abs(x - gx) <= 0.04 * span[0] and abs(y - gy) <= 0.04 * span[1]:
                group.append(i)
                break
        else:
            groups.append([i])
    return groups


def _plot(rows: Sequence[ScoreRow], benchmark: str, axis: str, path: Path) -> bool:
    """Quality against ``axis`` (cost or latency) for one benchmark; False if nothing to plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    mine = [r for r in rows if r.benchmark == benchmark]
    key = "usd_per_item" if axis == "cost" else "latency_p50_s"
    points = [
        (r, float(r.cost[key]), float(r.score))
        for r in mine
        if r.score is not None and r.cost.get(key) is not None
    ]
    missing = _no_data(rows, benchmark)
    if not points and not missing:
        return False
    if not points:  # every side without data: say so, rather than an empty axis
        fig, ax = plt.subplots(figsize=(7, 4.6), dpi=110)
        _note_no_data(ax, missing, alone=True)
        ax.set_title(f"{benchmark}: quality vs {'own cost' if axis == 'cost' else 'latency'}")
        _note_counts(ax, rows, benchmark)
        fig.savefig(path, bbox_inches="tight")
        plt.close(fig)
        return True
    left_out = [label(r, mine) for r in mine if r.score is not None and r.cost.get(key) is None]
    scale = 1.0
    if axis == "cost":
        # fractions of a cent read badly as ticks: small costs are shown per 1,000 items
        scale = 1000.0 if max(x for _, x, _ in points) < 0.1 else 1.0
        per = "1,000 items" if scale > 1 else "item"
        xlabel = f"own $ per {per} (calls served by the cache priced as made)"
    else:
        xlabel = f"p50 wall time per item, s ({_in_flight(mine)})"
    points = [(r, x * scale, y) for r, x, y in points]
    xy = [(x, y) for _, x, y in points]
    front = pareto_front(xy)
    x_top = max(x for x, _ in xy) or 1.0
    metric = points[0][0].metric
    # scores on their own scale: percent, or a 1-10 grade
    y_top = 10.0 if metric == "mean_grade" or metric.startswith("turn_") else 100.0
    y_top = max([y_top, *(r.high or 0.0 for r, _, _ in points), *(y for _, y in xy)])
    fig, ax = plt.subplots(figsize=(7, 4.6), dpi=110)
    handles: list[Any] = []
    with_interval = [
        (r, x, y)
        for r, x, y in points
        if r.low is not None and r.high is not None and r.high > r.low
    ]
    for r, x, y in with_interval:
        assert r.low is not None and r.high is not None
        ax.errorbar(
            [x], [y], yerr=[[y - r.low], [r.high - y]], color="tab:gray", alpha=0.6, capsize=3
        )
    on = [xy[i] for i in front]
    off = [p for i, p in enumerate(xy) if i not in front]
    ax.scatter(
        [x for x, _ in on],
        [y for _, y in on],
        s=60,
        zorder=3,
        marker="o",
        c="tab:red",
        clip_on=False,
    )
    handles.append(Line2D([], [], marker="o", color="tab:red", ls="", label="on the Pareto front"))
    if off:
        ax.scatter(
            [x for x, _ in off],
            [y for _, y in off],
            s=60,
            zorder=3,
            marker="x",
            c="gray",
            clip_on=False,
        )
        handles.append(
            Line2D(
                [],
                [],
                marker="x",
                color="gray",
                ls="",
                label="dominated (another side is "
                f"{'cheaper' if axis == 'cost' else 'faster'} and at least as good)",
            )
        )
    if len(set(on)) > 1:  # a line, not a point
        ax.plot([p[0] for p in on], [p[1] for p in on], "--", color="tab:red", zorder=2)
        handles.append(Line2D([], [], ls="--", color="tab:red", label="Pareto front"))
    if with_interval:
        handles.append(Line2D([], [], color="tab:gray", alpha=0.6, label="90% interval"))
    names = [label(r, [p[0] for p in points]) for r, _, _ in points]
    for group in _clusters(xy, (x_top, y_top)):
        x, y = xy[group[0]]
        low = y < 0.08 * y_top
        ax.annotate(
            "\n".join(names[i] for i in group),
            (x, y),
            textcoords="offset points",
            xytext=(8, 4 if low else 0),
            va="bottom" if low else "center",  # clear of the tick labels under the axis
            fontsize=8,
            bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.85},
        )
    if left_out:
        ax.annotate(
            f"not drawn ({'own $ unknown or unpriced' if axis == 'cost' else 'no latency'}): "
            + ", ".join(left_out),
            (0.01, 0.98),
            xycoords="axes fraction",
            va="top",
            fontsize=8,
            color="dimgray",
        )
    ax.set_xlim(0, x_top * 1.35)
    ax.set_ylim(0, y_top * 1.05)
    ax.set_xlabel(xlabel)
    unit = "1-10" if y_top <= 10.5 else "%"
    ax.set_ylabel(f"{metric.replace('_', ' ')} ({unit})")
    ax.set_title(f"{benchmark}: quality vs {'own cost' if axis == 'cost' else 'latency'}")
    ax.grid(alpha=0.3)
    _note_no_data(ax, missing, alone=False)
    ax.legend(
        handles=handles,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.14),
        ncol=2,
        fontsize=8,
        frameon=False,
    )
    _note_counts(ax, rows, benchmark)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return True


def write_report(folder: Path, output: Path, objective: str = "quality") -> dict[str, Any]:
    """Write ``output`` (Markdown), the same data as JSON beside it (with each benchmark's
    decision under ``objective``), and the PNG plots; return what was written."""
    if objective not in OBJECTIVES:
        raise MoAInputError(f"unknown objective {objective!r} (choose {', '.join(OBJECTIVES)})")
    rows = collect(folder)
    benchmarks = sorted({r.benchmark for r in rows})
    decisions = [decide(rows, b, objective) for b in benchmarks]
    require_extra("eval", "moa report's plots")
    output.parent.mkdir(parents=True, exist_ok=True)
    plots: list[Path] = []
    for benchmark in sorted({r.benchmark for r in rows}):
        safe = "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in benchmark)
        for axis in ("cost", "latency"):
            path = output.with_name(f"{output.stem}-{safe}-{axis}.png")
            if _plot(rows, benchmark, axis, path):
                plots.append(path)
    output.write_text(markdown(rows, plots, decisions), encoding="utf-8")
    data = {
        "rows": [r.to_dict() for r in rows],
        "decisions": [d.to_dict() for d in decisions],
        "plots": [p.name for p in plots],
    }
    json_path = output.with_suffix(".json")
    strict_json.write(json_path, data)
    return {
        "markdown": str(output),
        "json": str(json_path),
        "plots": [str(p) for p in plots],
        "decisions": [d.to_dict() for d in decisions],
    }
