"""``self-moa-seq`` mode, the ``window`` node: synthesis over many candidates in a sliding
window, for more samples than fit one context (Self-MoA-Seq).

The first ``window`` candidates are synthesized into a running answer; each next step
synthesizes the running answer with the next ``window - 1`` candidates. This node runs every
step but the last; the aggregator runs the last one (streamed) from the running answer (the
record's ``carry``) and the remaining candidates. A failed step keeps the previous running
answer and is recorded; the run is marked degraded.
"""

from __future__ import annotations

from typing import Any

from langgraph_moa.llm.call import Outcome, call_agent
from langgraph_moa.nodes.hygiene import answer_layer
from langgraph_moa.nodes.judge_node import JudgeNode
from langgraph_moa.nodes.messages import fitted_synthesis_messages
from langgraph_moa.nodes.propose import Node
from langgraph_moa.nodes.state import AggregationRecord, JudgeCall, MoAState
from langgraph_moa.spec.combining import Aggregator
from langgraph_moa.spec.models import PriceTable

_CARRY = "running answer"  # how the carried synthesis is named in a step's record


def windows(count: int, size: int) -> list[list[int]]:
    """Positions per step: the first ``size``, then ``size - 1`` at a time (beside the carry)."""
    steps = [list(range(min(size, count)))]
    start = size
    while start < count:
        steps.append(list(range(start, min(start + size - 1, count))))
        start += size - 1
    return steps


def make_window(agg: Aggregator, *, last_layer: int, node: str, prices: PriceTable) -> Node:
    site = JudgeNode(agg, agg.references, node=node, prices=prices)

    async def window(state: MoAState) -> dict[str, Any]:
        shown = site.candidates(state, answer_layer(state, last_layer))
        kept, refs, references = shown.kept, shown.refs, shown.references
        order = site.arranger.order(len(kept))
        steps = windows(len(order), agg.window)
        carry: str | None = None
        calls: list[JudgeCall] = []
        outcomes: list[Outcome] = []
        requests = 0
        for step in steps[:-1]:
            members = [order[k] for k in step]
            texts = ([carry] if carry else []) + [kept[k]["text"] or "" for k in members]
            messages, _ = fitted_synthesis_messages(agg, state["messages"], texts)
            got, sent = await call_agent(site.pool, messages)
            outcomes += got
            requests += sent
            names = ([_CARRY] if carry else []) + [refs[k] for k in members]
            calls.append(JudgeCall(shown=names, reply=got[0].text, error=got[0].error, pick=None))
            if got[0].ok and got[0].text:
                carry = got[0].text
        last = [refs[order[k]] for k in steps[-1]]
        failed = sum(1 for c in calls if c["error"])
        reason = (
            f"{len(kept)} candidates in windows of {agg.window}: {len(steps)} synthesis steps"
            if len(steps) > 1
            else f"{len(kept)} candidates fit one window of {agg.window}: one synthesis"
        )
        if failed:
            reason += f" ({failed} intermediate step(s) failed and were skipped)"
        record = AggregationRecord(
            mode="self-moa-seq",
            winner=None,
            used=last,
            carry=carry,
            calls=calls,
            reason=reason,
            references=references,
        )
        return site.finish({"aggregation": record}, outcomes, requests, degraded=bool(failed))

    return window
