"""The row engine shared by every way of running a relabel: one row through the graph, and the
loop that feeds rows to it within the concurrency and the budget, writing each record to the
ledger as its row finishes.

:func:`relabel_row` runs a row through :func:`langgraph_moa.run.stream_run`, the run loop
every door shares, inside a :func:`~langgraph_moa.llm.call_cache.row_scope` (each call is cached as
it finishes) and a :func:`~langgraph_moa.llm.usage.meter_calls` meter (each request is counted
as it ends), so a row that fails after paid calls is recorded with what it spent. A done row's
figures come from the state's usage (the two agree). The record names why a degraded row is
degraded (``degraded_reasons``: ``truncated``, ``proposer_failed``, ``critic_failed``,
``judge_failed``, ``fallback``, ``budget_trimmed``; ``other`` when none of these).

:func:`drive_rows` is the same whether a row runs in this process or on a Ray actor: only
``run_one`` differs. The budget (:class:`BatchBudget`) reserves each running row's worst case
(:func:`row_worst_case_usd`, computed once per row); when the next row does not fit, the loop
waits for rows in flight to settle (their real cost replaces their reservation) and tries
again; it stops only when nothing is in flight and the row still does not fit, and says why
(:func:`budget_stop_reason`, in ``SessionProgress.stop_reason``). The Ray engine's budget
actor follows the same rule.

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
(:class:`~langgraph_moa.errors.MoAStorageError`, from the ledger or from the call cache inside a
row) is the run's: :func:`relabel_row` lets it through instead of recording the row as failed,
and :func:`drive_rows` stops on it with that one error (rows in flight are cancelled and stay
unrecorded, so a rerun runs them; every row written before is durable).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import itertools
import json
import threading
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from langchain_core.messages import AIMessage, convert_to_messages, convert_to_openai_messages

from langgraph_moa.batch.ledger import Ledger, RowRecord, TurnRecord
from langgraph_moa.batch.rows import InvalidRow, Row
from langgraph_moa.errors import MoAError, MoAInputError, MoAStorageError
from langgraph_moa.graphs import Estimate, estimate
from langgraph_moa.graphs.builder import MoAGraph
from langgraph_moa.llm.call import error_text
from langgraph_moa.llm.call_cache import row_scope
from langgraph_moa.llm.text import text_of
from langgraph_moa.llm.usage import meter_calls
from langgraph_moa.result import result_of
from langgraph_moa.run import ReviewPause, RunFinished, stream_run
from langgraph_moa.spec.models import PriceTable
from langgraph_moa.spec.topology import Topology

Turns = Literal["last", "all"]
TurnContext = Literal["relabeled", "original"]
TURNS: tuple[Turns, ...] = ("last", "all")
TURN_CONTEXTS: tuple[TurnContext, ...] = ("relabeled", "original")

CHUNK = 256  # rows read and checked against the ledger at once
_GC_THRESHOLD = 10_000  # allocations between two young-generation collections during a run

_gc_lock = threading.Lock()
_gc_users = 0
_gc_before: tuple[int, int, int] = gc.get_threshold()


def round_usd(cost: float | None) -> float | None:
    """A cost as relabel prints and writes it: to the micro-dollar (sums of floats otherwise
    show as 0.07126249999999999)."""
    return None if cost is None else round(cost, 6)


@contextlib.contextmanager
def steady_gc() -> Iterator[None]:
    """Keep Python's cyclic garbage collector from taking a large share of a run's CPU.

    A row allocates many short-lived objects (requests, messages, records), and with the
    default thresholds the collector ran every 700 allocations and every few seconds walked
    the whole heap, the imported libraries included: about 0.8 ms of CPU per LLM call, an
    eighth of the engine's. During a run, what was allocated before it is frozen (never walked
    again until the run ends) and young objects are collected every 10,000 allocations; both are
    undone when the last run of the process ends. Nothing is left uncollected: reference
    counting frees almost everything at once, the rest waits for a later collection.
    """
    global _gc_users, _gc_before
    with _gc_lock:
        _gc_users += 1
        if _gc_users == 1:
            _gc_before = gc.get_threshold()
            gc.freeze()
            gc.set_threshold(_GC_THRESHOLD, *_gc_before[1:])
    try:
        yield
    finally:
        with _gc_lock:
            _gc_users -= 1
            if _gc_users == 0:
                gc.set_threshold(*_gc_before)
                gc.unfreeze()


@dataclass
class SessionProgress:
    """This session's progress, as the runner reports it after every row."""

    total: int | None = None  # rows in the input, when known (for the ETA)
    seen: int = 0  # rows read
    done: int = 0
    failed: int = 0
    invalid: int = 0
    skipped: int = 0  # recorded earlier
    degraded: int = 0
    calls: int = 0
    cached_calls: int = 0
    tokens: int = 0
    cost_usd: float = 0.0
    running: int = 0
    started: float = field(default_factory=time.perf_counter)
    stopped: str | None = None
    stop_reason: str | None = None  # in words: spent / budget and why the next row could not start

    def add(self, record: RowRecord) -> None:
        if record["status"] == "done":
            self.done += 1
        else:
            self.failed += 1
        self.degraded += bool(record["degraded"])
        self.calls += record["calls"]
        self.cached_calls += record["cached_calls"]
        self.tokens += record["tokens"]
        self.cost_usd += record["cost_usd"] or 0.0

    @property
    def finished(self) -> int:
        """Rows read and settled: done, failed, invalid or skipped."""
        return self.done + self.failed + self.invalid + self.skipped

    @property
    def elapsed_s(self) -> float:
        return time.perf_counter() - self.started

    @property
    def rows_per_s(self) -> float:
        finished = self.done + self.failed
        return finished / self.elapsed_s if finished and self.elapsed_s > 0 else 0.0

    @property
    def eta_s(self) -> float | None:
        if self.total is None or not self.rows_per_s:
            return None
        left = max(self.total - self.seen, 0) + self.running
        return left / self.rows_per_s

    def as_dict(self) -> dict[str, Any]:
        return {
            "done": self.done,
            "failed": self.failed,
            "invalid": self.invalid,
            "skipped": self.skipped,
            "degraded": self.degraded,
            "calls": self.calls,
            "cached_calls": self.cached_calls,
            "tokens": self.tokens,
            "cost_usd": round_usd(self.cost_usd),
            "elapsed_s": round(self.elapsed_s, 3),
            "rows_per_s": round(self.rows_per_s, 3),
            "stopped": self.stopped,
            "stop_reason": self.stop_reason,
        }


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
) -> RowRecord:
    """Run one row through the graph (the shared run loop) and make its record; a run that
    fails gives a ``failed`` record with the error, never an exception (cancellation aside).
    ``turns="all"``: every assistant turn, one run each (see the module docstring)."""
    if turns == "all":
        return await _relabel_turns(graph, topology, row, turn_context)
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
    try:
        with row_scope(row.id), meter_calls(_prices_of(topology)) as meter:
            async for event in stream_run(
                graph, row.inputs(), config, tokens=False, deadline_s=topology.deadline_s
            ):
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
    except asyncio.CancelledError:
        raise
    except Exception as err:  # the row failed; the run goes on
        if (storage := _storage_failure(err)) is not None:  # the run's, not the row's
            raise storage from None
        record["error"] = str(err) if isinstance(err, MoAError) else error_text(err)
        if meter is not None:  # what its calls were counted at before it failed
            record["calls"], record["cached_calls"] = meter.calls, meter.cached_calls
            record["tokens"], record["cost_usd"] = meter.tokens, meter.cost_usd
    record["latency_s"] = round(time.perf_counter() - start, 4)
    return record


def _storage_failure(err: BaseException) -> MoAStorageError | None:
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


def _first_failure(group: BaseExceptionGroup[Any]) -> BaseException:
    """What stopped a task group, as one error: a storage failure first, else the first one."""
    storage = _storage_failure(group)
    if storage is not None:
        return storage
    first: BaseException = group
    while isinstance(first, BaseExceptionGroup):
        first = first.exceptions[0]
    return first


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
    graph: MoAGraph, topology: Topology, row: Row, turn_context: TurnContext
) -> RowRecord:
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
        last = await relabel_row(graph, topology, turn_row)
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


def budget_stop_reason(spent: float, max_usd: float, where: str, worst: float) -> str:
    """The words of a stop at the budget."""
    return (
        f"stopped at the budget: spent ${spent:.4f} of ${max_usd:.4f}; the next row ({where}) "
        f"could cost up to ${worst:.4f}"
    )


class BatchBudget:
    """The run's budget: a row starts while what is spent, plus the worst cases reserved for
    the rows running, plus its own worst case stay within ``max_usd``; a finished row's real
    cost replaces its reservation."""

    def __init__(
        self,
        max_usd: float | None,
        spent: float,
        topology: Topology,
        *,
        turns: Turns = "last",
        turn_context: TurnContext = "relabeled",
    ) -> None:
        self.max_usd = max_usd
        self.spent = spent
        self.topology = topology
        self.prices = PriceTable(topology.prices)
        self.held: dict[str, float] = {}
        self.turns: Turns = turns
        self.turn_context: TurnContext = turn_context
        self.settled = asyncio.Event()  # set whenever a running row settles

    def worst(self, row: Row) -> float:
        """The row's worst case (0 without a budget: nothing is counted then)."""
        if self.max_usd is None:
            return 0.0
        return row_worst_case_usd(
            self.topology, row, self.prices, turns=self.turns, turn_context=self.turn_context
        )

    def admit(self, row: Row, worst: float | None = None) -> bool:
        """Reserve the row's worst case if it fits now (``worst``: already computed)."""
        if self.max_usd is None:
            return True
        worst = self.worst(row) if worst is None else worst
        if self.spent + sum(self.held.values()) + worst > self.max_usd:
            return False
        self.held[row.id] = worst
        return True

    def settle(self, row_id: str, cost: float | None) -> None:
        self.held.pop(row_id, None)
        self.spent += cost or 0.0
        self.settled.set()

    def release(self, row_id: str) -> None:
        """A row that ended without a record (cancelled): its reservation goes."""
        if self.held.pop(row_id, None) is not None:
            self.settled.set()

    async def wait_to_admit(self, row: Row) -> str | None:
        """Admit the row, waiting while rows in flight may settle and make room; the stop's
        reason when it cannot start (nothing in flight, and it still does not fit)."""
        if self.max_usd is None:
            return None
        worst = self.worst(row)  # once per row
        while not self.admit(row, worst):
            if not self.held:
                return budget_stop_reason(self.spent, self.max_usd, row.where, worst)
            self.settled.clear()
            await self.settled.wait()
        return None


@dataclass
class Plan:
    """What a session runs: the rows to run, and what it skips and records as invalid."""

    ledger: Ledger
    retry_failed: bool
    tally: SessionProgress
    in_flight: set[str] = field(default_factory=set)

    async def runnable(self, rows: Iterator[Row | InvalidRow]) -> AsyncGenerator[Row, None]:
        """The rows to run, read a chunk at a time, checked against the ledger. A chunk's
        invalid rows are recorded before any of its rows is handed out, so a run that stops
        early (the budget) has recorded every invalid row it read."""
        while chunk := list(itertools.islice(rows, CHUNK)):
            valid = [r for r in chunk if isinstance(r, Row)]
            invalid = [r for r in chunk if isinstance(r, InvalidRow)]
            # rows of earlier chunks are in flight now or were recorded before the query
            in_flight = set(self.in_flight)
            seen = await asyncio.to_thread(self.ledger.seen, [r.id for r in valid])
            here: set[str] = set()
            wanted = "failed" if self.retry_failed else None
            runs: list[Row | None] = []  # None: a row skipped (recorded earlier)
            for row in valid:
                status, where = seen.get(row.id, (None, row.where))
                if row.id in here or row.id in in_flight or where != row.where:
                    first = where if where != row.where else "earlier in this run"
                    invalid.append(
                        InvalidRow(row.where, f"duplicate id {row.id!r} ({first})", row.id)
                    )
                    continue
                here.add(row.id)
                runs.append(row if status == wanted else None)  # else done, or not asked for
            if invalid:
                await asyncio.to_thread(self.ledger.write_invalid, invalid)
                self.tally.invalid += len(invalid)
                self.tally.seen += len(invalid)
            for run in runs:
                if run is None:
                    self.tally.skipped += 1
                else:
                    yield run
                self.tally.seen += 1


async def drive_rows(
    run_one: Callable[[Row], Awaitable[RowRecord]],
    plan: Plan,
    rows: Iterator[Row | InvalidRow],
    *,
    concurrency: int,
    budget: BatchBudget,
    on_record: Callable[[RowRecord], None] | None,
    on_progress: Callable[[SessionProgress], None] | None,
) -> None:
    """Run the plan's rows with ``run_one`` (in this process, or on Ray), ``concurrency`` at
    once, within the budget (see the module docstring); each record is written to the ledger
    as its row finishes. What stops the run (a disk or database failure) is raised as that one
    error, not as a group."""
    tally = plan.tally
    slots = asyncio.Semaphore(concurrency)

    async def one(row: Row) -> None:
        try:
            record = await run_one(row)
            # as written: a record that could not be stored is its row's failure
            (record,) = await asyncio.to_thread(plan.ledger.write, [record])
            tally.add(record)
            budget.settle(row.id, record["cost_usd"])
            if on_record is not None:
                on_record(record)
        finally:
            plan.in_flight.discard(row.id)
            budget.release(row.id)
            tally.running -= 1
            slots.release()
            if on_progress is not None:
                on_progress(tally)

    try:
        async with (
            asyncio.TaskGroup() as group,
            contextlib.aclosing(plan.runnable(rows)) as runnable,
        ):
            async for row in runnable:
                await slots.acquire()
                stop = await budget.wait_to_admit(row)
                if stop is not None:
                    slots.release()
                    tally.stopped, tally.stop_reason = "budget", stop
                    break
                plan.in_flight.add(row.id)
                tally.running += 1
                group.create_task(one(row))
                if on_progress is not None:
                    on_progress(tally)
    except ExceptionGroup as failed:
        raise _first_failure(failed) from None
