"""The aggregator of the modes that choose (vote, select, rank, self-moa-seq): it answers with
the chosen candidate verbatim, or writes a synthesis of the chosen candidates, streaming it.

``vote`` decides here (it needs no model call); ``select``, ``rank`` and ``self-moa-seq`` decide
in their own node before this one (``select``, ``rank``, ``window``), which leaves its choice in
the state's ``aggregation`` record. Either way the record ends up saying which candidate won and
why, and whether the answer is a candidate or a synthesis. A candidate answered verbatim that
stopped at its proposer's length limit (finish reason ``length``) makes the turn degraded, as a
truncated synthesis does, and the record says at what limit (``truncated``).
"""

from __future__ import annotations

from typing import Any

from langchain_core.messages import AIMessage

from langgraph_moa.llm.model_pool import ModelPool
from langgraph_moa.llm.usage import zero_usage
from langgraph_moa.nodes.aggregate import answer_update, write_answer
from langgraph_moa.nodes.hygiene import Arranger, answer_layer, candidates, refs_of
from langgraph_moa.nodes.propose import Node
from langgraph_moa.nodes.state import (
    AggregationRecord,
    CallRecord,
    MoAState,
    Proposal,
    Truncation,
)
from langgraph_moa.nodes.vote import Verdict, decide_vote
from langgraph_moa.spec.combining import Aggregator
from langgraph_moa.spec.models import PriceTable


def _verbatim_record(node: str, name: str, proposal: Proposal) -> CallRecord:
    """The aggregator's record when it answers with a candidate: no call, the candidate's model
    (the text's author), its text and finish reason."""
    return CallRecord(
        name=name,
        node=node,
        model=proposal["model"],
        ok=True,
        text=proposal["text"],
        error=None,
        latency_s=0.0,
        usage=zero_usage(),
        attempts=0,
        cached=False,
        trimmed=None,
        finish_reason=proposal.get("finish_reason"),
    )


def _verbatim_truncation(proposal: Proposal, limits: dict[str, int]) -> Truncation | None:
    """A proposal that stopped at its length limit: that limit (from ``limits``, node ->
    max_tokens); else None."""
    limit = limits.get(proposal["node"])
    if proposal.get("finish_reason") != "length" or limit is None:
        return None
    return Truncation(limit=limit)


def _chosen(state: MoAState, pool: list[Proposal], refs: list[str]) -> Verdict:
    """The choice the select/rank/window node left in the record, as positions in ``pool``."""
    record = AggregationRecord(**(state.get("aggregation") or {}))
    at = {ref: k for k, ref in enumerate(refs)}
    winner = record.get("winner")
    if winner is not None and winner in at:
        return Verdict(record=record, winner=at[winner])
    used = [at[r] for r in record.get("used") or [] if r in at]
    return Verdict(record=record, synthesize=used)


def make_verdict(
    agg: Aggregator,
    *,
    last_layer: int,
    node: str,
    prices: PriceTable,
    can_fall_back: bool,
    limits: dict[str, int] | None = None,
) -> Node:
    """The aggregator of the choosing modes; ``limits``: each proposer node's max_tokens."""
    limits = limits or {}
    pool = ModelPool(agg.model_copy(update={"n": 1}), streaming=True)
    arranger = Arranger(agg.references, node)

    async def aggregate(state: MoAState) -> dict[str, Any]:
        layer = answer_layer(state, last_layer)
        if agg.mode == "vote":
            kept, shown = arranger.keep(state, layer)
            refs = refs_of(state, layer, kept)
            verdict = decide_vote(agg, kept, refs, shown)
        else:
            kept = candidates(state, layer)
            refs = refs_of(state, layer, kept)
            verdict = _chosen(state, kept, refs)
        record = verdict.record
        if verdict.winner is not None:
            proposal = kept[verdict.winner]
            record["answer"], record["winner"], record["used"] = (
                "candidate",
                refs[verdict.winner],
                [],
            )
            update: dict[str, Any] = {
                "aggregator": _verbatim_record(node, agg.name or node, proposal),
                "messages": [AIMessage(proposal["text"] or "")],
                "aggregation": record,
            }
            if (cut := _verbatim_truncation(proposal, limits)) is not None:
                update["aggregator"]["truncated"] = cut
                update["degraded"] = True
            return update
        chosen = verdict.synthesize or list(range(len(kept)))
        carry = record.get("carry")
        texts = ([carry] if carry else []) + [kept[k]["text"] or "" for k in chosen]
        written = await write_answer(pool, state, texts)
        update = answer_update(
            agg, node, written, prices=prices, can_fall_back=can_fall_back, state=state
        )
        record["answer"], record["winner"] = "synthesis", None
        record["used"] = [refs[k] for k in chosen]
        update["aggregation"] = record
        return update

    return aggregate
