"""The first node of a turn: check the turn can run before any call, clear the previous turn's
record and, with a budget, plan the turn."""

from __future__ import annotations

from typing import Any

from langchain_core.messages import HumanMessage, ToolMessage
from langgraph.types import Overwrite

from langgraph_moa.errors import MoAInputError
from langgraph_moa.llm.chat_models import check_ready
from langgraph_moa.nodes.budget import plan
from langgraph_moa.nodes.propose import Node
from langgraph_moa.nodes.state import MoAState, empty_usage
from langgraph_moa.spec.models import PriceTable
from langgraph_moa.spec.topology import Topology


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
            "aggregation": None,
            "early_stop": Overwrite([]),
            "joins": Overwrite([]),
        }

    return prepare
