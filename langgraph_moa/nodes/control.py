"""Nodes that steer a run without calling a model: start a turn, and join a layer."""

from __future__ import annotations

from typing import Any

from langchain_core.messages import HumanMessage
from langgraph.types import Overwrite

from langgraph_moa.errors import MoAInputError, MoARunError
from langgraph_moa.graphs.state import MoAState, empty_usage
from langgraph_moa.nodes.propose import Node
from langgraph_moa.providers import check_credentials
from langgraph_moa.topology import Topology

__all__ = ["make_join", "make_prepare"]


def make_prepare(topology: Topology) -> Node:
    async def prepare(state: MoAState) -> dict[str, Any]:
        """Check the turn can run, before any call, and clear the previous turn's record."""
        messages = state.get("messages") or []
        if not messages or not isinstance(messages[-1], HumanMessage):
            raise MoAInputError("the conversation must end with a user message")
        if not messages[-1].text.strip():
            raise MoAInputError("the prompt is empty")
        check_credentials(topology)
        return {
            "layers": Overwrite([]),
            "usage": Overwrite(empty_usage()),
            "degraded": Overwrite(False),
            "critique": None,
            "aggregator": None,
        }

    return prepare


def make_join(layer: int) -> Node:
    async def join(state: MoAState) -> dict[str, Any]:
        """The layer is complete: go on if at least one proposer answered."""
        proposals = state["layers"][layer - 1] if len(state["layers"]) >= layer else []
        if not any(p["ok"] for p in proposals):
            reasons = "; ".join(f"{p['node']}: {p['error']}" for p in proposals)
            raise MoARunError(f"every proposer of layer {layer} failed ({reasons})")
        return {}

    return join
