"""Where each node of a built MoA graph goes in its offline picture, and what its box says.

Reads ``graph.get_graph()`` (the graph that actually runs) and the topology: each node's kind
and its label (the model, the mode of a join or of the aggregator), then a simple left-to-right
column layout: a node's column is its longest path from the start, boxes sized to their text.
Nothing here calls graphviz or a web service. :mod:`langgraph_moa.cli.drawing` renders the
boxes as SVG or HTML.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol

from langchain_core.runnables.graph import Graph

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

_START = "__start__"
_END = "__end__"
_REVIEW = "review"

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
