"""``moa report``: every eval run under a folder side by side, as a Markdown table, a JSON file
and PNG plots.

One row per topology and benchmark: the leading score with its 90% interval, items, calls,
tokens and $ per item, latency p50/p95 and the degraded rate; A-vs-B rows (a baseline topology
on the same items) carry the paired difference. Below it, per judged run, what the judging took
(judgments, how many were read back from the cache, calls, tokens and $ per item, latency of a
judgment p50/p95): the judge's cost is the evaluation's, not the topology's, so it is not added
to the topology's $ per item. Per benchmark, two plots like the MoA paper's
cost figure: quality against $ per item and quality against latency (p50 seconds per item), one
point per topology, the Pareto front (no other point is both better and cheaper/faster) drawn as
a line through its points. matplotlib runs on its Agg backend (no display).

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

__all__ = ["SUMMARY_FILE", "Row", "collect", "pareto_front", "write_report"]

SUMMARY_FILE = "summary.json"


@dataclass(frozen=True)
class Row:
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


def _rows_of(summary: dict[str, Any], run: str) -> list[Row]:
    scores = summary.get("scores") or {}
    metric = scores.get("metric", "")
    leading = (scores.get("metrics") or {}).get(metric) or {}
    rows: list[Row] = []
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
            Row(
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


def collect(folder: Path) -> list[Row]:
    """Rows of every run found under ``folder`` (a run folder itself, or a folder of them)."""
    if not folder.is_dir():
        raise MoAInputError(f"{str(folder)!r} is not a folder of eval runs")
    found = sorted({*folder.glob(SUMMARY_FILE), *folder.glob(f"*/{SUMMARY_FILE}")})
    rows: list[Row] = []
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


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _usd(value: Any) -> str:
    if value is None:
        return "unpriced"
    return f"${value:.5f}" if value < 0.01 else f"${value:.3f}"


def markdown(rows: Sequence[Row], plots: Sequence[Path] = ()) -> str:
    lines = ["# Evaluation report", ""]
    for benchmark in sorted({r.benchmark for r in rows}):
        mine = [r for r in rows if r.benchmark == benchmark]
        judges = sorted({r.judge for r in mine if r.judge})
        lines += [f"## {benchmark}", "", f"Version: {mine[0].version}."]
        if judges:
            lines.append(f"Judge: {', '.join(judges)}.")
        lines += [
            "",
            "| topology | run | metric | score (90% CI) | items | calls/item | tokens/item "
            "| $/item | p50 s | p95 s | degraded |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
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
                f"| {_usd(c.get('usd_per_item'))} | {_fmt(c.get('latency_p50_s'))} "
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
        lines.append("")
    if plots:
        lines.append("## Plots\n")
        lines += [f"![{p.stem}]({p.name})" for p in plots]
        lines.append("")
    return "\n".join(lines)


def _counts_lines(rows: Sequence[Row]) -> list[str]:
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


def _no_data(rows: Sequence[Row], benchmark: str) -> list[Row]:
    """The scored sides of ``benchmark`` with no score: no item judged."""
    return [
        r for r in rows if r.benchmark == benchmark and r.score is None and r.metric != "reference"
    ]


def _note_no_data(ax: Any, missing: Sequence[Row], *, alone: bool) -> None:
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


def _note_counts(fig: Any, rows: Sequence[Row], benchmark: str) -> None:
    """A footer under the plot: per side, the items judged / unjudged / failed."""
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
    text = textwrap.fill("items judged / unjudged / failed: " + "; ".join(parts), 100)
    lines = text.count("\n") + 1
    fig.subplots_adjust(bottom=fig.subplotpars.bottom + 0.03 + 0.03 * lines)
    fig.text(0.01, 0.01, text, ha="left", va="bottom", fontsize=7, color="dimgray")


def _plot(rows: Sequence[Row], benchmark: str, axis: str, path: Path) -> bool:
    """Quality against ``axis`` (cost or latency) for one benchmark; False if nothing to plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key, label = {
        "cost": ("usd_per_item", "$ per item"),
        "latency": ("latency_p50_s", "latency per item, p50 (s)"),
    }[axis]
    points = [
        (r, float(r.cost[key]), float(r.score))
        for r in rows
        if r.benchmark == benchmark and r.score is not None and r.cost.get(key) is not None
    ]
    missing = _no_data(rows, benchmark)
    if not points and not missing:
        return False
    fig, ax = plt.subplots(figsize=(6, 4.2), dpi=110)
    if not points:  # every side without data: say so, rather than an empty axis
        _note_no_data(ax, missing, alone=True)
        ax.set_title(f"{benchmark}: quality vs {axis}")
        _note_counts(fig, rows, benchmark)
        fig.savefig(path)
        plt.close(fig)
        return True
    _note_no_data(ax, missing, alone=False)
    xy = [(x, y) for _, x, y in points]
    front = pareto_front(xy)
    for k, (r, x, y) in enumerate(points):
        on_front = k in front
        ax.scatter(
            [x],
            [y],
            s=60,
            zorder=3,
            marker="o" if on_front else "x",
            color="tab:red" if on_front else "tab:gray",
        )
        if r.low is not None and r.high is not None:
            ax.errorbar([x], [y], yerr=[[y - r.low], [r.high - y]], color="tab:gray", alpha=0.5)
        ax.annotate(r.topology, (x, y), textcoords="offset points", xytext=(6, 4), fontsize=8)
    ax.plot(
        [xy[i][0] for i in front],
        [xy[i][1] for i in front],
        "--",
        color="tab:red",
        label="Pareto front",
    )
    ax.set_xlabel(label)
    ax.set_ylabel(points[0][0].metric.replace("_", " "))
    ax.set_title(f"{benchmark}: quality vs {axis}")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    _note_counts(fig, rows, benchmark)
    fig.savefig(path)
    plt.close(fig)
    return True


def write_report(folder: Path, output: Path) -> dict[str, Any]:
    """Write ``output`` (Markdown), the same data as JSON beside it, and the PNG plots; return
    what was written."""
    rows = collect(folder)
    require_extra("eval", "moa report's plots")
    output.parent.mkdir(parents=True, exist_ok=True)
    plots: list[Path] = []
    for benchmark in sorted({r.benchmark for r in rows}):
        safe = "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in benchmark)
        for axis in ("cost", "latency"):
            path = output.with_name(f"{output.stem}-{safe}-{axis}.png")
            if _plot(rows, benchmark, axis, path):
                plots.append(path)
    output.write_text(markdown(rows, plots), encoding="utf-8")
    data = {"rows": [r.to_dict() for r in rows], "plots": [p.name for p in plots]}
    json_path = output.with_suffix(".json")
    strict_json.write(json_path, data)
    return {"markdown": str(output), "json": str(json_path), "plots": [str(p) for p in plots]}
