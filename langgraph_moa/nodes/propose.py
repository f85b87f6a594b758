"""The proposer node: one agent of one layer answers, seeing the previous layer's answers.

Its progress, for ``stream_mode="custom"``: one ``proposer_started`` per node (with ``samples``,
the agent's ``n``), then one ``proposer_finished`` per sample, with its ``sample`` index (the
index the sample's Proposal carries).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from langgraph.config import get_stream_writer

from langgraph_moa.llm.call import call_agent
from langgraph_moa.llm.call_cache import ProposalCache
from langgraph_moa.llm.model_pool import ModelPool
from langgraph_moa.nodes.hygiene import Arranger
from langgraph_moa.nodes.messages import fitted_synthesis_messages
from langgraph_moa.nodes.records import call_record, skipped_record, usage_update
from langgraph_moa.nodes.state import CallRecord, MoAState, Proposal
from langgraph_moa.spec.agent import Agent
from langgraph_moa.spec.combining import References
from langgraph_moa.spec.models import PriceTable

Node = Callable[[MoAState], Coroutine[Any, Any, dict[str, Any]]]


def ok_texts(state: MoAState, layer: int) -> list[str]:
    """The successful answers of ``layer`` (1-based), in layer order; failures are left out."""
    layers = state.get("layers") or []
    if layer < 1 or layer > len(layers):
        return []
    return [p["text"] for p in layers[layer - 1] if p["ok"] and p["text"]]


def is_skipped(state: MoAState, node: str) -> bool:
    """Whether the budget plan left ``node`` out of this turn."""
    ledger = state.get("ledger")
    return bool(ledger and node in ledger["skipped"])


def make_proposer(
    agent: Agent,
    *,
    layer: int,
    first_index: int,
    node: str,
    prices: PriceTable,
    deadline_s: float | None = None,
    cache: ProposalCache | None = None,
    references: References | None = None,
) -> Node:
    """A node for ``agent`` in ``layer``; its samples take positions ``first_index``, ... ."""
    pool = ModelPool(agent)
    arranger = Arranger(references, node)

    def proposals(records: list[CallRecord]) -> list[Proposal]:
        return [
            Proposal(**record, layer=layer, index=first_index + k, sample=k)
            for k, record in enumerate(records)
        ]

    async def propose(state: MoAState) -> dict[str, Any]:
        if is_skipped(state, node):
            return {
                "layers": proposals([skipped_record(agent, node)] * agent.n),
                "degraded": True,
            }
        shown = arranger.arrange(state, layer - 1)
        messages, trim = fitted_synthesis_messages(agent, state["messages"], shown.texts)
        emit = get_stream_writer()  # progress for stream_mode="custom" (CLI, Studio, server)
        emit({"event": "proposer_started", "node": node, "model": agent.model, "samples": agent.n})
        outcomes, requests = await call_agent(
            pool, messages, deadline_s=deadline_s, cache=cache, node=node
        )
        records = [call_record(agent, node, o, trim) for o in outcomes]
        if shown.record is not None:
            for record in records:
                record["references"] = shown.record
        for k, record in enumerate(records):  # one event per sample, as the Proposal's sample
            emit(
                {
                    "event": "proposer_finished",
                    "node": node,
                    "sample": k,
                    "ok": record["ok"],
                    "latency_s": record["latency_s"],
                    "error": record["error"],
                }
            )
        return {
            "layers": proposals(records),
            "usage": usage_update(agent.model, outcomes, requests, prices),
            "degraded": not all(o.ok for o in outcomes),
        }

    return propose
