"""A layer's join node: the layer is complete; enforce its quorum and re-plan the budget with
what was really spent."""

from __future__ import annotations

from typing import Any

from langgraph_moa.errors import MoARunError
from langgraph_moa.nodes.budget import BudgetAccount, plan
from langgraph_moa.nodes.context_window import estimate_tokens
from langgraph_moa.nodes.propose import Node, ok_texts
from langgraph_moa.nodes.state import MoAState, empty_usage
from langgraph_moa.spec.models import PriceTable
from langgraph_moa.spec.topology import Topology


def make_join(layer: int, topology: Topology, *, prices: PriceTable) -> Node:
    quorum = topology.layers[layer - 1].min_proposals
    judged = topology.join_agent(layer) is not None  # a judge node runs after this one

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
        old: BudgetAccount | None = state.get("ledger")
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
            pending_join=judged,
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
