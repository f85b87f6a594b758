"""The names of the graph's nodes: what Studio, `moa graph`, records and forks all refer to."""

from __future__ import annotations

import re

__all__ = [
    "AGGREGATOR",
    "CRITIC",
    "FALLBACK",
    "PREPARE",
    "RANK",
    "REVIEW",
    "SELECT",
    "WINDOW",
    "join_node",
    "layer_of",
    "proposer_node",
]

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


def layer_of(node: str) -> int | None:
    """The layer of a proposer or join node (``L2/qwen72`` -> 2, also ``L2/x#3``), else None."""
    found = _LAYER_NODE.match(node)
    return int(found.group(1)) if found else None
