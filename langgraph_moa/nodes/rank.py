"""``rank`` mode, the ``rank`` node: the aggregator's model ranks the candidates, then the
aggregator answers with the best one verbatim, or (``fuse: k``) synthesizes the top k.

``judge: listwise`` is one call that orders every candidate. ``judge: pairwise`` asks about
every pair twice, once in each order, so a judge that prefers a position cannot decide: a pair
counts as a win only when both orders agree, otherwise each side gets half a point. Candidates
a listwise reply leaves out rank last, in layer order; equal scores keep layer order.
"""

from __future__ import annotations

import asyncio
from itertools import permutations
from typing import Any

from langgraph_moa.nodes.calls import ModelPool, Outcome, usage_update
from langgraph_moa.nodes.hygiene import Arranger, answer_layer, refs_of
from langgraph_moa.nodes.judging import Judged, judge
from langgraph_moa.nodes.prompts import PAIRWISE_REQUEST_PROMPT, RANK_REQUEST_PROMPT
from langgraph_moa.nodes.propose import Node
from langgraph_moa.nodes.state import AggregationRecord, MoAState, Proposal
from langgraph_moa.spec.models import PriceTable
from langgraph_moa.spec.topology import Aggregator

__all__ = ["make_ranker"]


def make_ranker(agg: Aggregator, *, last_layer: int, node: str, prices: PriceTable) -> Node:
    pool = ModelPool(agg.model_copy(update={"n": 1}))
    arranger = Arranger(agg.references, node)

    async def listwise(
        state: MoAState, kept: list[Proposal], refs: list[str]
    ) -> tuple[list[int], dict[str, float] | None, list[Judged]]:
        order = arranger.order(len(kept))
        shown = [kept[k] for k in order]
        judged = await judge(pool, agg, state, shown, [refs[k] for k in order], RANK_REQUEST_PROMPT)
        ranked = [order[k] for k in judged.picks]
        ranked += [k for k in range(len(kept)) if k not in ranked]
        return ranked, None, [judged]

    async def pairwise(
        state: MoAState, kept: list[Proposal], refs: list[str]
    ) -> tuple[list[int], dict[str, float] | None, list[Judged]]:
        pairs = list(permutations(range(len(kept)), 2))  # (i, j) and (j, i): both orders
        results: dict[tuple[int, int], Judged] = {}

        async def one(i: int, j: int) -> None:
            results[(i, j)] = await judge(
                pool, agg, state, [kept[i], kept[j]], [refs[i], refs[j]], PAIRWISE_REQUEST_PROMPT
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
        return ranked, dict(zip(refs, scores, strict=True)), [results[p] for p in pairs]

    async def rank(state: MoAState) -> dict[str, Any]:
        layer = answer_layer(state, last_layer)
        kept, references = arranger.keep(state, layer)
        refs = refs_of(state, layer, kept)
        way = pairwise if agg.judge == "pairwise" else listwise
        ranked, scores, calls = await way(state, kept, refs) if len(kept) > 1 else ([0], None, [])
        outcomes: list[Outcome] = [o for c in calls for o in c.outcomes]
        requests = sum(c.requests for c in calls)
        ranking = [refs[k] for k in ranked]
        record = AggregationRecord(
            mode="rank",
            ranking=ranking,
            calls=[c.call for c in calls],
            references=references,
        )
        if scores is not None:
            record["scores"] = scores
        unread = sum(1 for c in calls if not c.picks)
        how = f"{agg.judge} judging by {agg.model}"
        if calls and unread == len(calls):
            how += " failed (no reply named a candidate), so layer order stands"
        elif unread:
            how += f" ({unread} of {len(calls)} replies named no candidate)"
        if agg.fuse:
            record["winner"] = None
            record["used"] = ranking[: agg.fuse]
            record["reason"] = f"{how}: {' > '.join(ranking)}; the top {agg.fuse} are fused"
        else:
            record["winner"] = ranking[0]
            record["reason"] = f"{how}: {' > '.join(ranking)}; the best is the answer"
        update: dict[str, Any] = {"aggregation": record}
        if calls:
            update["usage"] = usage_update(agg.model, outcomes, requests, prices)
        if unread:
            update["degraded"] = True
        return update

    return rank
