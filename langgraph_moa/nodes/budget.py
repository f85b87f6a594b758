"""Per-query budgets: a worst-case estimate of what a topology costs, and the plan that fits.

The estimate assumes every call writes its full ``max_tokens``, that each layer passes all of
its answers on (a ``select`` or ``rank`` join: the one or the ``keep`` it names) and that a
judge with ``retry_no_verdict`` is asked every question twice (its reply and the reminder added
to the second prompt); prompt sizes
are counted so as never to come out low (:mod:`langgraph_moa.llm.token_bound`: the model's
tokenizer where one is known, else the text's UTF-8 bytes), for each model with its own count;
the conversation is counted once per estimate and per kind of count (:class:`PromptSizes`).
Prices come from the price table; a budget in USD refuses models without a known price.

When the stages still to run could exceed the budget, the plan shrinks in this order:
  1. drop the critic;
  2. trim proposers, from the last layer still to run backwards, each time removing the
     last-listed proposer of that layer, never going below the layer's ``min_proposals``.
If even the smallest plan could exceed the budget, the run stops with :class:`BudgetError`.
The run re-plans after every layer with what was really spent, so an early, cheap layer can
leave room for more later.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from langchain_core.messages import BaseMessage
from typing_extensions import TypedDict

from langgraph_moa.errors import MoARunError
from langgraph_moa.llm.token_bound import MESSAGE_OVERHEAD, counter_for
from langgraph_moa.llm.usage import check_priced
from langgraph_moa.nodes.names import (
    AGGREGATOR,
    CRITIC,
    RANK,
    SELECT,
    WINDOW,
    layer_exit,
    layer_of,
    proposer_node,
)
from langgraph_moa.nodes.prompts import (
    CRITIC_REQUEST_PROMPT,
    JUDGE_SYSTEM_PROMPT,
    NO_VERDICT_PROMPT,
    RANK_REQUEST_PROMPT,
    RANKING_FORM,
    SYNTHESIZE_PROMPT,
)
from langgraph_moa.spec.agent import Agent
from langgraph_moa.spec.models import PriceTable
from langgraph_moa.spec.providers import requests_for
from langgraph_moa.spec.topology import Topology

log = logging.getLogger(__name__)


class BudgetError(MoARunError):
    """The budget cannot cover even the smallest plan."""


class BudgetAccount(TypedDict):
    """The budget's account of a turn, kept in state (its ``ledger`` key): the limits, what
    was spent, what the plan reckons the rest may cost, and what it left out."""

    max_usd: float | None
    max_tokens: int | None
    spent_usd: float
    spent_tokens: int
    planned_usd: float | None  # spent + worst case of what is still to run, as last planned
    planned_tokens: int
    skipped: list[str]  # nodes the plan left out (proposer nodes, "critic")
    actions: list[str]  # what the plan changed, in order, in words


@dataclass
class Estimate:
    """Worst case of some stages of a topology."""

    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = 0.0
    unpriced: list[str] = field(default_factory=list)
    stages: list[tuple[str, int, int, float | None]] = field(default_factory=list)

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def add(self, stage: str, agent: Agent, prompt_tokens: int, prices: PriceTable) -> None:
        requests = requests_for(agent)
        prompt = prompt_tokens * requests
        completion = agent.max_tokens * agent.n
        cost = prices.cost(agent.model, prompt, completion)
        self.calls += requests
        self.prompt_tokens += prompt
        self.completion_tokens += completion
        if cost is None:
            if agent.model not in self.unpriced:
                self.unpriced.append(agent.model)
        elif self.cost_usd is not None:
            self.cost_usd += cost
        self.stages.append((stage, prompt, completion, cost))


class PromptSizes:
    """A conversation's size for each model that reads it, counted once per kind of count (a
    tokenizer, or bytes) and kept for the estimates that follow."""

    def __init__(self, conversation: Sequence[BaseMessage]) -> None:
        self.conversation = conversation
        self._sizes: dict[str, int] = {}

    def conversation_tokens(self, agent: Agent) -> int:
        counter = counter_for(agent.model)
        if counter.name not in self._sizes:
            self._sizes[counter.name] = counter.messages(self.conversation)
        return self._sizes[counter.name]

    def fixed_tokens(self, agent: Agent, text: str) -> int:
        """The prompt text this call adds (the agent's system prompt, the request's prompt, and
        the overhead of the two messages they and the references travel in)."""
        added = _fixed(agent.model, text) + _fixed(agent.model, agent.system_prompt or "")
        return added + 2 * MESSAGE_OVERHEAD


@functools.lru_cache(maxsize=1024)
def _fixed(model: str, text: str) -> int:
    return counter_for(model).text(text)


def estimate(
    topology: Topology,
    conversation: Sequence[BaseMessage],
    *,
    prices: PriceTable,
    from_layer: int = 1,
    skipped: Sequence[str] = (),
    previous_refs_tokens: int | None = None,
    pending_join: bool = False,
    sizes: PromptSizes | None = None,
) -> Estimate:
    """Worst case of layers ``from_layer``..last (each with its join's judge, if any), the
    critic and the aggregator.

    ``previous_refs_tokens`` is the real size of the answers of layer ``from_layer - 1`` when
    it has already run (default: its worst case); ``pending_join``: that layer's join judge has
    yet to run (re-planning in its join node). ``sizes``: the conversation's counts, kept from
    an earlier estimate of the same conversation.
    """
    sizes = sizes or PromptSizes(conversation)
    conv = sizes.conversation_tokens
    fixed = sizes.fixed_tokens
    out = Estimate()
    refs = previous_refs_tokens
    if refs is None:
        refs = 0
        if from_layer > 1:
            layer = topology.layers[from_layer - 2]
            refs = sum(a.max_tokens * a.n for a in layer.proposers)
    if pending_join and from_layer > 1:  # the previous layer's judge has yet to run
        refs = _join_judge(topology, from_layer - 1, out, sizes, refs, prices)
    for number in range(from_layer, len(topology.layers) + 1):
        layer = topology.layers[number - 1]
        produced = 0
        for agent in layer.proposers:
            node = proposer_node(number, agent.name or "")
            if node in skipped:
                continue
            prompt = conv(agent) + fixed(agent, SYNTHESIZE_PROMPT if refs else "") + refs
            out.add(node, agent, prompt, prices)
            produced += agent.max_tokens * agent.n
        refs = _join_judge(topology, number, out, sizes, produced, prices)
    if topology.critic is not None and CRITIC not in skipped:
        critic = topology.critic
        out.add(CRITIC, critic, conv(critic) + fixed(critic, CRITIC_REQUEST_PROMPT) + refs, prices)
        refs += topology.critic.max_tokens
    _final_steps(topology, out, sizes, refs, prices)
    return out


def _join_judge(
    topology: Topology,
    number: int,
    out: Estimate,
    sizes: PromptSizes,
    refs: int,
    prices: PriceTable,
) -> int:
    """Add the worst case of layer ``number``'s join judge (select, rank); return the size of
    what the layer passes on (all of ``refs`` for the other joins)."""
    layer = topology.layers[number - 1]
    agent = topology.join_agent(number)
    if agent is None or layer.join is None:
        return refs
    size = max(layer.size, 1)
    judging = sizes.conversation_tokens(agent) + sizes.fixed_tokens(
        agent, JUDGE_SYSTEM_PROMPT + RANK_REQUEST_PROMPT
    )
    node = layer_exit(topology, number)
    retry = layer.join.retry_no_verdict
    if layer.join.mode == "rank" and layer.join.judge == "pairwise":
        for _ in range(layer.join.requests_for(size)):
            _judge_call(out, node, agent, judging + 2 * refs // size, prices, sizes, retry)
    elif layer.join.requests_for(size):
        _judge_call(out, node, agent, judging + refs, prices, sizes, retry)
    return refs * layer.passes_on // size


def _judge_call(
    out: Estimate,
    node: str,
    agent: Agent,
    prompt: int,
    prices: PriceTable,
    sizes: PromptSizes,
    retry: bool,
) -> None:
    """One judge call of ``prompt`` tokens; with ``retry``, the second asking too (the first
    reply and the reminder added to its prompt)."""
    out.add(node, agent, prompt, prices)
    if retry:
        again = agent.max_tokens + sizes.fixed_tokens(agent, NO_VERDICT_PROMPT + RANKING_FORM)
        out.add(node, agent, prompt + again, prices)


def _final_steps(
    topology: Topology, out: Estimate, sizes: PromptSizes, refs: int, prices: PriceTable
) -> None:
    """Worst case of the aggregator's mode: its judge or window calls, then the synthesis
    (counted whenever a rule may call for one; a vote that may not costs nothing)."""
    agg = topology.aggregator
    size = max(topology.layers[-1].passes_on, 1)
    conv = sizes.conversation_tokens(agg)
    synthesis = conv + sizes.fixed_tokens(agg, SYNTHESIZE_PROMPT) + refs
    judging = conv + sizes.fixed_tokens(agg, JUDGE_SYSTEM_PROMPT + RANK_REQUEST_PROMPT)
    if agg.mode == "synthesize":
        out.add(AGGREGATOR, agg, synthesis, prices)
    elif agg.mode == "vote":
        if "synthesize" in (agg.on_tie, agg.on_no_answer):
            out.add(AGGREGATOR, agg, synthesis, prices)
    elif agg.mode == "select":
        _judge_call(out, SELECT, agg, judging + refs, prices, sizes, agg.retry_no_verdict)
        if agg.on_no_answer == "synthesize":
            out.add(AGGREGATOR, agg, synthesis, prices)
    elif agg.mode == "rank":
        retry = agg.retry_no_verdict
        if agg.judge == "pairwise":
            for _ in range(size * (size - 1)):
                _judge_call(out, RANK, agg, judging + 2 * refs // size, prices, sizes, retry)
        else:
            _judge_call(out, RANK, agg, judging + refs, prices, sizes, retry)
        if agg.fuse:
            out.add(AGGREGATOR, agg, synthesis, prices)
    else:  # self-moa-seq: every step sees a window of candidates and the running answer
        window = conv + sizes.fixed_tokens(agg, SYNTHESIZE_PROMPT) + agg.max_tokens
        window += refs * min(agg.window, size) // size
        for _ in range(agg.requests_for(size)):
            out.add(WINDOW, agg, window, prices)


def _over(topology: Topology, spent_usd: float, spent_tokens: int, est: Estimate) -> bool:
    budget = topology.budget
    if budget is None:
        return False
    if budget.max_tokens is not None and spent_tokens + est.total_tokens > budget.max_tokens:
        return True
    return budget.max_usd is not None and spent_usd + (est.cost_usd or 0.0) > budget.max_usd


def plan(
    topology: Topology,
    conversation: Sequence[BaseMessage],
    *,
    prices: PriceTable,
    from_layer: int,
    spent_usd: float,
    spent_tokens: int,
    already_skipped: Sequence[str] = (),
    previous_refs_tokens: int | None = None,
    pending_join: bool = False,
) -> BudgetAccount:
    """The account for the stages still to run: what to skip so the worst case fits."""
    budget = topology.budget
    skipped = [s for s in already_skipped if (layer_of(s) or from_layer) < from_layer]
    actions: list[str] = []
    sizes = PromptSizes(conversation)

    def worst() -> Estimate:
        return estimate(
            topology,
            conversation,
            prices=prices,
            from_layer=from_layer,
            skipped=skipped,
            previous_refs_tokens=previous_refs_tokens,
            pending_join=pending_join,
            sizes=sizes,
        )

    check_priced(topology, prices)
    est = worst()
    if topology.critic is not None and _over(topology, spent_usd, spent_tokens, est):
        skipped.append(CRITIC)
        actions.append("dropped the critic to stay within budget")
        est = worst()
    for number in range(len(topology.layers), from_layer - 1, -1):
        layer = topology.layers[number - 1]
        active = [a for a in layer.proposers if proposer_node(number, a.name or "") not in skipped]
        while _over(topology, spent_usd, spent_tokens, est):
            remaining = sum(a.n for a in active)
            if len(active) <= 1 or remaining - active[-1].n < layer.min_proposals:
                break
            dropped = active.pop()
            skipped.append(proposer_node(number, dropped.name or ""))
            actions.append(f"trimmed {skipped[-1]} to stay within budget")
            est = worst()
    if _over(topology, spent_usd, spent_tokens, est):
        assert budget is not None
        limits = []
        if budget.max_usd is not None:
            limits.append(f"${spent_usd + (est.cost_usd or 0):.4f} > max_usd ${budget.max_usd:g}")
        if budget.max_tokens is not None:
            limits.append(
                f"{spent_tokens + est.total_tokens} tokens > max_tokens {budget.max_tokens}"
            )
        raise BudgetError(
            "over budget: even the smallest plan could cost "
            + " and ".join(limits)
            + f" (spent so far ${spent_usd:.4f}, {spent_tokens} tokens)"
        )
    log.info("budget plan from layer %d: %s", from_layer, "; ".join(actions) or "nothing to cut")
    return {
        "max_usd": budget.max_usd if budget else None,
        "max_tokens": budget.max_tokens if budget else None,
        "spent_usd": round(spent_usd, 6),
        "spent_tokens": spent_tokens,
        "planned_usd": None if est.cost_usd is None else round(spent_usd + est.cost_usd, 6),
        "planned_tokens": spent_tokens + est.total_tokens,
        "skipped": skipped,
        "actions": actions,
    }
