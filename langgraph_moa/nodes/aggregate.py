"""The aggregator node: writes the final answer from the last layer's answers (and the critique),
streaming its tokens, and appends it to the conversation as an AIMessage.
"""

from __future__ import annotations

from typing import Any

from langgraph_moa.errors import MoARunError
from langgraph_moa.graphs.state import MoAState
from langgraph_moa.nodes.calls import ModelPool, call_agent, call_record, usage_update
from langgraph_moa.nodes.messages import synthesis_messages
from langgraph_moa.nodes.propose import Node, ok_texts
from langgraph_moa.pricing import PriceTable
from langgraph_moa.topology import Agent

__all__ = ["make_aggregator"]


def make_aggregator(agent: Agent, *, last_layer: int, node: str, prices: PriceTable) -> Node:
    pool = ModelPool(agent.model_copy(update={"n": 1}), streaming=True)

    async def aggregate(state: MoAState) -> dict[str, Any]:
        critique = state.get("critique")
        messages = synthesis_messages(
            state["messages"],
            role=agent.system_prompt,
            references=ok_texts(state, last_layer),
            critique=critique["text"] if critique and critique["ok"] else None,
        )
        outcomes, _ = await call_agent(pool, messages)
        outcome = outcomes[0]
        if not outcome.ok or outcome.message is None:
            raise MoARunError(f"the aggregator ({agent.model}) failed: {outcome.error}")
        return {
            "messages": [outcome.message],
            "aggregator": call_record(agent, node, outcome),
            "usage": usage_update(agent.model, outcomes, 1, prices),
        }

    return aggregate
