"""The judge: any ``provider:model``, or a whole topology (a panel of judges whose aggregator
writes the verdict), and its judgments kept on disk so that none is paid for twice.

A model judge is called at temperature 0 through the project's own call path
(:func:`langgraph_moa.llm.call.call_agent`: retries, timeouts, usage and prices). A topology
judge runs the judge's request as one row of the batch runner
(:func:`langgraph_moa.batch.one_row.relabel_row`: the shared run loop, the run's usage and cost),
in a row scope over the judgments' cache, so every call of the panel is cached as it finishes
(sampled ones too, keyed by the request): a judgment cut short by a kill resumes from its
finished calls. Its aggregator sees the judge's instructions (the system message) with the
panel's judgments appended, so it writes the same ``[[...]]`` verdict or ``[[N]]`` grade as a
single judge; parsing is the same for both.

Every finished judgment is stored as a record (reply, calls, tokens, $, latency; see
:mod:`langgraph_moa.evaluation.records`), keyed by the judge (the model's parameters or the whole
topology) and the exact request, in the eval's ``judgments.sqlite``. A judgment found there is
read back instead of asked again: rescoring a finished eval, or resuming an interrupted one,
makes no judge call, and the judge's usage reported (calls, tokens, $, latency) is still what the
judgments cost when they were made; how many were read back and how many requests this session
sent are reported beside it.

Pairwise judging plays each pair twice, the candidate shown first and then second, concurrently;
grading asks for a 1-10 grade. Replies are read by contract in
:mod:`langgraph_moa.evaluation.scoring` (only a final ``[[...]]`` verdict counts); a failed call
or a reply without a verdict is kept as a game (or turn) with no verdict and the reason, with
the reply's first words (counted, never guessed). With ``retry_no_verdict`` (a topology judge
takes it from its aggregator's setting) a reply without a verdict is asked about once more, its
reply and a reminder of the form added to the request; both judgments are stored and counted,
and the item's record says so. Failed judgments are not stored (a rerun asks again).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

from langchain_core.messages import BaseMessage, convert_to_openai_messages
from langgraph.cache.base import BaseCache
from pydantic import ValidationError

from langgraph_moa.batch.one_row import relabel_row
from langgraph_moa.batch.row_check import Row
from langgraph_moa.errors import MoAInputError
from langgraph_moa.evaluation.prompts import (
    GRADE_FORM,
    VERDICT_FORM,
    again_messages,
    pairwise_messages,
    rating_messages,
)
from langgraph_moa.evaluation.records import RecordStore
from langgraph_moa.evaluation.scoring import Game, Grade, read_rating, read_verdict
from langgraph_moa.evaluation.summary import percentile
from langgraph_moa.graphs.builder import build_graph
from langgraph_moa.llm.call import call_agent
from langgraph_moa.llm.call_cache import ProposalCache
from langgraph_moa.llm.chat_models import check_ready
from langgraph_moa.llm.model_pool import ModelPool
from langgraph_moa.llm.usage import check_priced
from langgraph_moa.spec.agent import Agent
from langgraph_moa.spec.combining import Aggregator
from langgraph_moa.spec.models import PriceTable
from langgraph_moa.spec.topology import Layer, Topology

_JUDGE_MAX_TOKENS = 1024
T = TypeVar("T")


def single_topology(agent: Agent) -> Topology:
    """One agent seen as a topology, for the checks written for topologies (extras, keys,
    prices); it is never built into a graph."""
    return Topology(
        name=agent.name or "single",
        layers=[Layer(proposers=[agent])],
        aggregator=Aggregator.model_validate(agent.model_dump(exclude_unset=True)),
    )


def judge_agent(spec: str, *, max_tokens: int = _JUDGE_MAX_TOKENS) -> Agent:
    """The judge as an agent (temperature 0, so its calls are cached); one line if ``spec`` is
    not ``provider:model`` or its key is not set."""
    try:
        agent = Agent(name="judge", model=spec, temperature=0.0, max_tokens=max_tokens)
    except ValidationError as e:
        reason = "; ".join(x["msg"].removeprefix("Value error, ") for x in e.errors())
        hint = ""
        if ":" not in spec:
            hint = " (a preset or a topology file judges with --judge-preset/--judge-topology)"
        raise MoAInputError(f"--judge {spec!r}: {reason}{hint}") from None
    check_ready(single_topology(agent))
    return agent.model_copy(update={"timeout_s": 300.0})


def judge_topology(topology: Topology) -> Topology:
    """A topology as the judge: it must run unattended and have its keys (one line if not)."""
    if topology.review != "none":
        raise MoAInputError(
            f"judge topology {topology.name!r} pauses for a person's review; a judge must run "
            "unattended (review: none)"
        )
    check_ready(topology, probe_local=True)
    check_priced(topology, PriceTable(topology.prices))
    return topology


@dataclass
class Judgment:
    """One judge request's outcome: the reply (None: failed) and what it cost when made."""

    text: str | None
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = None
    latency_s: float = 0.0
    degraded: bool = False
    error: str | None = None


@dataclass
class JudgeUsage:
    """What judging an eval took. ``judgments`` made (``cached`` of them read back from the
    record store), ``failed`` ones; the judge's ``calls``, tokens and $ of every judgment (as
    made, read back or not; $ None when a model has no price); ``requests`` the HTTP requests
    this session sent; latency of a judgment, p50/p95 and summed."""

    judgments: int = 0
    cached: int = 0
    failed: int = 0
    degraded: int = 0
    calls: int = 0
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = 0.0
    latencies: list[float] = field(default_factory=list, repr=False)

    def add(self, judgment: Judgment, *, cached: bool, requests: int) -> None:
        self.judgments += 1
        self.cached += cached
        self.requests += requests
        if judgment.text is None:
            self.failed += 1
            return
        self.degraded += judgment.degraded
        self.calls += judgment.calls
        self.prompt_tokens += judgment.prompt_tokens
        self.completion_tokens += judgment.completion_tokens
        self.latencies.append(judgment.latency_s)
        if self.cost_usd is not None:
            self.cost_usd = None if judgment.cost_usd is None else self.cost_usd + judgment.cost_usd

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k != "latencies"}
        if out["cost_usd"] is not None:
            out["cost_usd"] = round(out["cost_usd"], 8)
        out["latency_p50_s"] = percentile(self.latencies, 50)
        out["latency_p95_s"] = percentile(self.latencies, 95)
        out["latency_total_s"] = round(sum(self.latencies), 4)
        return out


class _ModelJudge:
    """One model, one call per judgment; the call cache in front too, so a judgment made before
    judgments were kept as records is still read back, not paid for again."""

    def __init__(self, agent: Agent, cache: BaseCache[Any]) -> None:
        self.agent = agent
        self._pool = ModelPool(agent)
        self._cache = ProposalCache(cache)
        self._prices = PriceTable()

    async def __call__(self, messages: list[BaseMessage], key: str) -> tuple[Judgment, int]:
        outcomes, requests = await call_agent(self._pool, messages, cache=self._cache)
        o = outcomes[0]
        if not o.ok:
            return Judgment(None, calls=requests, latency_s=o.latency_s, error=o.error), requests
        prompt, completion = o.usage["prompt_tokens"], o.usage["completion_tokens"]
        return Judgment(
            o.text,
            calls=1,
            prompt_tokens=prompt,
            completion_tokens=completion,
            cost_usd=self._prices.cost(self.agent.model, prompt, completion, batch=o.batch),
            latency_s=o.latency_s,
        ), requests


class _TopologyJudge:
    """A topology, one graph run per judgment, as one row of the batch runner."""

    def __init__(self, topology: Topology, cache: BaseCache[Any]) -> None:
        self.topology = topology
        self._graph = build_graph(topology, cache=cache)

    async def __call__(self, messages: list[BaseMessage], key: str) -> tuple[Judgment, int]:
        prompt: list[dict[str, Any]] = convert_to_openai_messages(messages)
        row = Row(
            id=f"judgment-{key[:24]}",
            where="judge",
            prompt=prompt,
            tools=None,
            tool_choice=None,
            completion=None,
            data={},
        )
        record = await relabel_row(self._graph, self.topology, row)
        assert record is not None  # None only under the batch engine (waves=...)
        result = record["result"] or {}
        usage = result.get("usage") or {}
        requests = record["calls"]  # sent now; cached_calls were served from the cache
        answer = result.get("answer") if record["status"] == "done" else None
        return Judgment(
            answer or None,
            calls=record["calls"] + record["cached_calls"],
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
            cost_usd=record["cost_usd"],
            latency_s=record["latency_s"],
            degraded=record["degraded"],
            error=record["error"] or (None if answer else "no answer"),
        ), requests


@dataclass
class Judge:
    """The judge (a model or a topology) with its judgments' store and a bound on judgments in
    flight. ``retry_no_verdict``: ask once more when a reply has no verdict (default: a
    topology judge's aggregator setting; off for a model)."""

    judge: Agent | Topology
    cache: BaseCache[Any]
    concurrency: int = 8
    usage: JudgeUsage = field(default_factory=JudgeUsage)
    retry_no_verdict: bool | None = None

    def __post_init__(self) -> None:
        if self.retry_no_verdict is None:
            self.retry_no_verdict = isinstance(self.judge, Topology) and (
                self.judge.aggregator.retry_no_verdict
            )
        self._ask_judge = (
            _ModelJudge(self.judge, self.cache)
            if isinstance(self.judge, Agent)
            else _TopologyJudge(self.judge, self.cache)
        )
        self._slots = asyncio.Semaphore(self.concurrency)
        identity = self.judge.model_dump(mode="json", exclude={"name"})
        self._records = RecordStore(self.cache, "judgments", identity)

    @property
    def model(self) -> str:
        """The judge's name in summaries: ``provider:model``, or ``<name> (topology)``."""
        if isinstance(self.judge, Agent):
            return self.judge.model
        return f"{self.judge.name} (topology)"

    def spec(self) -> dict[str, Any]:
        """The judge as resolved, for the manifest."""
        if isinstance(self.judge, Agent):
            return {"model": self.judge.model}
        return {"topology": self.judge.model_dump(mode="json")}

    async def _ask(self, messages: list[BaseMessage]) -> Judgment:
        key = self._records.key(messages)
        async with self._slots:
            found = await self._records.get(key)
            if found:
                judgment, cached, requests = Judgment(**found), True, 0
            else:
                judgment, requests = await self._ask_judge(messages, key)
                cached = False
                if judgment.text is not None:
                    await self._records.put(key, asdict(judgment))
        self.usage.add(judgment, cached=cached, requests=requests)
        return judgment

    async def _verdict(
        self,
        messages: list[BaseMessage],
        read: Callable[[str], tuple[T | None, str | None]],
        form: str,
    ) -> tuple[T | None, str | None, str | None]:
        """The verdict of one request read by ``read``, or None and why not; and, when it was
        asked again, why the first reply had none."""
        judgment = await self._ask(messages)
        if judgment.text is None:
            return None, f"the judge failed ({judgment.error or 'no reply'})", None
        value, why = read(judgment.text)
        if value is not None or not self.retry_no_verdict:
            return value, why, None
        again = await self._ask(again_messages(messages, judgment.text, form))
        if again.text is None:
            return None, f"the judge failed when asked again ({again.error or 'no reply'})", why
        value, why_again = read(again.text)
        return value, why_again, why

    async def _game(self, candidate_first: bool, messages: list[BaseMessage]) -> Game:
        verdict, why, first_try = await self._verdict(messages, read_verdict, VERDICT_FORM)
        return Game(candidate_first, verdict, no_verdict=why, first_try=first_try)

    async def compare(self, question: str, candidate: str, baseline: str) -> list[Game]:
        """Both games of a pair: the candidate shown first, then second."""
        first, second = await asyncio.gather(
            self._game(True, pairwise_messages(question, candidate, baseline)),
            self._game(False, pairwise_messages(question, baseline, candidate)),
        )
        return [first, second]

    async def grade(
        self, questions: list[str], answers: list[str], reference: str | None = None
    ) -> Grade:
        """A 1-10 grade of the last answer, or none (the judge failed or gave none) and why."""
        messages = rating_messages(questions, answers, reference)
        value, why, first_try = await self._verdict(messages, read_rating, GRADE_FORM)
        return Grade(value, no_verdict=why, first_try=first_try)
