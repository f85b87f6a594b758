"""The PNG plots of ``moa report``, two per benchmark like the MoA paper's cost figure: quality
against own $ per item and quality against latency (p50 wall time of one item while up to N items
of the run were in flight, N named on the axis), one point per side.

A filled dot on the Pareto front, a cross off it, the front drawn as a dashed line when it has two
points or more; the legend lists only what is drawn. Both axes start at zero; labels of sides that
share a point (or nearly) are stacked, not drawn over each other. A side with no judged item is
drawn as a "no data" note, not left out or plotted as an empty axis, and a footer counts each
side's items judged / unjudged / failed. matplotlib runs on its Agg backend (no display).
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from langgraph_moa.evaluation.report_data import ScoreRow, in_flight, label, pareto_front


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


def plot(rows: Sequence[ScoreRow], benchmark: str, axis: str, path: Path) -> bool:
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
        xlabel = f"p50 wall time per item, s ({in_flight(mine)})"
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
