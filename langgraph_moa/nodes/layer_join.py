"""A layer's ``join: {mode: vote}``: after the layer, only the answers giving the majority
answer (by an extractor) are passed on to the next layer or the final steps; a tie, or no
readable answer, passes every answer on. No model call; the choice is recorded in ``joins``."""

from __future__ import annotations

from typing import Any

from langgraph_moa.nodes.extract import tally
from langgraph_moa.nodes.hygiene import candidates, refs_of
from langgraph_moa.nodes.propose import Node
from langgraph_moa.nodes.state import JoinRecord, MoAState
from langgraph_moa.spec.topology import LayerJoin

__all__ = ["with_layer_vote"]


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
