"""One row of a relabel through the graph, and its record: the row engine every way of running
a relabel shares (in this process, on a Ray actor, and the eval driver's items).

:func:`relabel_row` runs a row through :func:`langgraph_moa.run.stream_run`, the run loop
every door shares, inside a :func:`~langgraph_moa.llm.call_cache.row_scope` (each call is cached as
it finishes) and a :func:`~langgraph_moa.llm.usage.meter_calls` meter (each request is counted
as it ends), so a row that fails after paid calls is recorded with what it spent. A done row's
figures come from the state's usage (the two agree). The record names why a degraded row is
degraded (``degraded_reasons``: ``truncated``, ``proposer_failed``, ``critic_failed``,
``judge_failed``, ``fallback``, ``budget_trimmed``; ``other`` when none of these).

Turns: by default (``turns="last"``) a row is one graph run, for the answer after its prompt.
With ``turns="all"`` every assistant turn of a multi-turn row is relabeled (:func:`turn_points`
says which messages are turns), one graph run per turn, in order: each turn's prompt holds the
*relabeled* earlier turns (``turn_context="relabeled"``) or the row's original ones
(``"original"``). The row's record keeps every turn
(:class:`~langgraph_moa.batch.ledger.TurnRecord`) and sums their figures; a failed turn fails
the row (what its earlier turns paid still counted), and the turns after it are not run.
:func:`row_worst_case_usd` is the worst case of a whole row, every turn counted, which the budget
reserves before the row starts.

A row that asks for JSON (``response_format`` ``json_object`` or ``json_schema``) gets its answer
checked to parse as JSON here, where the record is made: an answer that does not parse makes the
row degraded with the reason ``invalid_json`` (``degraded_reasons``), so exports leave it out.
An answer that calls tools instead is not checked (its content is not the answer).

A row's own troubles are its record (a failed row, an invalid one); a disk or database failure
(:class:`~langgraph_moa.errors.MoAStorageError`, from the call cache inside a row) is the run's:
:func:`relabel_row` lets it through (:func:`storage_failure` finds it) instead of recording the
row as failed. The loop that feeds rows to it is :mod:`langgraph_moa.batch.feeding`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import time
from typing import Any, Literal, Protocol

from langchain_core.messages import AIMessage, convert_to_messages, convert_to_openai_messages
from langgraph.types import Durability

from langgraph_moa.batch.ledger import RowRecord, TurnRecord
from langgraph_moa.batch.row_check import Row
from langgraph_moa.batch.wave_store import RowDeferral
from langgraph_moa.errors import MoAError, MoAInputError, MoAStorageError
from langgraph_moa.graphs import Estimate, estimate
from langgraph_moa.graphs.builder import MoAGraph
from langgraph_moa.llm.call import error_text
from langgraph_moa.llm.call_cache import row_scope
from langgraph_moa.llm.deferred import defer_calls
from langgraph_moa.llm.text import text_of
from langgraph_moa.llm.usage import meter_calls
from langgraph_moa.result import result_of
from langgraph_moa.run import ReviewPause, RunFinished, stream_run
from langgraph_moa.spec.models import PriceTable
from langgraph_moa.spec.topology import Topology


class RowWaves(Protocol):
    """What a row needs of the batch engine (:class:`langgraph_moa.batch.runner.BatchRows`)."""

    def deferral(self, thread: str) -> RowDeferral:
        """The deferral of a row's thread for this pass."""
        ...

    async def started(self, graph: MoAGraph, config: Any) -> bool:
        """Whether the thread in ``config`` was started (in this session or an earlier one)."""
        ...

    async def queue(self, row_id: str, deferral: RowDeferral) -> None:
        """Store what the thread deferred in this pass (it paused for them), for the next
        wave."""
        ...


Turns = Literal["last", "all"]
TurnContext = Literal["relabeled", "original"]
TURNS: tuple[Turns, ...] = ("last", "all")
TURN_CONTEXTS: tuple[TurnContext, ...] = ("relabeled", "original")


_price_tables: dict[int, tuple[Topology, PriceTable]] = {}


def _prices_of(topology: Topology) -> PriceTable:
    """The topology's price table, made once (it may read ``MOA_PRICES``), not once a row."""
    kept = _price_tables.get(id(topology))
    if kept is None or kept[0] is not topology:
        if len(_price_tables) >= 8:
            _price_tables.clear()
        kept = _price_tables[id(topology)] = (topology, PriceTable(topology.prices))
    return kept[1]


def _figures(result: dict[str, Any]) -> tuple[int, int, int, float | None]:
    usage = result.get("usage") or {}
    by_model = (usage.get("by_model") or {}).values()
    calls = sum(m["calls"] for m in by_model)
    cached = sum(m["cached_calls"] for m in by_model)
    return calls, cached, int(usage.get("total_tokens") or 0), usage.get("cost_usd")


def _is_json_answer(answer: AIMessage | None) -> bool:
    """Whether a JSON-mode row's answer is JSON (an answer that calls tools is not checked)."""
    if answer is None:
        return False
    if answer.tool_calls:
        return True
    try:
        json.loads(text_of(answer))
    except (ValueError, RecursionError):
        return False
    return True


async def relabel_row(
    graph: MoAGraph,
    topology: Topology,
    row: Row,
    *,
    turns: Turns = "last",
    turn_context: TurnContext = "relabeled",
    waves: RowWaves | None = None,
    turn: int | None = None,
) -> RowRecord | None:
    """Run one row through the graph (the shared run loop) and make its record; a run that
    fails gives a ``failed`` record with the error, never an exception (cancellation aside).
    ``turns="all"``: every assistant turn, one run each (see the module docstring).

    Under the batch engine (``waves``), the row runs in its own checkpointed thread (one per
    turn), started or resumed where it paused; calls to models with a Batch API are deferred
    (:mod:`langgraph_moa.llm.deferred`), and when the run pauses for them the row returns None
    (it waits for the next wave) after queuing its requests."""
    if turns == "all":
        return await _relabel_turns(graph, topology, row, turn_context, waves)
    start = time.perf_counter()
    record = RowRecord(
        id=row.id,
        where=row.where,
        status="failed",
        error=None,
        prompt=row.prompt,
        tools=row.tools,
        completion=row.completion,
        metadata=row.data.get("metadata"),
        result=None,
        answer_message=None,
        cost_usd=None,
        calls=0,
        cached_calls=0,
        tokens=0,
        latency_s=0.0,
        degraded=False,
        degraded_reasons=[],
    )
    config: Any = {"metadata": {"relabel_row": row.id}, "tags": ["moa-relabel"]}
    meter = None
    inputs: Any = row.inputs()
    deferral: RowDeferral | None = None
    deadline_s = topology.deadline_s
    if waves is not None:
        thread = row.id if turn is None else f"{row.id}#{turn}"
        config["configurable"] = {"thread_id": thread}
        deferral = waves.deferral(thread)
        if await waves.started(graph, config):  # started in an earlier wave: resume
            inputs = None
        deadline_s = None  # a wave takes hours; the batch side has its own clock
    try:
        with (
            row_scope(row.id),
            meter_calls(_prices_of(topology)) as meter,
            defer_calls(deferral) if deferral is not None else contextlib.nullcontext(),
        ):
            # a row of the batch engine writes its thread's checkpoint once a pass, when it
            # pauses or ends (each wave resumes from there), not after every step
            durability: Durability | None = "exit" if waves is not None else None
            async for event in stream_run(
                graph, inputs, config, tokens=False, deadline_s=deadline_s, durability=durability
            ):
                if deferral is not None and deferral.requests:
                    continue  # paused for a wave: what it wrote so far is not the answer
                if isinstance(event, ReviewPause):
                    raise MoAInputError("the topology paused for review")
                if isinstance(event, RunFinished):
                    state = event.state
                    result = result_of(state, latency_s=event.latency_s)  # type: ignore[arg-type]
                    answer = next(
                        (
                            m
                            for m in reversed(state.get("messages") or [])
                            if isinstance(m, AIMessage)
                        ),
                        None,
                    )
                    record["result"] = result
                    message: Any = convert_to_openai_messages(answer) if answer else None
                    record["answer_message"] = message
                    record["status"] = "done"
                    record["degraded"] = bool(result["degraded"])
                    record["degraded_reasons"] = degraded_reasons(result)
                    calls, cached, tokens, cost = _figures(result)
                    record["calls"], record["cached_calls"] = calls, cached
                    record["tokens"], record["cost_usd"] = tokens, cost
                    if row.json_mode and not _is_json_answer(answer):
                        record["degraded"] = True
                        reasons = record.setdefault("degraded_reasons", [])
                        reasons.append("invalid_json")
        if waves is not None and deferral is not None and deferral.requests:
            await waves.queue(row.id, deferral)
            return None
    except asyncio.CancelledError:
        raise
    except Exception as err:  # the row failed; the run goes on
        if (storage := storage_failure(err)) is not None:  # the run's, not the row's
            raise storage from None
        record["error"] = str(err) if isinstance(err, MoAError) else error_text(err)
        if meter is not None:  # what its calls were counted at before it failed
            record["calls"], record["cached_calls"] = meter.calls, meter.cached_calls
            record["tokens"], record["cost_usd"] = meter.tokens, meter.cost_usd
    record["latency_s"] = round(time.perf_counter() - start, 4)
    return record


def storage_failure(err: BaseException) -> MoAStorageError | None:
    """The disk or database failure behind ``err`` (itself, in a group, or its cause), if any."""
    seen: set[int] = set()
    todo: list[BaseException] = [err]
    while todo:
        current = todo.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, MoAStorageError):
            return current
        if isinstance(current, BaseExceptionGroup):
            todo.extend(current.exceptions)
        todo.extend(e for e in (current.__cause__, current.__context__) if e is not None)
    return None


def turn_points(row: Row) -> list[int]:
    """Where the turns of ``row`` are in its whole conversation (prompt + original
    completion): the index of each assistant message relabeled by ``turns="all"``, in order.

    A turn is an assistant message that answers a user message or tool results and is not
    itself answered by tool results (those results answer the calls it made, so it cannot be
    replaced without making them lie: it stays as it was, part of the context). The last turn
    is the row's completion (index ``len(row.prompt)``), present or not.
    """
    prompt = row.prompt
    points = [
        k
        for k, message in enumerate(prompt)
        if message["role"] == "assistant"
        and k > 0
        and prompt[k - 1]["role"] in ("user", "tool")
        and (k + 1 >= len(prompt) or prompt[k + 1]["role"] != "tool")
    ]
    return [*points, len(prompt)]


def _turn_prompt(
    row: Row, index: int, answers: dict[int, dict[str, Any]], turn_context: TurnContext
) -> list[dict[str, Any]]:
    """The prompt of the turn at ``index``: the messages before it, earlier turns replaced by
    their relabeled answers in ``answers`` when the context is relabeled."""
    before = row.prompt[:index]
    if turn_context == "original":
        return list(before)
    return [answers.get(k, m) for k, m in enumerate(before)]


def _answer_message(record: RowRecord) -> dict[str, Any]:
    message = record.get("answer_message")
    if message:
        return dict(message)
    return {"role": "assistant", "content": (record["result"] or {}).get("answer", "")}


async def _relabel_turns(
    graph: MoAGraph,
    topology: Topology,
    row: Row,
    turn_context: TurnContext,
    waves: RowWaves | None = None,
) -> RowRecord | None:
    """Every turn of ``row`` through the graph, in order; one record summing them."""
    points = turn_points(row)
    answers: dict[int, dict[str, Any]] = {}
    turns: list[TurnRecord] = []
    last: RowRecord | None = None
    for index in points:
        original = row.prompt[index] if index < len(row.prompt) else row.completion
        turn_row = dataclasses.replace(
            row, prompt=_turn_prompt(row, index, answers, turn_context), completion=original
        )
        last = await relabel_row(graph, topology, turn_row, waves=waves, turn=index)
        if last is None:  # this turn waits for a wave (batch engine)
            return None
        turn = TurnRecord(
            index=index,
            status=last["status"],
            error=last["error"],
            completion=original,
            answer_message=last.get("answer_message"),
            result=last["result"],
            cost_usd=last["cost_usd"],
            calls=last["calls"],
            cached_calls=last["cached_calls"],
            tokens=last["tokens"],
            latency_s=last["latency_s"],
            degraded=last["degraded"],
        )
        if "degraded_reasons" in last:
            turn["degraded_reasons"] = last["degraded_reasons"]
        turns.append(turn)
        if last["status"] != "done":
            break
        answers[index] = _answer_message(last)
    assert last is not None  # a row has at least its last turn
    record = last.copy()  # the last turn run: its answer is the row's
    record["prompt"], record["completion"] = row.prompt, row.completion
    record["turns"], record["turn_context"] = turns, turn_context
    if last["status"] != "done":
        record["error"] = f"turn {len(turns)} of {len(points)}: {last['error']}"
    costs = [t["cost_usd"] for t in turns if t["cost_usd"] is not None]
    record["cost_usd"] = sum(costs) if costs else None
    record["calls"] = sum(t["calls"] for t in turns)
    record["cached_calls"] = sum(t["cached_calls"] for t in turns)
    record["tokens"] = sum(t["tokens"] for t in turns)
    record["latency_s"] = round(sum(t["latency_s"] for t in turns), 4)
    record["degraded"] = any(t["degraded"] for t in turns)
    reasons = [r for t in turns for r in t.get("degraded_reasons") or []]
    if reasons:
        record["degraded_reasons"] = list(dict.fromkeys(reasons))
    return record


def _answer_bound(topology: Topology) -> int:
    """The most tokens a row's final answer can hold: the aggregator's limit, or a last-layer
    proposer's when the aggregator picks a proposal (select, vote, rank)."""
    return max(
        [topology.aggregator.max_tokens, *(a.max_tokens for a in topology.layers[-1].proposers)]
    )


def row_estimates(
    topology: Topology,
    row: Row,
    prices: PriceTable,
    *,
    turns: Turns = "last",
    turn_context: TurnContext = "relabeled",
) -> list[Estimate]:
    """The worst case of each graph run ``row`` takes (one per turn with ``turns="all"``).

    With relabeled context, each earlier turn's answer in a later turn's prompt is counted at
    its largest (:func:`_answer_bound` tokens, a stand-in text that every token counter counts
    at least that long) rather than at the original's size.
    """
    if turns == "last":
        return [estimate(topology, row.messages(), prices=prices)]
    points = turn_points(row)
    bound = _answer_bound(topology)
    stand_in = {"role": "assistant", "content": " x" * (2 * bound)}  # >= bound tokens
    answers = {k: stand_in for k in points}
    return [
        estimate(
            topology,
            convert_to_messages(_turn_prompt(row, index, answers, turn_context)),
            prices=prices,
        )
        for index in points
    ]


def row_worst_case_usd(
    topology: Topology,
    row: Row,
    prices: PriceTable,
    *,
    turns: Turns = "last",
    turn_context: TurnContext = "relabeled",
) -> float:
    """The most one row may cost: the sum of its turns' worst cases, every call of the topology
    writing its full ``max_tokens``, prompts counted so as never to come out low
    (:func:`langgraph_moa.nodes.budget.estimate`); 0 for unpriced models, which a run with a
    budget refuses before it starts. The one place a row's worst case is made (the budget of
    both engines calls it)."""
    found = row_estimates(topology, row, prices, turns=turns, turn_context=turn_context)
    return sum(e.cost_usd or 0.0 for e in found)


_SKIPPED_BY_BUDGET = "skipped to stay within budget"


def degraded_reasons(result: dict[str, Any]) -> list[str]:
    """Why a finished row is degraded, read from its result record (empty when it is not)."""
    if not result.get("degraded"):
        return []
    reasons: list[str] = []
    aggregator = result.get("aggregator") or {}
    fallback = result.get("fallback") or {}
    if aggregator.get("truncated") or fallback.get("truncated"):
        reasons.append("truncated")
    proposals = [p for layer in result.get("layers") or [] for p in layer]
    if any(not p["ok"] and p.get("error") != _SKIPPED_BY_BUDGET for p in proposals):
        reasons.append("proposer_failed")
    critique = result.get("critique")
    if critique and not critique["ok"] and critique.get("error") != _SKIPPED_BY_BUDGET:
        reasons.append("critic_failed")
    judged = [*((result.get("aggregation") or {}).get("calls") or [])]
    judged += [c for join in result.get("joins") or [] for c in join.get("calls") or []]
    if any(c.get("error") for c in judged):
        reasons.append("judge_failed")
    if result.get("fallback"):
        reasons.append("fallback")
    skipped = [p for p in proposals if p.get("error") == _SKIPPED_BY_BUDGET]
    if skipped or (critique and critique.get("error") == _SKIPPED_BY_BUDGET):
        reasons.append("budget_trimmed")
    return reasons or ["other"]
