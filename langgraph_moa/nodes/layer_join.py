"""What a layer with a ``join`` setting passes on, recorded in ``joins`` with the reason.

- ``vote`` runs in the layer's join node (no model call): only the answers giving the majority
  answer (by an extractor) go on; a tie, or no readable answer, passes every answer on.
- ``select`` and ``rank`` ask a model (the join's judge) in a node of their own after the join,
  ``L<i>/select`` or ``L<i>/rank``: the answer the judge names as the most consistent goes on
  alone, or the judge's top ``keep`` answers go on, best first. The judge's verdict is read by
  contract (:mod:`langgraph_moa.nodes.judging`: a final ``[[N]]`` or ``[[3, 1, 2]]``, asked
  once more with ``retry_no_verdict``); a failed judge or a reply without a verdict passes every
  answer on (``select``, or the first with ``on_no_answer: first``) or keeps layer order
  (``rank``), and marks the run degraded.
"""

from __future__ import annotations

from typing import Any

from langgraph_moa.llm.call import Outcome
from langgraph_moa.nodes.extract import tally
from langgraph_moa.nodes.hygiene import candidates, refs_of
from langgraph_moa.nodes.judge_node import JudgeNode
from langgraph_moa.nodes.judging import Judged
from langgraph_moa.nodes.propose import Node
from langgraph_moa.nodes.rank import describe_ranking, rank_candidates
from langgraph_moa.nodes.state import JoinRecord, MoAState
from langgraph_moa.spec.agent import Agent
from langgraph_moa.spec.combining import LayerJoin
from langgraph_moa.spec.models import PriceTable


def with_layer_vote(join: Node, *, layer: int, setting: LayerJoin) -> Node:
    """``join`` followed by the layer's vote on what to pass on."""

    async def join_and_vote(state: MoAState) -> dict[str, Any]:
        update = await join(state)
        pool = candidates(state, layer)
        refs = refs_of(state, layer, pool)
        counted = tally([p["text"] or "" for p in pool], setting.extract or "", setting.pattern)
        top = counted.top
        if len(top) == 1:
            passed = [r for r, a in zip(refs, counted.extracted, strict=True) if a == top[0]]
            reason = f"{len(passed)} of {len(refs)} answers give {top[0]!r}: only they go on"
        else:
            passed = refs
            why = "a tie" if top else f"no answer could be read by extract {setting.extract!r}"
            reason = f"{why}: every answer goes on"
        record = JoinRecord(
            layer=layer, mode="vote", passed=passed, votes=counted.votes, reason=reason
        )
        return {**update, "joins": [record]}

    return join_and_vote


def make_layer_judge(
    agent: Agent, *, layer: int, setting: LayerJoin, node: str, prices: PriceTable
) -> Node:
    """The ``L<i>/select`` or ``L<i>/rank`` node of a layer whose join asks a model."""
    step = JudgeNode(agent, setting.references, node=node, prices=prices)

    async def layer_judge(state: MoAState) -> dict[str, Any]:
        shown = step.candidates(state, layer)
        kept, refs = shown.kept, shown.refs
        record = JoinRecord(
            layer=layer,
            mode=setting.mode,
            passed=[],
            votes={},
            reason="",
            references=shown.references,
        )
        degraded = False
        calls: list[Judged]
        if setting.mode == "select":
            if len(kept) < 2:
                record["passed"], record["winner"], record["calls"] = refs, None, []
                record["reason"] = f"{len(kept)} answer(s): nothing to select from, all go on"
                return {"joins": [record]}
            judged, names = await step.select(
                state, shown, retry_no_verdict=setting.retry_no_verdict
            )
            calls = [judged]
            record["calls"] = [judged.call]
            if judged.picks:
                chosen = names[judged.picks[0]]
                record["winner"], record["passed"] = chosen, [chosen]
                again = ", when asked again" if judged.asked_again else ""
                record["reason"] = (
                    f"the judge ({agent.model}) named answer {judged.picks[0] + 1} of "
                    f"{len(names)} as shown ({judged.call.get('verdict')}{again}), which is "
                    f"{chosen}: only it goes on"
                )
            else:
                degraded = True
                what = judged.failure("the judge")
                record["winner"] = None
                if setting.on_no_answer == "first":
                    record["passed"] = refs[:1]
                    record["reason"] = f"{what}; rule 'first': {refs[0]} goes on"
                else:
                    record["passed"] = refs
                    record["reason"] = f"{what}; rule 'all': every answer goes on"
        else:
            ranked = await rank_candidates(
                step,
                state,
                shown,
                judge_mode=setting.judge,
                retry_no_verdict=setting.retry_no_verdict,
            )
            calls = ranked.calls
            keep = setting.keep or 1
            ranking = [refs[k] for k in ranked.order]
            record["ranking"], record["passed"] = ranking, ranking[:keep]
            record["calls"] = [c.call for c in calls]
            if ranked.scores is not None:
                record["scores"] = ranked.scores
            how = describe_ranking(ranked, agent, setting.judge)
            record["reason"] = f"{how}: {' > '.join(ranking)}; the top {keep} go on"
            degraded = ranked.unread > 0
        outcomes: list[Outcome] = [o for c in calls for o in c.outcomes]
        requests = sum(c.requests for c in calls)
        return step.finish({"joins": [record]}, outcomes, requests, degraded=degraded)

    return layer_judge
