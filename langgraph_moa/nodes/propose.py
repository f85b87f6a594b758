"""The proposer node: one agent of one layer answers, seeing the previous layer's answers."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from langgraph_moa.graphs.state import MoAState, Proposal
from langgraph_moa.nodes.calls import ModelPool, call_agent, call_record, usage_update
from langgraph_moa.nodes.messages import synthesis_messages
from langgraph_moa.pricing import PriceTable
from langgraph_moa.topology import Agent

__all__ = ["make_proposer", "ok_texts"]

Node = Callable[[MoAState], Coroutine[Any, Any, dict[str, Any]]]


def ok_texts(state: MoAState, layer: int) -> list[str]:
    """The successful answers of ``layer`` (1-based), in layer order; failures are left out."""
    layers = state.get("layers") or []
    if layer < 1 or layer > len(layers):
        return []
    return [p["text"] for p in layers[layer - 1] if p["ok"] and p["text"]]


def make_proposer(
    agent: Agent, *, layer: int, first_index: int, node: str, prices: PriceTable
) -> Node:
    """A node for ``agent`` in ``layer``; its samples take positions ``first_index``, ... ."""
    pool = ModelPool(agent)

    async def propose(state: MoAState) -> dict[str, Any]:
        messages = synthesis_messages(
            state["messages"], role=agent.system_prompt, references=ok_texts(state, layer - 1)
        )
        outcomes, requests = await call_agent(pool, messages)
        proposals = [
            Proposal(**call_record(agent, node, o), layer=layer, index=first_index + k, sample=k)
            for k, o in enumerate(outcomes)
        ]
        return {
            "layers": proposals,
            "usage": usage_update(agent.model, outcomes, requests, prices),
            "degraded": not all(o.ok for o in outcomes),
        }

    return propose
