"""One judge call over some candidates (select and rank modes): build the messages, call the
aggregator's model, read the numbers it replies with, and record the call."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from langgraph_moa.nodes.calls import ModelPool, Outcome, call_agent
from langgraph_moa.nodes.messages import fitted_judge_messages
from langgraph_moa.nodes.state import JudgeCall, MoAState, Proposal
from langgraph_moa.spec.topology import Agent

__all__ = ["Judged", "judge", "numbers_in"]

_INT_RE = re.compile(r"\d+")


def numbers_in(reply: str | None, count: int) -> list[int]:
    """The distinct candidate numbers (1..count) in ``reply``, in the order they appear, as
    0-based positions."""
    seen: list[int] = []
    for raw in _INT_RE.findall(reply or ""):
        k = int(raw) - 1
        if 0 <= k < count and k not in seen:
            seen.append(k)
    return seen


@dataclass
class Judged:
    """A judge call's outcome: the positions (in the shown order) it named, and its record."""

    picks: list[int]  # positions into ``shown``, as the reply named them
    call: JudgeCall
    outcomes: list[Outcome]
    requests: int


async def judge(
    pool: ModelPool,
    agent: Agent,
    state: MoAState,
    shown: Sequence[Proposal],
    names: Sequence[str],
    request: str,
) -> Judged:
    """Ask the model about ``shown`` (named ``names``) with ``request``."""
    messages, _ = fitted_judge_messages(
        agent, state["messages"], [p["text"] or "" for p in shown], request
    )
    outcomes, requests = await call_agent(pool, messages)
    outcome = outcomes[0]
    picks = numbers_in(outcome.text, len(shown)) if outcome.ok else []
    call = JudgeCall(
        shown=list(names),
        reply=outcome.text,
        error=outcome.error,
        pick=names[picks[0]] if picks else None,
    )
    return Judged(picks, call, outcomes, requests)
