"""Offline pictures of a built MoA graph: a standalone SVG, or an HTML page around it.

The picture is made from ``graph.get_graph()``, i.e. from the graph that actually runs, and is
annotated with the models from the topology. Nothing here calls a web service or graphviz: the
layout is a simple left-to-right column layout computed in this module.

Why one module of some 570 lines: it has one job, the picture, and its two halves are one
computation: the layout sizes each box from the width of the very text the renderer writes in
it, in the same fonts, and the renderer places edges, legend and canvas from the layout's boxes.
Split in two, the halves would share the box, the font sizes, the text measure and the layout
itself: a seam that would only be crossed, never kept.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Protocol

from langchain_core.runnables.graph import Graph

from langgraph_moa.errors import MoAInputError
from langgraph_moa.graphs.names import (
    AGGREGATOR,
    CRITIC,
    FALLBACK,
    PREPARE,
    RANK,
    SELECT,
    WINDOW,
    join_node,
    layer_exit,
    proposer_node,
)
from langgraph_moa.spec.agent import Agent
from langgraph_moa.spec.combining import Aggregator, EarlyStop, LayerJoin
from langgraph_moa.spec.topology import Topology

_SUPPORTED_SUFFIXES = (".svg", ".html", ".htm")

_START = "__start__"
_END = "__end__"
_REVIEW = "review"
_SVG_NS = "http://www.w3.org/2000/svg"

# kind -> (fill, stroke, legend label); the order is the legend's order.
_STYLES: dict[str, tuple[str, str, str]] = {
    "terminal": ("#e5e7eb", "#6b7280", "start / end"),
    "prepare": ("#e0e7ff", "#6366f1", "prepare"),
    "proposer": ("#dbeafe", "#3b82f6", "proposer"),
    "join": ("#f1f5f9", "#64748b", "join"),
    "critic": ("#fef3c7", "#d97706", "critic"),
    "review": ("#fce7f3", "#db2777", "human review"),
    "judge": ("#ede9fe", "#7c3aed", "select / rank / window"),
    "aggregator": ("#dcfce7", "#16a34a", "aggregator"),
    "fallback": ("#fee2e2", "#dc2626", "fallback"),
    "other": ("#ffffff", "#9ca3af", "other"),
}

_FONT = "system-ui, -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif"
_TITLE_SIZE = 12
_SUB_SIZE = 11
_PAD_X = 12
_MIN_BOX_W = 84
_TERMINAL_W = 56
_TERMINAL_H = 26
_ONE_LINE_H = 34
_TWO_LINE_H = 46
_COL_GAP = 72
_ROW_GAP = 16
_MARGIN = 20
_LEGEND_H = 30
_EDGE_COLOUR = "#4b5563"
_AGENT_KINDS = frozenset({"proposer", "critic", "judge", "aggregator", "fallback"})
_JOIN_RE = re.compile(r"^L\d+/join$")


class _Drawable(Protocol):
    """Anything that can hand out a drawable graph (a compiled LangGraph graph does)."""

    def get_graph(self) -> Graph: ...


@dataclass
class _Box:
    """One node as drawn: what it is, what it says, and where it sits."""

    node_id: str
    kind: str
    title: str
    subtitle: str | None
    column: int
    width: float = 0.0
    height: float = 0.0
    x: float = 0.0
    y: float = 0.0

    @property
    def cx(self) -> float:
        return self.x + self.width / 2

    @property
    def cy(self) -> float:
        return self.y + self.height / 2


def _drawable(graph: _Drawable | Graph) -> Graph:
    return graph if isinstance(graph, Graph) else graph.get_graph()


def _model_label(agent: Agent) -> str:
    return agent.model if agent.n == 1 else f"{agent.model} \u00d7{agent.n}"


def _early_stop_label(setting: EarlyStop) -> str:
    if setting.agreement is not None:
        return f"stop if {setting.agreement:g} agree ({setting.extract})"
    return f"stop if similarity \u2265 {setting.similarity:g}"


def _join_label(join: LayerJoin, judge: Agent) -> str:
    """A layer join that asks a model: what it passes on, and its judge."""
    if join.mode == "select":
        return f"select (USC) · {judge.model} · passes on 1"
    keep = join.keep or 1
    return f"rank {join.judge} · {judge.model} · passes on the top {keep}"


def _mode_annotations(agg: Aggregator) -> dict[str, tuple[str, str | None]]:
    """The aggregator (and its deciding node), labelled with the mode it works in."""
    model = _model_label(agg)
    if agg.mode == "vote":
        model_call = " (no model call)" if agg.on_tie == agg.on_no_answer == "first" else ""
        return {AGGREGATOR: ("aggregator", f"vote by {agg.extract}{model_call}")}
    if agg.mode == "select":
        return {
            SELECT: ("judge", f"select (USC) \u00b7 {model}"),
            AGGREGATOR: ("aggregator", "the selected candidate"),
        }
    if agg.mode == "rank":
        answer = f"fuse top {agg.fuse} \u00b7 {model}" if agg.fuse else "the best candidate"
        return {
            RANK: ("judge", f"rank {agg.judge} \u00b7 {model}"),
            AGGREGATOR: ("aggregator", answer),
        }
    if agg.mode == "self-moa-seq":
        return {
            WINDOW: ("judge", f"windows of {agg.window} \u00b7 {model}"),
            AGGREGATOR: ("aggregator", f"last window \u00b7 {model}"),
        }
    return {AGGREGATOR: ("aggregator", model)}


def _annotations(topology: Topology) -> dict[str, tuple[str, str | None]]:
    """Node id -> (kind, second line) for every node the topology knows about."""
    known: dict[str, tuple[str, str | None]] = {PREPARE: ("prepare", None)}
    for number, layer in enumerate(topology.layers, 1):
        for agent in layer.proposers:
            known[proposer_node(number, agent.name or "")] = ("proposer", _model_label(agent))
        limits = []
        if layer.deadline_s is not None:
            limits.append(f"deadline {layer.deadline_s:g} s")
        if layer.min_proposals > 1:
            limits.append(f"min {layer.min_proposals}")
        join = layer.join
        if join is not None and join.mode == "vote":
            limits.append(f"passes on the majority ({join.extract})")
        stop = [_early_stop_label(layer.early_stop)] if layer.early_stop is not None else []
        judge = topology.join_agent(number)
        if join is not None and judge is not None:  # its own node, which checks the early stop
            known[layer_exit(topology, number)] = (
                "judge",
                " · ".join([_join_label(join, judge), *stop]),
            )
        else:
            limits += stop
        known[join_node(number)] = ("join", " · ".join(limits) or None)
    if topology.critic is not None:
        known[CRITIC] = ("critic", _model_label(topology.critic))
    known.update(_mode_annotations(topology.aggregator))
    if isinstance(topology.fallback, Agent):
        known[FALLBACK] = ("fallback", _model_label(topology.fallback))
    elif topology.fallback == "best_proposal":
        known[FALLBACK] = ("fallback", "best proposal")
    known[_REVIEW] = ("review", "human")
    return known


def _kind_of(node_id: str, known: dict[str, tuple[str, str | None]]) -> tuple[str, str | None]:
    if node_id in known:
        return known[node_id]
    if node_id in (_START, _END):
        return "terminal", None
    if _JOIN_RE.match(node_id):
        return "join", None
    return "other", None


def _columns(drawn: Graph) -> dict[str, int]:
    """Longest-path depth of every node from ``__start__`` (edges closing a cycle are ignored)."""
    ids = list(drawn.nodes)
    successors: dict[str, list[str]] = {node: [] for node in ids}
    for edge in drawn.edges:
        if edge.source in successors and edge.target in successors:
            successors[edge.source].append(edge.target)

    # Depth-first search from the start (then from anything left) to find a topological order
    # and the back edges that would make "longest path" meaningless.
    state: dict[str, int] = {}  # 1: on the stack, 2: finished
    back: set[tuple[str, str]] = set()
    finished: list[str] = []
    roots = ([_START] if _START in successors else []) + ids
    for root in roots:
        if root in state:
            continue
        state[root] = 1
        stack: list[tuple[str, int]] = [(root, 0)]
        while stack:
            node, index = stack[-1]
            if index < len(successors[node]):
                stack[-1] = (node, index + 1)
                nxt = successors[node][index]
                if nxt not in state:
                    state[nxt] = 1
                    stack.append((nxt, 0))
                elif state[nxt] == 1:
                    back.add((node, nxt))
            else:
                state[node] = 2
                finished.append(node)
                stack.pop()

    depth = dict.fromkeys(ids, 0)
    for node in reversed(finished):
        for nxt in successors[node]:
            if (node, nxt) not in back:
                depth[nxt] = max(depth[nxt], depth[node] + 1)
    return depth


def _text_width(text: str, size: float) -> float:
    """A rough width for proportional text; generous so labels stay inside their boxes."""
    return len(text) * size * 0.6


def _layout(drawn: Graph, topology: Topology) -> tuple[list[_Box], float, float]:
    """Place every node; return the boxes and the width and height of the node area."""
    known = _annotations(topology)
    depth = _columns(drawn)
    boxes: list[_Box] = []
    for node_id in drawn.nodes:
        kind, subtitle = _kind_of(node_id, known)
        if kind == "terminal":
            title = "start" if node_id == _START else "end" if node_id == _END else node_id
            box = _Box(node_id, kind, title, None, depth[node_id], _TERMINAL_W, _TERMINAL_H)
        else:
            box = _Box(node_id, kind, node_id, subtitle, depth[node_id])
            widest = _text_width(node_id, _TITLE_SIZE)
            if subtitle:
                widest = max(widest, _text_width(subtitle, _SUB_SIZE))
            box.width = max(_MIN_BOX_W, round(widest + 2 * _PAD_X))
            box.height = _TWO_LINE_H if subtitle else _ONE_LINE_H
        boxes.append(box)

    n_columns = max((b.column for b in boxes), default=-1) + 1
    columns: list[list[_Box]] = [[] for _ in range(n_columns)]
    for box in boxes:
        columns[box.column].append(box)
    widths = [max(b.width for b in col) if col else 0.0 for col in columns]
    heights = [sum(b.height for b in col) + _ROW_GAP * max(len(col) - 1, 0) for col in columns]
    area_h = max(heights, default=0.0)

    x = 0.0
    for col, col_w, col_h in zip(columns, widths, heights, strict=True):
        y = (area_h - col_h) / 2
        for box in col:
            if box.kind != "terminal":  # boxes in one column share its width
                box.width = col_w
            box.x = x + (col_w - box.width) / 2
            box.y = y
            y += box.height + _ROW_GAP
        x += col_w + _COL_GAP
    area_w = max(x - _COL_GAP, 0.0)
    return boxes, area_w, area_h


def _edge_path(src: _Box, dst: _Box) -> tuple[str, float, float]:
    """SVG path data for one edge, and the lowest and highest y the curve reaches."""
    if src is dst:  # a self loop over the top right corner
        sx, sy = src.x + src.width - 14, src.y
        tx, ty = src.x + src.width, src.y + 10
        d = f"M{sx:.1f},{sy:.1f} C{sx:.1f},{sy - 30:.1f} {tx + 30:.1f},{ty:.1f} {tx:.1f},{ty:.1f}"
        return d, sy - 23, ty
    if dst.column > src.column:
        sx, sy = src.x + src.width, src.cy
        tx, ty = dst.x, dst.cy
        dx = (tx - sx) / 2
        span = dst.column - src.column
        # Edges that skip a column arch upwards so they do not run through the boxes between.
        lift = 0.0 if span == 1 else 20.0 + 45.0 * (span - 1)
        d = (
            f"M{sx:.1f},{sy:.1f} C{sx + dx:.1f},{sy - lift:.1f} "
            f"{tx - dx:.1f},{ty - lift:.1f} {tx:.1f},{ty:.1f}"
        )
        return d, min(sy, ty) - 0.75 * lift, max(sy, ty)
    # An edge back to an earlier (or the same) column loops underneath, bottom to bottom.
    sx, sy = src.cx, src.y + src.height
    tx, ty = dst.cx, dst.y + dst.height
    drop = 40.0 + 10.0 * (src.column - dst.column)
    d = f"M{sx:.1f},{sy:.1f} C{sx:.1f},{sy + drop:.1f} {tx:.1f},{ty + drop:.1f} {tx:.1f},{ty:.1f}"
    return d, min(sy, ty), max(sy, ty) + 0.75 * drop


def _attrs(**values: object) -> str:
    """Render keyword arguments as escaped XML attributes (``data_x`` becomes ``data-x``)."""
    parts = []
    for key, value in values.items():
        if value is None:
            continue
        text = f"{value:.1f}" if isinstance(value, float) else str(value)
        name = key.rstrip("_").replace("_", "-")  # class_ -> class
        parts.append(f'{name}="{escape(text, quote=True)}"')
    return " ".join(parts)


def _node_svg(box: _Box) -> str:
    fill, stroke, _ = _STYLES[box.kind]
    radius = box.height / 2 if box.kind == "terminal" else 6.0
    rect = _attrs(
        class_="box",
        x=box.x,
        y=box.y,
        width=box.width,
        height=box.height,
        rx=radius,
        fill=fill,
        stroke=stroke,
        stroke_width="1.2",
    )
    lines = [
        f"<g {_attrs(class_='node', data_node=box.node_id, data_kind=box.kind)}>",
        f"<title>{escape(box.node_id)}</title>",
        f"<rect {rect}/>",
    ]
    if box.subtitle:
        title_y, sub_y = box.y + 19, box.y + 35
    else:
        title_y, sub_y = box.cy + 4, 0.0
    weight = "normal" if box.kind == "terminal" else "600"
    lines.append(
        f'<text x="{box.cx:.1f}" y="{title_y:.1f}" text-anchor="middle" '
        f'font-size="{_TITLE_SIZE}" font-weight="{weight}" fill="#111827">'
        f"{escape(box.title)}</text>"
    )
    if box.subtitle:
        sub_class = "model" if box.kind in _AGENT_KINDS else "detail"
        lines.append(
            f'<text class="{sub_class}" x="{box.cx:.1f}" y="{sub_y:.1f}" text-anchor="middle" '
            f'font-size="{_SUB_SIZE}" fill="#374151">{escape(box.subtitle)}</text>'
        )
    lines.append("</g>")
    return "\n".join(lines)


def _legend_svg(kinds: list[str], dashed: bool, x0: float, y0: float) -> tuple[str, float]:
    """The legend as one row of swatches; returns the SVG and the row's width."""
    parts = ['<g class="legend">']
    x = x0
    for kind in kinds:
        fill, stroke, label = _STYLES[kind]
        parts.append(
            f'<rect x="{x:.1f}" y="{y0:.1f}" width="14" height="14" rx="3" fill="{fill}" '
            f'stroke="{stroke}"/>'
        )
        parts.append(
            f'<text x="{x + 19:.1f}" y="{y0 + 11:.1f}" font-size="11" fill="#374151">'
            f"{escape(label)}</text>"
        )
        x += 19 + _text_width(label, 11) + 16
    if dashed:
        parts.append(
            f'<line x1="{x:.1f}" y1="{y0 + 7:.1f}" x2="{x + 24:.1f}" y2="{y0 + 7:.1f}" '
            f'stroke="{_EDGE_COLOUR}" stroke-width="1.4" stroke-dasharray="5 4"/>'
        )
        label = "conditional edge"
        parts.append(
            f'<text x="{x + 30:.1f}" y="{y0 + 11:.1f}" font-size="11" fill="#374151">{label}</text>'
        )
        x += 30 + _text_width(label, 11)
    parts.append("</g>")
    return "\n".join(parts), x - x0


def to_svg(graph: _Drawable | Graph, topology: Topology) -> str:
    """A standalone SVG document of ``graph`` (as built from ``topology``), drawn left to right.

    Each node is a ``<g class="node" data-node="<id>" data-kind="<kind>">`` holding a
    ``<rect class="box">``; each edge is a ``<path class="edge">`` with ``data-source`` and
    ``data-target`` (dashed when the edge is conditional).
    """
    drawn = _drawable(graph)
    boxes, area_w, area_h = _layout(drawn, topology)
    by_id = {box.node_id: box for box in boxes}

    edges = [e for e in drawn.edges if e.source in by_id and e.target in by_id]
    top, bottom = 0.0, area_h
    for edge in edges:
        _, low, high = _edge_path(by_id[edge.source], by_id[edge.target])
        top, bottom = min(top, low), max(bottom, high)

    # Shift everything down so arching edges stay on the canvas.
    shift_y = _MARGIN - top
    for box in boxes:
        box.x += _MARGIN
        box.y += shift_y
    edge_parts = []
    for edge in edges:
        d, _, _ = _edge_path(by_id[edge.source], by_id[edge.target])
        edge_parts.append(
            "<path "
            + _attrs(
                class_="edge",
                data_source=edge.source,
                data_target=edge.target,
                data_conditional="true" if edge.conditional else "false",
                d=d,
                fill="none",
                stroke=_EDGE_COLOUR,
                stroke_width="1.4",
                stroke_dasharray="6 4" if edge.conditional else None,
                marker_end="url(#moa-arrow)",
            )
            + "/>"
        )

    kinds_present = {box.kind for box in boxes}
    legend_kinds = [kind for kind in _STYLES if kind in kinds_present]
    dashed = any(edge.conditional for edge in edges)
    legend_y = shift_y + bottom + 18
    legend, legend_w = _legend_svg(legend_kinds, dashed, _MARGIN, legend_y)

    width = round(max(area_w, legend_w) + 2 * _MARGIN)
    height = round(legend_y + _LEGEND_H - 8 + _MARGIN / 2)
    title = f"Mixture-of-Agents graph: {topology.name}"
    return "\n".join(
        [
            f'<svg xmlns="{_SVG_NS}" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" role="img" font-family="{_FONT}">',
            f"<title>{escape(title)}</title>",
            "<defs>",
            '<marker id="moa-arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" '
            'markerHeight="7" orient="auto-start-reverse">',
            f'<path d="M0,0 L10,5 L0,10 z" fill="{_EDGE_COLOUR}"/>',
            "</marker>",
            "</defs>",
            f'<rect width="{width}" height="{height}" fill="#ffffff"/>',
            '<g class="edges">',
            *edge_parts,
            "</g>",
            '<g class="nodes">',
            *(_node_svg(box) for box in boxes),
            "</g>",
            legend,
            "</svg>",
            "",
        ]
    )


_CSS = """
body { font-family: system-ui, -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif;
       margin: 2rem; color: #111827; background: #ffffff; }
h1 { font-size: 1.4rem; margin-bottom: 0.2rem; }
p.description { color: #4b5563; margin-top: 0; }
figure { margin: 1.5rem 0; overflow-x: auto; }
table { border-collapse: collapse; font-size: 0.9rem; }
th, td { border: 1px solid #d1d5db; padding: 0.3rem 0.6rem; text-align: left;
         vertical-align: top; }
th { background: #f3f4f6; }
td.num { text-align: right; }
td code { font-size: 0.85rem; }
"""


def _agent_row(first: str, node: str, agent: Agent) -> str:
    """One table row; ``first`` is the leading cell (empty under a cell spanning rows)."""
    return (
        f"<tr>{first}<td><code>{escape(node)}</code></td>"
        f"<td><code>{escape(agent.model)}</code></td>"
        f'<td class="num">{agent.n}</td>'
        f'<td class="num">{agent.temperature:g}</td>'
        f'<td class="num">{agent.max_tokens}</td></tr>'
    )


def _table(topology: Topology) -> str:
    rows = []
    for number, layer in enumerate(topology.layers, 1):
        role = f"L{number}"
        notes = []
        if layer.deadline_s is not None:
            notes.append(f"deadline {layer.deadline_s:g} s")
        if layer.min_proposals > 1:
            notes.append(f"min_proposals {layer.min_proposals}")
        if notes:
            role += "<br><small>" + escape(", ".join(notes)) + "</small>"
        for index, agent in enumerate(layer.proposers):
            node = proposer_node(number, agent.name or "")
            first = f'<td rowspan="{len(layer.proposers)}">{role}</td>' if index == 0 else ""
            rows.append(_agent_row(first, node, agent))
        judge = topology.join_agent(number)
        if judge is not None and layer.join is not None:
            join_role = f"L{number} join<br><small>mode {escape(layer.join.mode)}</small>"
            rows.append(_agent_row(f"<td>{join_role}</td>", layer_exit(topology, number), judge))
    if topology.critic is not None:
        rows.append(_agent_row("<td>critic</td>", CRITIC, topology.critic))
    mode = topology.aggregator.mode
    role = (
        "aggregator"
        if mode == "synthesize"
        else f"aggregator<br><small>mode {escape(mode)}</small>"
    )
    rows.append(_agent_row(f"<td>{role}</td>", AGGREGATOR, topology.aggregator))
    if isinstance(topology.fallback, Agent):
        rows.append(_agent_row("<td>fallback</td>", FALLBACK, topology.fallback))
    elif topology.fallback == "best_proposal":
        rows.append(
            f"<tr><td>fallback</td><td><code>{FALLBACK}</code></td>"
            '<td colspan="4">the best proposal (no model call)</td></tr>'
        )
    header = (
        "<tr><th>layer</th><th>node</th><th>model</th><th>n</th>"
        "<th>temperature</th><th>max_tokens</th></tr>"
    )
    return '<table class="agents">\n' + header + "\n" + "\n".join(rows) + "\n</table>"


def to_html(graph: _Drawable | Graph, topology: Topology) -> str:
    """A self-contained HTML page: heading, the inline SVG drawing and a table of the agents."""
    name = escape(topology.name)
    description = (
        f'<p class="description">{escape(topology.description)}</p>\n'
        if topology.description
        else ""
    )
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>MoA topology: {name}</title>\n"
        f"<style>{_CSS}</style>\n</head>\n<body>\n"
        f"<h1>MoA topology: {name}</h1>\n"
        f"{description}"
        f"<figure>\n{to_svg(graph, topology)}</figure>\n"
        f"<h2>Agents</h2>\n{_table(topology)}\n"
        "</body>\n</html>\n"
    )


def write_drawing(graph: _Drawable | Graph, topology: Topology, path: str | Path) -> None:
    """Write the drawing to ``path``: SVG for ``.svg``, an HTML page for ``.html``/``.htm``."""
    target = Path(path)
    suffix = target.suffix.lower()
    if suffix == ".svg":
        text = to_svg(graph, topology)
    elif suffix in (".html", ".htm"):
        text = to_html(graph, topology)
    else:
        supported = ", ".join(_SUPPORTED_SUFFIXES)
        raise MoAInputError(
            f"cannot draw to {str(target)!r}: unsupported suffix {suffix or '(none)'!r}; "
            f"use one of {supported}"
        )
    try:
        target.write_text(text, encoding="utf-8")
    except OSError as err:
        raise MoAInputError(f"cannot write drawing to {str(target)!r}: {err.strerror}") from None
