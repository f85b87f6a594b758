"""The aggregator node writes the final answer from the last layer's answers (and the critique),
streaming its tokens, and appends it to the conversation as an AIMessage. If it fails, the
topology's ``fallback`` decides: fail the run, or hand over to the fallback node, which answers
with the best proposal or asks a fallback model, and says so in the state.
"""

from __future__ import annotations

from typing import Any, Literal

from langchain_core.messages import AIMessage

from langgraph_moa.errors import MoARunError
from langgraph_moa.llm.chat_models import call_options
from langgraph_moa.nodes.cache import ProposalCache
from langgraph_moa.nodes.calls import (
    CallExtras,
    ModelPool,
    Outcome,
    call_agent,
    call_record,
    usage_update,
)
from langgraph_moa.nodes.context_window import Trim
from langgraph_moa.nodes.messages import fitted_synthesis_messages
from langgraph_moa.nodes.propose import Node, ok_texts
from langgraph_moa.nodes.state import FallbackRecord, MoAState
from langgraph_moa.spec.models import PriceTable
from langgraph_moa.spec.topology import Agent

__all__ = ["make_aggregator", "make_fallback", "route_after_aggregator"]


def _critique_text(state: MoAState) -> str | None:
    critique = state.get("critique")
    return critique["text"] if critique and critique["ok"] else None


def call_extras(agent: Agent, state: MoAState) -> CallExtras:
    """The request's tools and sampling overrides, which go to the final answer's writer only."""
    options = state.get("aggregator_options") or {}
    return CallExtras(
        tools=state.get("tools") or None,
        tool_choice=state.get("tool_choice"),
        options=call_options(
            agent, temperature=options.get("temperature"), max_tokens=options.get("max_tokens")
        )
        or None,
    )


async def _write_answer(
    pool: ModelPool,
    state: MoAState,
    last_layer: int,
    *,
    node: str,
    cache: ProposalCache | None,
) -> tuple[list[Outcome], int, Trim | None]:
    """One synthesis call over the last layer's answers (and the critique), with the request's
    tools and options: what the aggregator, and a fallback model, both do."""
    agent = pool.agent
    extras = call_extras(agent, state)
    messages, trim = fitted_synthesis_messages(
        agent,
        state["messages"],
        ok_texts(state, last_layer),
        critique=_critique_text(state),
        keep_tool_messages=bool(extras.tools),
    )
    outcomes, requests = await call_agent(pool, messages, extras=extras, cache=cache, node=node)
    return outcomes, requests, trim


def make_aggregator(
    agent: Agent,
    *,
    last_layer: int,
    node: str,
    prices: PriceTable,
    can_fall_back: bool,
    cache: ProposalCache | None = None,
) -> Node:
    pool = ModelPool(agent.model_copy(update={"n": 1}), streaming=True)

    async def aggregate(state: MoAState) -> dict[str, Any]:
        outcomes, requests, trim = await _write_answer(
            pool, state, last_layer, node=node, cache=cache
        )
        outcome = outcomes[0]
        update: dict[str, Any] = {
            "aggregator": call_record(agent, node, outcome, trim),
            "usage": usage_update(agent.model, outcomes, requests, prices),
        }
        if outcome.ok and outcome.message is not None:
            update["messages"] = [outcome.message]
        elif can_fall_back:
            update["degraded"] = True
        else:
            raise MoARunError(f"the aggregator ({agent.model}) failed: {outcome.error}")
        return update

    return aggregate


def route_after_aggregator(state: MoAState) -> Literal["fallback", "__end__"]:
    record = state.get("aggregator")
    return "__end__" if record and record["ok"] else "fallback"


def make_fallback(
    policy: Literal["best_proposal"] | Agent,
    *,
    last_layer: int,
    node: str,
    prices: PriceTable,
    cache: ProposalCache | None = None,
) -> Node:
    """Answer after the aggregator failed: with the best proposal, or from a fallback model.

    "Best" is the first successful proposal of the last layer in topology order (list your
    strongest proposer first).
    """
    pool = (
        ModelPool(policy.model_copy(update={"n": 1}), streaming=True)
        if isinstance(policy, Agent)
        else None
    )

    async def fallback(state: MoAState) -> dict[str, Any]:
        failed = state.get("aggregator")
        reason = f"the aggregator failed: {failed['error'] if failed else 'no answer'}"
        if pool is None:
            proposals = state["layers"][last_layer - 1]
            best = next(p for p in proposals if p["ok"] and p["text"])  # the join ensured one
            record = FallbackRecord(
                policy="best_proposal", source=best["node"], reason=reason, ok=True, error=None
            )
            return {"messages": [AIMessage(best["text"] or "")], "fallback": record}
        agent = pool.agent
        outcomes, requests, _ = await _write_answer(pool, state, last_layer, node=node, cache=cache)
        outcome = outcomes[0]
        if not outcome.ok or outcome.message is None:
            raise MoARunError(f"{reason}; the fallback ({agent.model}) failed too: {outcome.error}")
        record = FallbackRecord(
            policy="model", source=agent.model, reason=reason, ok=True, error=None
        )
        return {
            "messages": [outcome.message],
            "fallback": record,
            "usage": usage_update(agent.model, outcomes, requests, prices),
        }

    return fallback
