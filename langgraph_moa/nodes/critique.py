"""The critic node: reviews the last layer's candidates against the user's request.

A failed (or budget-skipped) critique never blocks the answer: it is recorded, the run is marked
degraded, and the aggregator proceeds without it.
"""

from __future__ import annotations

from typing import Any

from langgraph_moa.llm.call import call_agent
from langgraph_moa.llm.call_cache import ProposalCache
from langgraph_moa.llm.model_pool import ModelPool
from langgraph_moa.nodes.hygiene import answer_layer, candidates
from langgraph_moa.nodes.messages import fitted_critic_messages
from langgraph_moa.nodes.propose import Node, is_skipped
from langgraph_moa.nodes.records import call_record, skipped_record, usage_update
from langgraph_moa.nodes.state import MoAState
from langgraph_moa.spec.agent import Agent
from langgraph_moa.spec.models import PriceTable


def make_critic(
    agent: Agent,
    *,
    last_layer: int,
    node: str,
    prices: PriceTable,
    cache: ProposalCache | None = None,
) -> Node:
    pool = ModelPool(agent.model_copy(update={"n": 1}))

    async def critique(state: MoAState) -> dict[str, Any]:
        if is_skipped(state, node):
            return {"critique": skipped_record(agent, node), "degraded": True}
        layer = answer_layer(state, last_layer)
        texts = [p["text"] or "" for p in candidates(state, layer)]
        messages, trim = fitted_critic_messages(agent, state["messages"], texts)
        outcomes, requests = await call_agent(pool, messages, cache=cache, node=node)
        outcome = outcomes[0]
        return {
            "critique": call_record(agent, node, outcome, trim),
            "usage": usage_update(agent.model, outcomes, requests, prices),
            "degraded": not outcome.ok,
        }

    return critique
