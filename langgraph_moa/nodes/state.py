"""The graph's state: the conversation plus the record of this turn (who proposed what, what
failed and why, what it cost). Records are plain JSON-able dicts so every door (CLI, Python,
server) shows the same thing and checkpoints stay portable.
"""

from __future__ import annotations

import operator
from typing import Annotated, Any, NotRequired

from langchain_core.messages import AnyMessage
from langgraph.graph.message import add_messages
from typing_extensions import TypedDict

from langgraph_moa.nodes.budget import Ledger
from langgraph_moa.nodes.context_window import Trim

__all__ = [
    "AggregationRecord",
    "AggregatorOptions",
    "CallRecord",
    "EarlyStopRecord",
    "FallbackRecord",
    "JoinRecord",
    "JudgeCall",
    "MoAInput",
    "MoAState",
    "ModelUsage",
    "Proposal",
    "ReferencesRecord",
    "ReviewRecord",
    "TokenUsage",
    "Usage",
    "add_usage",
    "empty_usage",
    "merge_layers",
]


class TokenUsage(TypedDict):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ReferencesRecord(TypedDict):
    """How earlier answers were shown to one call (with a ``references`` setting)."""

    shown: list[str]  # the proposals in the order the model saw them: reference k is shown[k-1]
    filtered: list[str]  # left out as lexical outliers
    dropped: list[str]  # left out by dropout


class CallRecord(TypedDict):
    """One LLM call site's outcome: the critic's, the aggregator's, or one proposal."""

    name: str
    node: str
    model: str
    ok: bool
    text: str | None
    error: str | None
    latency_s: float
    usage: TokenUsage
    attempts: int  # HTTP requests sent for it, retries included (0 when served from the cache)
    cached: bool
    trimmed: Trim | None  # how its input was cut to fit the model's context window, if it was
    # why the model stopped: "stop", "length" (cut at max_tokens), "tool_calls"...; None when
    # the call failed or the provider did not say
    finish_reason: NotRequired[str | None]
    references: NotRequired[ReferencesRecord | None]  # shuffled/filtered references, if set


class Proposal(CallRecord):
    layer: int  # 1-based
    index: int  # position in the layer: agents in topology order, then samples
    sample: int  # 0-based sample of an agent with n > 1 (one request's usage sits on sample 0)


class ModelUsage(TypedDict):
    calls: int  # requests sent (a request with n samples counts once)
    cached_calls: int  # calls served from the cache, at no cost
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cost_usd: float | None


class Usage(TypedDict):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cost_usd: float | None  # sum over priced models; None when no model has a known price
    unpriced: list[str]  # models used whose price is unknown (their cost is not in cost_usd)
    by_model: dict[str, ModelUsage]


def empty_usage() -> Usage:
    return {
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "total_tokens": 0,
        "cost_usd": None,
        "unpriced": [],
        "by_model": {},
    }


def _add_cost(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else a + b


def add_usage(current: Usage | None, update: Usage | None) -> Usage:
    """Reducer: sum two usage summaries, model by model."""
    if not current:
        current = empty_usage()
    if not update:
        return current
    by_model = {m: ModelUsage(**u) for m, u in current["by_model"].items()}
    for model, u in update["by_model"].items():
        if model not in by_model:
            by_model[model] = ModelUsage(**u)
            continue
        mine = by_model[model]
        for key in ("calls", "cached_calls", "prompt_tokens", "completion_tokens", "total_tokens"):
            mine[key] += u[key]
        mine["cost_usd"] = _add_cost(mine["cost_usd"], u["cost_usd"])
    total = empty_usage()
    total["by_model"] = by_model
    for model, u in by_model.items():
        total["prompt_tokens"] += u["prompt_tokens"]
        total["completion_tokens"] += u["completion_tokens"]
        total["total_tokens"] += u["total_tokens"]
        if u["cost_usd"] is None:
            total["unpriced"].append(model)
        else:
            total["cost_usd"] = _add_cost(total["cost_usd"], u["cost_usd"])
    return total


def merge_layers(
    current: list[list[Proposal]] | None, update: list[Proposal] | None
) -> list[list[Proposal]]:
    """Reducer: file each proposal under its layer, ordered by its position in the layer."""
    layers = [list(layer) for layer in (current or [])]
    for proposal in update or []:
        while len(layers) < proposal["layer"]:
            layers.append([])
        slot = layers[proposal["layer"] - 1]
        slot[:] = [p for p in slot if p["index"] != proposal["index"]]
        slot.append(proposal)
        slot.sort(key=operator.itemgetter("index"))
    return layers


class FallbackRecord(TypedDict):
    """How the answer was produced after the aggregator failed."""

    policy: str  # "best_proposal" or "model"
    source: str  # the proposal's node, or the fallback model
    reason: str  # why the aggregator's answer is missing
    ok: bool
    error: str | None


class JudgeCall(TypedDict):
    """One model call of a select, rank or self-moa-seq step."""

    shown: list[str]  # the candidates in the order the model saw them
    reply: str | None  # what the model said (None when the call failed)
    error: str | None
    pick: str | None  # the candidate it chose (select, a pairwise judgment), if any


class AggregationRecord(TypedDict, total=False):
    """How the final step combined the candidates, and why the answer is what it is."""

    mode: str  # synthesize, vote, select, rank, self-moa-seq
    answer: str  # "candidate": a candidate verbatim; "synthesis": written by the model
    winner: str | None  # the candidate answered verbatim
    used: list[str]  # the candidates a synthesis was written from
    reason: str  # in words: the votes, the selector's choice, the ranking, the rule applied
    extracted: dict[str, str | None]  # vote: candidate -> the answer read from it
    votes: dict[str, int]  # vote: answer -> how many candidates gave it
    ranking: list[str]  # rank: the candidates, best first
    scores: dict[str, float]  # rank (pairwise): candidate -> wins (a split judgment counts 0.5)
    calls: list[JudgeCall]  # select/rank/self-moa-seq: each model call before the answer
    carry: str | None  # self-moa-seq: the running synthesis handed to the final window
    references: ReferencesRecord | None  # the candidates left out (outliers, dropout)


class JoinRecord(TypedDict):
    """What a layer with a ``join`` setting passed on, and why."""

    layer: int
    mode: str
    passed: list[str]  # the proposals the next step sees
    votes: dict[str, int]
    reason: str


class EarlyStopRecord(TypedDict):
    """One layer's agreement check, and what it skipped when it ended the layered part."""

    layer: int
    stopped: bool
    measure: str  # "agreement" or "similarity"
    value: float  # the measured agreement share, or mean pairwise similarity
    threshold: float
    reason: str
    skipped_layers: list[int]  # layers that did not run (at no cost)
    skipped_nodes: list[str]


class ReviewRecord(TypedDict):
    edited: list[str]  # proposals whose text the reviewer replaced
    dropped: list[str]  # proposals the reviewer left out


class AggregatorOptions(TypedDict, total=False):
    """Per-request overrides of the aggregator's sampling (the OpenAI endpoint passes them)."""

    temperature: float
    max_tokens: int


class MoAInput(TypedDict):
    """What a run takes: the conversation, ending with the user's new message, and optionally
    tools (OpenAI format) for the aggregator and overrides of its sampling."""

    messages: Annotated[list[AnyMessage], add_messages]
    tools: NotRequired[list[dict[str, Any]] | None]
    tool_choice: NotRequired[str | dict[str, Any] | None]
    aggregator_options: NotRequired[AggregatorOptions | None]


class MoAState(TypedDict):
    """The conversation and the record of the current turn."""

    messages: Annotated[list[AnyMessage], add_messages]
    layers: Annotated[list[list[Proposal]], merge_layers]
    critique: NotRequired[CallRecord | None]
    aggregator: NotRequired[CallRecord | None]
    usage: Annotated[Usage, add_usage]
    degraded: Annotated[bool, operator.or_]
    ledger: NotRequired[Ledger | None]  # the budget's account, when the topology has a budget
    fallback: NotRequired[FallbackRecord | None]
    review: NotRequired[ReviewRecord | None]  # what a human reviewer changed, with review on
    tools: NotRequired[list[dict[str, Any]] | None]  # the aggregator's tools (OpenAI format)
    tool_choice: NotRequired[str | dict[str, Any] | None]
    aggregator_options: NotRequired[AggregatorOptions | None]
    aggregation: NotRequired[AggregationRecord | None]  # how the final step chose, by mode
    early_stop: Annotated[list[EarlyStopRecord], operator.add]  # layers' agreement checks
    joins: Annotated[list[JoinRecord], operator.add]  # what layers with a join passed on
