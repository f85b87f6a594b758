"""The graph's state: the conversation plus the record of this turn (who proposed what, what
failed and why, what it cost). Records are plain JSON-able dicts so every door (CLI, Python,
server) shows the same thing and checkpoints stay portable.
"""

from __future__ import annotations

import operator
from typing import Annotated, Any, NotRequired

from langchain_core.messages import AnyMessage
from langgraph.errors import InvalidUpdateError
from langgraph.graph.message import add_messages
from pydantic import TypeAdapter, ValidationError
from typing_extensions import TypedDict

from langgraph_moa.nodes.budget import Ledger
from langgraph_moa.nodes.context_window import Trim
from langgraph_moa.spec.topology import describe_validation_error

__all__ = [
    "AggregatorOptions",
    "CallRecord",
    "FallbackRecord",
    "LayersUpdateError",
    "MoAInput",
    "MoAState",
    "ModelUsage",
    "Proposal",
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


class LayersUpdateError(InvalidUpdateError, ValueError):
    """A write to ``layers`` that is neither shape the reducer takes; the message names the key,
    the item and what is wrong with it."""


_PROPOSAL = TypeAdapter(Proposal)
_SHAPES = (
    "a list of proposals (each added, or replacing the one at its layer and index) or the list "
    "of layers the state shows (each a list of proposals; replaces them all)"
)


def _proposal(item: Any, where: str) -> Proposal:
    try:
        proposal = _PROPOSAL.validate_python(item)
    except ValidationError as err:
        raise LayersUpdateError(
            f"layers{where}: not a proposal: {describe_validation_error(err)}"
        ) from None
    if proposal["layer"] < 1 or proposal["index"] < 0:
        raise LayersUpdateError(
            f"layers{where}: layer starts at 1 and index at 0, got layer {proposal['layer']} "
            f"and index {proposal['index']}"
        )
    return proposal


def _whole_layers(update: list[list[Any]]) -> list[list[Proposal]]:
    """The nested shape, as read from the state: every proposal checked to sit in its layer."""
    layers: list[list[Proposal]] = []
    for number, items in enumerate(update, start=1):
        layer = [_proposal(item, f"[{number - 1}][{k}]") for k, item in enumerate(items)]
        for k, proposal in enumerate(layer):
            if proposal["layer"] != number:
                raise LayersUpdateError(
                    f"layers[{number - 1}][{k}]: proposal {proposal['node']!r} says layer "
                    f"{proposal['layer']} but sits in layer {number}"
                )
        indexes = [p["index"] for p in layer]
        if len(set(indexes)) != len(indexes):
            raise LayersUpdateError(f"layers[{number - 1}]: two proposals share an index")
        layers.append(sorted(layer, key=operator.itemgetter("index")))
    return layers


def merge_layers(current: list[list[Proposal]] | None, update: Any) -> list[list[Proposal]]:
    """Reducer of ``layers``. Takes either shape:

    - a flat list of proposals (what proposer nodes, reviews and forks write): each is filed
      under its layer, replacing the proposal at the same index, ordered by index;
    - a list of layers, each a list of proposals (what the state shows, so what Studio or
      ``update_state`` writes back): it replaces the layers as a whole, so an edited text or a
      proposal left out is exactly what the next stage sees.

    Anything else raises :class:`LayersUpdateError` naming the key and the offending item.
    """
    layers = [list(layer) for layer in (current or [])]
    if update is None:
        return layers
    if not isinstance(update, list | tuple):
        raise LayersUpdateError(f"layers: expected {_SHAPES}; got {type(update).__name__}")
    if update and all(isinstance(item, list | tuple) for item in update):
        return _whole_layers([list(layer) for layer in update])
    for k, item in enumerate(update):
        if isinstance(item, list | tuple):
            raise LayersUpdateError(
                f"layers[{k}]: a layer among proposals: write either {_SHAPES}, not both"
            )
        proposal = _proposal(item, f"[{k}]")
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
