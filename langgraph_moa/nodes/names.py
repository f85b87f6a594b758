"""The names of the graph's nodes: what Studio, `moa graph`, records and forks all refer to."""

from __future__ import annotations

import re

from langgraph_moa.spec.combining import JUDGED_JOINS
from langgraph_moa.spec.topology import Topology

PREPARE = "prepare"
CRITIC = "critic"
REVIEW = "review"
AGGREGATOR = "aggregator"
FALLBACK = "fallback"
# the deciding step of the aggregator modes that call a model before the answer
SELECT = "select"
RANK = "rank"
WINDOW = "window"

_LAYER_NODE = re.compile(r"^L(\d+)/")


def proposer_node(layer: int, name: str) -> str:
    return f"L{layer}/{name}"


def join_node(layer: int) -> str:
    return f"L{layer}/join"


def join_judge_node(layer: int, mode: str) -> str:
    """The node of a join that asks a model: ``L2/select`` or ``L2/rank``."""
    return f"L{layer}/{mode}"


def layer_exit(topology: Topology, layer: int) -> str:
    """The last node of ``layer``: its join's judge node when the join asks a model, else the
    join node. The next layer (or the final steps) starts after it."""
    join = topology.layers[layer - 1].join
    if join is not None and join.mode in JUDGED_JOINS:
        return join_judge_node(layer, join.mode)
    return join_node(layer)


def layer_of(node: str) -> int | None:
    """The layer of a proposer or join node (``L2/qwen72`` -> 2, also ``L2/x#3``), else None."""
    found = _LAYER_NODE.match(node)
    return int(found.group(1)) if found else None
