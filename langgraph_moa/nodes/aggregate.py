"""The aggregator node writes the final answer from the last layer's answers (and the critique),
streaming its tokens, and appends it to the conversation as an AIMessage. If it fails, the
topology's ``fallback`` decides: fail the run, or hand over to the fallback node, which answers
with the best proposal or asks a fallback model, and says so in the state.

An answer whose writer (the aggregator, or a fallback model) stopped at its length limit
(finish reason ``length``) is kept but makes the turn degraded, and the writer's record says so
with the limit it was made with (``truncated: {"limit": max_tokens}``); a best proposal given
as the fallback answer that stopped at its proposer's limit is marked so in the fallback record.
"""

from __future__ import annotations

from typing import Any, Literal

from langchain_core.messages import AIMessage

from langgraph_moa.errors import MoARunError
from langgraph_moa.llm.call import Outcome, call_agent
from langgraph_moa.llm.call_cache import ProposalCache
from langgraph_moa.llm.chat_models import call_options
from langgraph_moa.llm.model_pool import CallExtras, ModelPool
from langgraph_moa.nodes.context_window import Trim
from langgraph_moa.nodes.hygiene import Arranger, answer_layer, candidates, refs_of
from langgraph_moa.nodes.messages import fitted_synthesis_messages
from langgraph_moa.nodes.propose import Node
from langgraph_moa.nodes.records import call_record, usage_update
from langgraph_moa.nodes.state import AggregationRecord, FallbackRecord, MoAState, Truncation
from langgraph_moa.spec.agent import Agent
from langgraph_moa.spec.combining import References
from langgraph_moa.spec.models import PriceTable
from langgraph_moa.spec.providers import provider_kind


def _critique_text(state: MoAState) -> str | None:
    critique = state.get("critique")
    return critique["text"] if critique and critique["ok"] else None


def _call_extras(agent: Agent, state: MoAState) -> CallExtras:
    """The request's tools and sampling overrides, which go to the final answer's writer only."""
    options = state.get("aggregator_options") or {}
    # the length limit and temperature go as the provider wants them; the rest under
    # OpenAI's names, which the chat models take as call keyword arguments
    passed = {
        k: v for k, v in options.items() if k not in ("temperature", "max_tokens") and v is not None
    }
    tools = state.get("tools") or None
    sampling = call_options(
        agent, temperature=options.get("temperature"), max_tokens=options.get("max_tokens")
    )
    if tools and "response_format" in passed and provider_kind(agent.model) == "openai":
        # Given a response_format, langchain-openai sends the request through the openai SDK's
        # parsing helper, which refuses every tool not marked strict; as a plain body field the
        # format reaches the upstream as the caller gave it, with the caller's tools.
        body = dict(sampling.pop("extra_body", None) or {})
        body["response_format"] = passed.pop("response_format")
        passed["extra_body"] = body
    return CallExtras(
        tools=tools,
        tool_choice=state.get("tool_choice"),
        options=sampling | passed or None,
        max_tokens=options.get("max_tokens"),
    )


def _truncation(agent: Agent, state: MoAState, outcome: Outcome) -> Truncation | None:
    """The answer stopped at its length limit: the limit it was written with; else None."""
    if not outcome.ok or outcome.finish_reason != "length":
        return None
    options = state.get("aggregator_options") or {}
    return Truncation(limit=options.get("max_tokens") or agent.max_tokens)


async def write_answer(
    pool: ModelPool,
    state: MoAState,
    references: list[str],
    *,
    node: str = "",
    cache: ProposalCache | None = None,
) -> tuple[list[Outcome], int, Trim | None]:
    """One synthesis call over ``references`` (and the critique), with the request's tools and
    options: what the aggregator, a fallback model and the modes that fuse all do."""
    agent = pool.agent
    extras = _call_extras(agent, state)
    messages, trim = fitted_synthesis_messages(
        agent,
        state["messages"],
        references,
        critique=_critique_text(state),
        keep_tool_messages=bool(extras.tools),
    )
    outcomes, requests = await call_agent(pool, messages, extras=extras, cache=cache, node=node)
    return outcomes, requests, trim


def answer_update(
    agent: Agent,
    node: str,
    written: tuple[list[Outcome], int, Trim | None],
    *,
    prices: PriceTable,
    can_fall_back: bool,
    state: MoAState,
) -> dict[str, Any]:
    """The state update of a written answer: its record and usage, and the message (a
    truncated one degrades the turn), or (if it failed) a hand-over to the fallback, or the
    run's failure."""
    outcomes, requests, trim = written
    outcome = outcomes[0]
    update: dict[str, Any] = {
        "aggregator": call_record(agent, node, outcome, trim),
        "usage": usage_update(agent.model, outcomes, requests, prices),
    }
    if outcome.ok and outcome.message is not None:
        update["messages"] = [outcome.message]
        if (cut := _truncation(agent, state, outcome)) is not None:
            update["aggregator"]["truncated"] = cut
            update["degraded"] = True
    elif can_fall_back:
        update["degraded"] = True
    else:
        raise MoARunError(f"the aggregator ({agent.model}) failed: {outcome.error}")
    return update


def make_aggregator(
    agent: Agent,
    *,
    last_layer: int,
    node: str,
    prices: PriceTable,
    can_fall_back: bool,
    references: References | None = None,
    cache: ProposalCache | None = None,
) -> Node:
    """The synthesize aggregator: the model writes the answer from the candidates."""
    pool = ModelPool(agent.model_copy(update={"n": 1}), streaming=True)
    arranger = Arranger(references, node)

    async def aggregate(state: MoAState) -> dict[str, Any]:
        layer = answer_layer(state, last_layer)
        shown = arranger.arrange(state, layer)
        written = await write_answer(pool, state, shown.texts, node=node, cache=cache)
        update = answer_update(
            agent, node, written, prices=prices, can_fall_back=can_fall_back, state=state
        )
        if shown.record is not None:
            update["aggregator"]["references"] = shown.record
        used = refs_of(state, layer, shown.shown)
        update["aggregation"] = AggregationRecord(
            mode="synthesize",
            answer="synthesis",
            winner=None,
            used=used,
            reason=f"the model wrote the answer from {len(used)} candidate(s)",
            references=shown.record,
        )
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
    limits: dict[str, int] | None = None,
) -> Node:
    """Answer after the aggregator failed: with the best proposal, or from a fallback model
    (``limits``: each proposer node's max_tokens, to tell a best proposal that was cut).

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
        pool_of_candidates = candidates(state, answer_layer(state, last_layer))
        if pool is None:
            best = pool_of_candidates[0]  # the join ensured one
            record = FallbackRecord(
                policy="best_proposal", source=best["node"], reason=reason, ok=True, error=None
            )
            limit = (limits or {}).get(best["node"])
            if best.get("finish_reason") == "length" and limit is not None:
                record["truncated"] = Truncation(limit=limit)
            return {"messages": [AIMessage(best["text"] or "")], "fallback": record}
        agent = pool.agent
        texts = [p["text"] or "" for p in pool_of_candidates]
        outcomes, requests, _ = await write_answer(pool, state, texts, node=node, cache=cache)
        outcome = outcomes[0]
        if not outcome.ok or outcome.message is None:
            raise MoARunError(f"{reason}; the fallback ({agent.model}) failed too: {outcome.error}")
        record = FallbackRecord(
            policy="model", source=agent.model, reason=reason, ok=True, error=None
        )
        update: dict[str, Any] = {
            "messages": [outcome.message],
            "fallback": record,
            "usage": usage_update(agent.model, outcomes, requests, prices),
        }
        if (cut := _truncation(agent, state, outcome)) is not None:
            record["truncated"] = cut
            update["degraded"] = True
        return update

    return fallback
