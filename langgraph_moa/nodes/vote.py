"""``vote`` mode: read an answer from every candidate and answer with the majority candidate,
verbatim, without a model call (self-consistency, "More agents is all you need").

A tie, or candidates from which no answer can be read, follow the aggregator's declared rule:
``synthesize`` (the model writes an answer from the tied candidates, or from all when none
could be read) or ``first`` (the first such candidate in layer order).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from langgraph_moa.nodes.extract import tally
from langgraph_moa.nodes.state import AggregationRecord, Proposal, ReferencesRecord
from langgraph_moa.spec.combining import Aggregator


@dataclass
class Verdict:
    """What the final step answers with: one candidate verbatim (``winner``, a position in the
    pool), or a synthesis of some candidates (``synthesize``), and the record of why."""

    record: AggregationRecord
    winner: int | None = None
    synthesize: list[int] = field(default_factory=list)


def _votes_text(votes: dict[str, int]) -> str:
    return ", ".join(f"{answer!r}: {count}" for answer, count in votes.items()) or "none"


def decide_vote(
    agg: Aggregator,
    pool: Sequence[Proposal],
    refs: Sequence[str],
    references: ReferencesRecord | None,
) -> Verdict:
    """The majority candidate of ``pool`` (named ``refs``), or what the rules say instead."""
    counted = tally([p["text"] or "" for p in pool], agg.extract or "", agg.pattern)
    record = AggregationRecord(
        mode="vote",
        extracted=dict(zip(refs, counted.extracted, strict=True)),
        votes=counted.votes,
        references=references,
    )
    top = counted.top
    summary = f"votes ({agg.extract}): {_votes_text(counted.votes)}"
    if len(top) == 1:
        k = counted.first_with(top)
        count, total = counted.votes[top[0]], len(pool)
        record["reason"] = (
            f"{count} of {total} candidates answer {top[0]!r}; {refs[k]} is the first of them "
            f"({summary})"
        )
        return Verdict(winner=k, record=record)
    if top:
        tied = [k for k, a in enumerate(counted.extracted) if a in top]
        what = f"a tie between {', '.join(map(repr, top))}"
        rule = agg.on_tie
    else:
        tied = list(range(len(pool)))
        what = f"no answer could be read by extract {agg.extract!r}"
        rule = agg.on_no_answer
    if rule == "first":
        record["reason"] = f"{what}; rule 'first': {refs[tied[0]]} ({summary})"
        return Verdict(winner=tied[0], record=record)
    record["reason"] = (
        f"{what}; rule 'synthesize': the model writes the answer from "
        f"{', '.join(refs[k] for k in tied)} ({summary})"
    )
    return Verdict(synthesize=tied, record=record)
