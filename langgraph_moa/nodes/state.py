"""The graph's state: the conversation plus the record of this turn (who proposed what, what
failed and why, what it cost). Records are plain JSON-able dicts so every door (CLI, Python,
server) shows the same thing and checkpoints stay portable. Usage is what the turn paid; a
model's ``cached_*`` fields add what its cache-served calls cost when they were made.

Every record's reducer checks what is written against the record's own TypedDict (pydantic),
because the state is also written from outside the graph: Studio's state editor and
``update_state`` through the LangGraph server. What a user reads can be written back as it is
(``layers`` takes the nested shape it shows as well as the flat one nodes write), and a wrong
shape raises :class:`StateUpdateError` naming the key, which the server turns into a 400.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Annotated, Any, NotRequired, cast

from langchain_core.messages import AnyMessage
from langgraph.errors import InvalidUpdateError
from langgraph.graph.message import add_messages
from pydantic import TypeAdapter, ValidationError
from typing_extensions import TypedDict

from langgraph_moa.llm.usage import TokenUsage
from langgraph_moa.nodes.budget import BudgetAccount
from langgraph_moa.nodes.context_window import Trim


class ReferencesRecord(TypedDict):
    """How earlier answers were shown to one call (with a ``references`` setting)."""

    shown: list[str]  # the proposals in the order the model saw them: reference k is shown[k-1]
    filtered: list[str]  # left out as lexical outliers
    dropped: list[str]  # left out by dropout


class Truncation(TypedDict):
    """A written answer that stopped at its length limit (finish reason ``length``)."""

    limit: int  # the max_tokens the call was made with


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
    # the final answer's writer stopped at its limit: the turn is degraded
    truncated: NotRequired[Truncation | None]
    batch: NotRequired[bool]  # answered through a provider's Batch API (absent: sent online)


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
    # What the cached calls cost when they were made (their cache entries' usage), so a
    # topology's own cost can price them as if made; only present once a call was cached.
    # cached_unknown counts cached samples whose entry did not keep its usage (older caches).
    cached_prompt_tokens: NotRequired[int]
    cached_completion_tokens: NotRequired[int]
    cached_cost_usd: NotRequired[float | None]
    cached_unknown: NotRequired[int]
    # of ``calls``, those answered through a provider's Batch API (priced at its batch price);
    # only present once one was
    batch_calls: NotRequired[int]
    batch_saved_usd: NotRequired[float]  # those calls at the online price, less their cost


_CACHED_COUNTS = ("cached_prompt_tokens", "cached_completion_tokens", "cached_unknown")


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


class StateUpdateError(InvalidUpdateError, ValueError):
    """A state update of the wrong shape (from Studio, ``update_state`` or a bad node write);
    the message names the key and what is wrong. The LangGraph server answers it with a 400."""


class LayersUpdateError(StateUpdateError):
    """A write to ``layers`` that is neither shape its reducer takes."""


def _describe(key: str, err: ValidationError) -> str:
    """One line from a pydantic error, each problem at its path under ``key``; missing fields
    are listed together (``aggregator: missing name, node``)."""
    missing: dict[str, list[str]] = {}
    parts = []
    for e in err.errors():
        loc = [str(p) for p in e["loc"]]
        if e["type"] == "missing" and loc:
            missing.setdefault(".".join([key, *loc[:-1]]), []).append(loc[-1])
        else:
            where = ".".join([key, *loc])
            parts.append(f"{where}: {e['msg'].removeprefix('Value error, ')}")
    return "; ".join([f"{k}: missing {', '.join(names)}" for k, names in missing.items()] + parts)


def _checked(key: str, adapter: TypeAdapter[Any], value: Any) -> Any:
    try:
        return adapter.validate_python(value)
    except ValidationError as err:
        raise StateUpdateError(_describe(key, err)) from None


_USAGE = TypeAdapter(Usage)


def _add_cost(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else a + b


def add_usage(current: Usage | None, update: Usage | None) -> Usage:
    """Reducer: sum two usage summaries, model by model (a written usage is added, not set)."""
    if not current:
        current = empty_usage()
    if not update:
        return current
    update = _checked("usage", _USAGE, update)
    by_model = {m: ModelUsage(**u) for m, u in current["by_model"].items()}
    for model, u in update["by_model"].items():
        if model not in by_model:
            by_model[model] = ModelUsage(**u)
            continue
        mine = by_model[model]
        for key in ("calls", "cached_calls", "prompt_tokens", "completion_tokens", "total_tokens"):
            mine[key] += u[key]
        mine["cost_usd"] = _add_cost(mine["cost_usd"], u["cost_usd"])
        if "batch_calls" in u or "batch_calls" in mine:
            mine["batch_calls"] = mine.get("batch_calls", 0) + u.get("batch_calls", 0)
        if "batch_saved_usd" in u or "batch_saved_usd" in mine:
            saved = mine.get("batch_saved_usd", 0.0) + u.get("batch_saved_usd", 0.0)
            mine["batch_saved_usd"] = saved
        if "cached_cost_usd" in u or "cached_cost_usd" in mine:
            counts: dict[str, Any] = dict(mine)
            for key in _CACHED_COUNTS:
                counts[key] = int(counts.get(key, 0)) + int(dict(u).get(key, 0))
            mine["cached_prompt_tokens"] = counts["cached_prompt_tokens"]
            mine["cached_completion_tokens"] = counts["cached_completion_tokens"]
            mine["cached_unknown"] = counts["cached_unknown"]
            mine["cached_cost_usd"] = _add_cost(
                mine.get("cached_cost_usd", 0.0), u.get("cached_cost_usd", 0.0)
            )
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


_PROPOSAL = TypeAdapter(Proposal)
_SHAPES = (
    "a list of proposals (each added, or replacing the one at its layer and index) or the list "
    "of layers the state shows (each a list of proposals; replaces them all)"
)


def _proposal(item: Any, where: str) -> Proposal:
    try:
        proposal = _PROPOSAL.validate_python(item)
    except ValidationError as err:
        raise LayersUpdateError(_describe(f"layers{where}", err)) from None
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


def _add_conversation(current: list[AnyMessage] | None, update: Any) -> list[AnyMessage]:
    """Reducer of ``messages``: LangGraph's ``add_messages`` (append, or replace by id), with an
    update that is not messages refused as a :class:`StateUpdateError` naming the key."""
    left: list[Any] = list(current or [])
    try:
        return cast(list[AnyMessage], add_messages(left, update))
    except (NotImplementedError, ValueError, TypeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise StateUpdateError(f"messages: {first}") from None


def either(current: bool | None, update: Any) -> bool:
    """Reducer of ``degraded``: once a turn is degraded it stays so."""
    if not isinstance(update, bool):
        raise StateUpdateError(f"degraded: expected true or false, got {update!r:.40}")
    return bool(current) or update


def _replaced_by(key: str, schema: Any) -> Callable[[Any, Any], Any]:
    """Reducer of a record kept whole (the last write wins, as without a reducer), checked
    against ``schema`` so a malformed write is refused naming ``key``."""
    adapter: TypeAdapter[Any] = TypeAdapter(schema)

    def replace(current: Any, update: Any) -> Any:
        return _checked(key, adapter, update)

    replace.__name__ = f"replace_{key}"
    return replace


class FallbackRecord(TypedDict):
    """How the answer was produced after the aggregator failed."""

    policy: str  # "best_proposal" or "model"
    source: str  # the proposal's node, or the fallback model
    reason: str  # why the aggregator's answer is missing
    ok: bool
    error: str | None
    # the fallback model's answer stopped at its length limit (finish reason ``length``)
    truncated: NotRequired[Truncation | None]


class JudgeAttempt(TypedDict):
    """A judge's first reply, kept when it gave no verdict and the judge was asked again."""

    reply: str | None
    error: str | None
    no_verdict: str | None  # why no verdict was read, with the reply's first words


class JudgeCall(TypedDict):
    """One model call of a select, rank or self-moa-seq step (a judge's: with its verdict)."""

    shown: list[str]  # the candidates in the order the model saw them
    reply: str | None  # what the model said (None when the call failed)
    error: str | None
    pick: str | None  # the candidate it chose (select, a pairwise judgment), if any
    # a judge's final [[...]] as read ("[[2]]", "[[3, 1, 2]]"); None: no verdict
    verdict: NotRequired[str | None]
    # no verdict: why, with the reply's first words (None when a verdict was read)
    no_verdict: NotRequired[str | None]
    # the first reply when it had no verdict and the judge was asked once more
    # (retry_no_verdict); ``reply``/``verdict`` are then the second answer's
    retried: NotRequired[JudgeAttempt]


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
    mode: str  # vote, select or rank
    passed: list[str]  # the proposals the next step sees, in the order it sees them
    votes: dict[str, int]  # vote: answer -> how many answers gave it (empty otherwise)
    reason: str
    winner: NotRequired[str | None]  # select: the answer the judge named (None: it named none)
    ranking: NotRequired[list[str]]  # rank: every answer, best first
    scores: NotRequired[dict[str, float]]  # rank (pairwise): answer -> wins
    calls: NotRequired[list[JudgeCall]]  # select/rank: each judge call, what it saw and said
    references: NotRequired[ReferencesRecord | None]  # answers the judge was not shown


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
    """Per-request overrides of the final answer's writer (the aggregator, or the fallback
    model): its sampling and the shape of its output. The OpenAI endpoint and the chat model
    pass them; the names and values are OpenAI's."""

    temperature: float
    max_tokens: int
    top_p: float
    presence_penalty: float
    frequency_penalty: float
    stop: list[str]
    response_format: dict[str, Any]
    parallel_tool_calls: bool
    seed: int  # relabel rows (the endpoint seeds every call of the run instead)


class MoAInput(TypedDict):
    """What a run takes: the conversation, ending with the user's new message, and optionally
    tools (OpenAI format) for the aggregator and overrides of its sampling."""

    messages: Annotated[list[AnyMessage], _add_conversation]
    tools: NotRequired[list[dict[str, Any]] | None]
    tool_choice: NotRequired[str | dict[str, Any] | None]
    aggregator_options: NotRequired[AggregatorOptions | None]


class MoAState(TypedDict):
    """The conversation and the record of the current turn.

    Every key with a record has a reducer that checks what is written, so a malformed state
    update (from Studio, say) is refused naming the key instead of breaking a later read.
    """

    messages: Annotated[list[AnyMessage], _add_conversation]
    layers: Annotated[list[list[Proposal]], merge_layers]
    critique: NotRequired[Annotated[CallRecord | None, _replaced_by("critique", CallRecord | None)]]
    aggregator: NotRequired[
        Annotated[CallRecord | None, _replaced_by("aggregator", CallRecord | None)]
    ]
    usage: Annotated[Usage, add_usage]
    degraded: Annotated[bool, either]
    # the budget's account, when the topology has a budget
    ledger: NotRequired[
        Annotated[BudgetAccount | None, _replaced_by("ledger", BudgetAccount | None)]
    ]
    fallback: NotRequired[
        Annotated[FallbackRecord | None, _replaced_by("fallback", FallbackRecord | None)]
    ]
    # what a human reviewer changed, with review on
    review: NotRequired[Annotated[ReviewRecord | None, _replaced_by("review", ReviewRecord | None)]]
    tools: NotRequired[list[dict[str, Any]] | None]  # the aggregator's tools (OpenAI format)
    tool_choice: NotRequired[str | dict[str, Any] | None]
    aggregator_options: NotRequired[AggregatorOptions | None]
    aggregation: NotRequired[AggregationRecord | None]  # how the final step chose, by mode
    early_stop: Annotated[list[EarlyStopRecord], operator.add]  # layers' agreement checks
    joins: Annotated[list[JoinRecord], operator.add]  # what layers with a join passed on
