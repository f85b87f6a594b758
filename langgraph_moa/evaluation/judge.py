"""The judge: any ``provider:model``, called at temperature 0 through the project's own call path
(:func:`langgraph_moa.nodes.calls.call_agent`: retries, timeouts, usage and prices) with the
proposal cache in front of it, so a judgment already made (same judge, same prompt) is read back
instead of paid for again. Rescoring a finished eval therefore makes no call.

Pairwise judging plays each pair twice, the candidate shown first and then second, concurrently;
grading asks for a 1-10 grade. Replies are parsed in :mod:`langgraph_moa.evaluation.scoring`; a
failed call or a reply without a verdict is kept as a game with no verdict (counted, never
guessed).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from langgraph.cache.base import BaseCache

from langgraph_moa.errors import MoAInputError
from langgraph_moa.evaluation.prompts import pairwise_messages, rating_messages
from langgraph_moa.evaluation.scoring import Game, parse_rating, parse_verdict
from langgraph_moa.llm.chat_models import check_ready
from langgraph_moa.nodes.cache import ProposalCache
from langgraph_moa.nodes.calls import ModelPool, call_agent
from langgraph_moa.spec.models import PriceTable
from langgraph_moa.spec.topology import Agent, Aggregator, Layer, Topology

__all__ = ["Judge", "JudgeUsage", "judge_agent", "single_topology"]

JUDGE_MAX_TOKENS = 1024


def single_topology(agent: Agent) -> Topology:
    """One agent seen as a topology, for the checks written for topologies (extras, keys,
    prices); it is never built into a graph."""
    return Topology(
        name=agent.name or "single",
        layers=[Layer(proposers=[agent])],
        aggregator=Aggregator.model_validate(agent.model_dump(exclude_unset=True)),
    )


def judge_agent(spec: str, *, max_tokens: int = JUDGE_MAX_TOKENS) -> Agent:
    """The judge as an agent (temperature 0, so its calls are cached); one line if ``spec`` is
    not ``provider:model`` or its key is not set."""
    try:
        agent = Agent(name="judge", model=spec, temperature=0.0, max_tokens=max_tokens)
    except ValueError as e:
        reason = str(e).split("\n")[-1].strip().removeprefix("Value error, ")
        raise MoAInputError(f"--judge {spec!r}: {reason}") from None
    check_ready(single_topology(agent))
    return agent.model_copy(update={"timeout_s": 300.0})


@dataclass
class JudgeUsage:
    calls: int = 0
    cached: int = 0
    failed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Judge:
    """One judge model with its cache and a bound on calls in flight."""

    agent: Agent
    cache: BaseCache[Any]
    concurrency: int = 8
    usage: JudgeUsage = field(default_factory=JudgeUsage)

    def __post_init__(self) -> None:
        self._pool = ModelPool(self.agent)
        self._cache = ProposalCache(self.cache)
        self._slots = asyncio.Semaphore(self.concurrency)
        self._prices = PriceTable()

    @property
    def model(self) -> str:
        return self.agent.model

    async def _ask(self, messages: list[Any]) -> str | None:
        async with self._slots:
            outcomes, requests = await call_agent(self._pool, messages, cache=self._cache)
        outcome = outcomes[0]
        u = self.usage
        u.calls += requests
        u.cached += 1 if outcome.cached else 0
        if not outcome.ok:
            u.failed += 1
            return None
        u.prompt_tokens += outcome.usage["prompt_tokens"]
        u.completion_tokens += outcome.usage["completion_tokens"]
        cost = self._prices.cost(
            self.agent.model, outcome.usage["prompt_tokens"], outcome.usage["completion_tokens"]
        )
        if cost is not None:
            u.cost_usd = (u.cost_usd or 0.0) + cost
        return outcome.text

    async def compare(self, question: str, candidate: str, baseline: str) -> list[Game]:
        """Both games of a pair: the candidate shown first, then second."""
        first, second = await asyncio.gather(
            self._ask(pairwise_messages(question, candidate, baseline)),
            self._ask(pairwise_messages(question, baseline, candidate)),
        )
        return [
            Game(True, None if first is None else parse_verdict(first)),
            Game(False, None if second is None else parse_verdict(second)),
        ]

    async def grade(
        self, questions: list[str], answers: list[str], reference: str | None = None
    ) -> float | None:
        """A 1-10 grade of the last answer (None: the judge failed or gave none)."""
        reply = await self._ask(rating_messages(questions, answers, reference))
        return None if reply is None else parse_rating(reply)
