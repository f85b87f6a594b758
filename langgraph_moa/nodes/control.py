"""Nodes that steer a run without calling a model: start a turn, and join a layer.

``prepare`` checks the turn can run before any call, clears the previous turn's record and, with
a budget, plans the turn; each layer's join enforces the quorum and re-plans the budget with what
was really spent.
"""

from __future__ import annotations

from typing import Any

from langchain_core.messages import HumanMessage, ToolMessage
from langgraph.types import Overwrite

from langgraph_moa.budget import Ledger, plan
from langgraph_moa.errors import MoAInputError, MoARunError
from langgraph_moa.fitting import estimate_tokens
from langgraph_moa.graphs.state import MoAState, empty_usage
from langgraph_moa.nodes.propose import Node, ok_texts
from langgraph_moa.pricing import PriceTable
from langgraph_moa.providers import check_ready
from langgraph_moa.topology import Topology

__all__ = ["make_join", "make_prepare"]


def make_prepare(topology: Topology, *, prices: PriceTable) -> Node:
    async def prepare(state: MoAState) -> dict[str, Any]:
        """Check the turn can run, before any call, and clear the previous turn's record."""
        messages = state.get("messages") or []
        if not messages or not isinstance(messages[-1], HumanMessage | ToolMessage):
            raise MoAInputError("the conversation must end with a user message or tool results")
        if isinstance(messages[-1], HumanMessage) and not messages[-1].text.strip():
            raise MoAInputError("the prompt is empty")
        check_ready(topology)
        ledger = None
        if topology.budget is not None:
            ledger = plan(
                topology, messages, prices=prices, from_layer=1, spent_usd=0.0, spent_tokens=0
            )
        return {
            "layers": Overwrite([]),
            "usage": Overwrite(empty_usage()),
            "degraded": Overwrite(False),
            "critique": None,
            "aggregator": None,
            "fallback": None,
            "review": None,
            "ledger": ledger,
        }

    return prepare


def make_join(layer: int, topology: Topology, *, prices: PriceTable) -> Node:
    quorum = topology.layers[layer - 1].min_proposals

    async def join(state: MoAState) -> dict[str, Any]:
        """The layer is complete: go on if it reached its quorum, within the budget."""
        proposals = state["layers"][layer - 1] if len(state["layers"]) >= layer else []
        answered = sum(1 for p in proposals if p["ok"])
        if answered < quorum:
            reasons = "; ".join(f"{p['node']}: {p['error']}" for p in proposals if not p["ok"])
            raise MoARunError(
                f"layer {layer} got {answered} of {len(proposals)} proposals, below its quorum "
                f"of {quorum} ({reasons})"
            )
        old: Ledger | None = state.get("ledger")
        if old is None:
            return {}
        usage = state.get("usage") or empty_usage()
        ledger = plan(
            topology,
            state["messages"],
            prices=prices,
            from_layer=layer + 1,
            spent_usd=usage["cost_usd"] or 0.0,
            spent_tokens=usage["total_tokens"],
            already_skipped=old["skipped"],
            previous_refs_tokens=sum(estimate_tokens(t) for t in ok_texts(state, layer)),
        )
        restored = [
            f"restored {node}: layer {layer} cost less than its worst case"
            for node in old["skipped"]
            if node not in ledger["skipped"]
        ]
        new = [a for a in ledger["actions"] if a not in old["actions"]]
        ledger["actions"] = old["actions"] + restored + new
        return {"ledger": ledger}

    return join
