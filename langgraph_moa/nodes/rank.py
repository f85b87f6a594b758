"""``rank`` mode, the ``rank`` node: the aggregator's model ranks the candidates, then the
aggregator answers with the best one verbatim, or (``fuse: k``) synthesizes the top k. A
layer's ``join: {mode: rank}`` ranks the same way (:func:`rank_candidates`).

``judge: listwise`` is one call that orders every candidate, its verdict a final
``[[3, 1, 2]]`` naming each exactly once. ``judge: pairwise`` asks about every pair twice, once
in each order, each verdict a final ``[[1]]`` or ``[[2]]``, so a judge that prefers a position
cannot decide: a pair counts as a win only when both orders agree, otherwise (orders that
disagree, or a game without a verdict) each side gets half a point; equal scores keep layer
order. A reply without a verdict (see :mod:`langgraph_moa.nodes.judging`; asked once more with
``retry_no_verdict``) is never guessed at: a listwise one leaves layer order standing, and any
such reply degrades the run and is counted in the reason.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from itertools import permutations
from typing import Any

from langgraph_moa.llm.call import Outcome
from langgraph_moa.nodes.hygiene import answer_layer
from langgraph_moa.nodes.judge_node import Candidates, JudgeNode
from langgraph_moa.nodes.judging import CHOICE, RANKING, Judged, judge
from langgraph_moa.nodes.prompts import PAIRWISE_REQUEST_PROMPT, RANK_REQUEST_PROMPT
from langgraph_moa.nodes.propose import Node
from langgraph_moa.nodes.state import AggregationRecord, MoAState
from langgraph_moa.spec.agent import Agent
from langgraph_moa.spec.combining import Aggregator
from langgraph_moa.spec.models import PriceTable


@dataclass
class Ranked:
    """A ranking of some candidates: positions best first, pairwise scores by name (None when
    listwise), and every judge call made."""

    order: list[int]
    scores: dict[str, float] | None
    calls: list[Judged]

    @property
    def unread(self) -> int:
        """Judge calls that ended in no verdict (or failed)."""
        return sum(1 for c in self.calls if not c.picks)


async def rank_candidates(
    step: JudgeNode,
    state: MoAState,
    candidates: Candidates,
    *,
    judge_mode: str,
    retry_no_verdict: bool = False,
) -> Ranked:
    """Rank ``candidates`` with the node's model, listwise or pairwise: the
    aggregator's rank mode and a layer's rank join both do this. One candidate ranks first with
    no call."""
    pool, agent, arranger = step.pool, step.agent, step.arranger
    kept, refs = candidates.kept, candidates.refs
    if len(kept) < 2:
        return Ranked(list(range(len(kept))), None, [])
    if judge_mode != "pairwise":
        order = arranger.order(len(kept))
        shown = [kept[k] for k in order]
        judged = await judge(
            pool,
            agent,
            state,
            shown,
            [refs[k] for k in order],
            RANK_REQUEST_PROMPT,
            RANKING,
            retry_no_verdict=retry_no_verdict,
        )
        # a verdict orders every candidate; without one, layer order stands
        ranked = [order[k] for k in judged.picks] or list(range(len(kept)))
        return Ranked(ranked, None, [judged])
    pairs = list(permutations(range(len(kept)), 2))  # (i, j) and (j, i): both orders
    results: dict[tuple[int, int], Judged] = {}

    async def one(i: int, j: int) -> None:
        results[(i, j)] = await judge(
            pool,
            agent,
            state,
            [kept[i], kept[j]],
            [refs[i], refs[j]],
            PAIRWISE_REQUEST_PROMPT,
            CHOICE,
            retry_no_verdict=retry_no_verdict,
        )

    async with asyncio.TaskGroup() as group:  # cancelled together with the node
        for i, j in pairs:
            group.create_task(one(i, j))
    scores = [0.0] * len(kept)
    for i, j in (p for p in pairs if p[0] < p[1]):
        forward, backward = results[(i, j)].picks[:1], results[(j, i)].picks[:1]
        first = [i, j][forward[0]] if forward else None
        second = [j, i][backward[0]] if backward else None
        if first is not None and first == second:
            scores[first] += 1.0
        else:
            scores[i] += 0.5
            scores[j] += 0.5
    ranked = sorted(range(len(kept)), key=lambda k: -scores[k])
    return Ranked(ranked, dict(zip(refs, scores, strict=True)), [results[p] for p in pairs])


def describe_ranking(ranked: Ranked, agent: Agent, judge_mode: str) -> str:
    """How the ranking came about, in words (judge calls without a verdict included, with the
    first one's reason)."""
    how = f"{judge_mode} judging by {agent.model}"
    calls = ranked.calls
    missing = [c for c in calls if not c.picks]
    if not missing:
        return how
    first = missing[0].failure("the judge")
    if len(missing) == len(calls):
        return f"{how} gave no verdict ({first}), so layer order stands"
    return f"{how} ({len(missing)} of {len(calls)} calls gave no verdict, first: {first})"


def make_ranker(agg: Aggregator, *, last_layer: int, node: str, prices: PriceTable) -> Node:
    step = JudgeNode(agg, agg.references, node=node, prices=prices)

    async def rank(state: MoAState) -> dict[str, Any]:
        shown = step.candidates(state, answer_layer(state, last_layer))
        ranked = await rank_candidates(
            step, state, shown, judge_mode=agg.judge, retry_no_verdict=agg.retry_no_verdict
        )
        calls = ranked.calls
        outcomes: list[Outcome] = [o for c in calls for o in c.outcomes]
        requests = sum(c.requests for c in calls)
        ranking = [shown.refs[k] for k in ranked.order]
        record = AggregationRecord(
            mode="rank",
            ranking=ranking,
            calls=[c.call for c in calls],
            references=shown.references,
        )
        if ranked.scores is not None:
            record["scores"] = ranked.scores
        how = describe_ranking(ranked, agg, agg.judge)
        if agg.fuse:
            record["winner"] = None
            record["used"] = ranking[: agg.fuse]
            record["reason"] = f"{how}: {' > '.join(ranking)}; the top {agg.fuse} are fused"
        else:
            record["winner"] = ranking[0]
            record["reason"] = f"{how}: {' > '.join(ranking)}; the best is the answer"
        update: dict[str, Any] = {"aggregation": record}
        return step.finish(update, outcomes, requests, degraded=ranked.unread > 0)

    return rank
