"""``select`` mode, the ``select`` node: the aggregator's model reads the candidates and names
the most consistent one (Universal Self-Consistency) in a final ``[[N]]`` line; the aggregator
then answers with that candidate verbatim. A failed call or a reply without that verdict (see
:mod:`langgraph_moa.nodes.judging`; asked once more with ``retry_no_verdict``) degrades the run
and follows ``on_no_answer``; a sole candidate is the answer without a call."""

from __future__ import annotations

from typing import Any

from langgraph_moa.nodes.hygiene import answer_layer
from langgraph_moa.nodes.judge_node import JudgeNode
from langgraph_moa.nodes.propose import Node
from langgraph_moa.nodes.state import AggregationRecord, MoAState
from langgraph_moa.spec.combining import Aggregator
from langgraph_moa.spec.models import PriceTable


def make_selector(agg: Aggregator, *, last_layer: int, node: str, prices: PriceTable) -> Node:
    step = JudgeNode(agg, agg.references, node=node, prices=prices)

    async def select(state: MoAState) -> dict[str, Any]:
        shown = step.candidates(state, answer_layer(state, last_layer))
        refs, references = shown.refs, shown.references
        if len(shown.kept) == 1:  # a sole candidate is the most consistent one: nothing to ask
            record = AggregationRecord(
                mode="select",
                calls=[],
                references=references,
                winner=refs[0],
                reason=f"one candidate, {refs[0]}: no selection needed",
            )
            return {"aggregation": record}
        judged, names = await step.select(state, shown, retry_no_verdict=agg.retry_no_verdict)
        record = AggregationRecord(mode="select", calls=[judged.call], references=references)
        update: dict[str, Any] = {"aggregation": record}
        if judged.picks:
            chosen = names[judged.picks[0]]
            record["winner"] = chosen
            record["reason"] = (
                f"the selector ({agg.model}) named candidate {judged.picks[0] + 1} of "
                f"{len(names)} as shown ({judged.call.get('verdict')}"
                f"{', when asked again' if judged.asked_again else ''}), which is {chosen}"
            )
            return step.finish(update, judged.outcomes, judged.requests, degraded=False)
        what = judged.failure("the selector")
        if agg.on_no_answer == "first":
            record["winner"] = refs[0]
            record["reason"] = f"{what}; rule 'first': {refs[0]}"
        else:
            record["winner"] = None
            record["used"] = refs
            record["reason"] = f"{what}; rule 'synthesize': the model writes from all candidates"
        return step.finish(update, judged.outcomes, judged.requests, degraded=True)

    return select
