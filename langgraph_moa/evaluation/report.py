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

This module writes the Markdown and the JSON; reading the runs into rows and the decision are
:mod:`langgraph_moa.evaluation.report_data`, the plots :mod:`langgraph_moa.evaluation.report_plots`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from langgraph_moa.errors import MoAInputError
from langgraph_moa.evaluation import strict_json
from langgraph_moa.evaluation.report_data import (
    OBJECTIVES,
    Decision,
    ScoreRow,
    collect,
    decide,
    in_flight,
    label,
)
from langgraph_moa.evaluation.report_plots import plot
from langgraph_moa.extras import require_extra


def _own_text(row: ScoreRow) -> str:
    """The side's own $ per item in a sentence ("$ unknown" or "unpriced" when missing)."""
    usd, unknown = row.cost.get("usd_per_item"), row.cost.get("unknown_cost_items") or 0
    if usd is None:
        return f"$ unknown for {unknown} items" if unknown else "unpriced"
    return f"{_usd(usd)}/item"


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
        lines.append(f"\nLatency: {in_flight(mine)}.")
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
            if plot(rows, benchmark, axis, path):
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
