"""The row engine shared by every way of running a relabel: one row through the graph, and the
loop that feeds rows to it within the concurrency and the budget, writing each record to the
ledger as its row finishes.

:func:`relabel_row` runs a row through :func:`langgraph_moa.run.stream_run`, the run loop
every door shares, inside a :func:`~langgraph_moa.nodes.cache.row_scope` (each call is cached as
it finishes). :func:`drive_rows` is the same whether a row runs in this process or on a Ray
actor: only ``run_one`` differs.

A row's own troubles are its record (a failed row, an invalid one); a disk or database failure
(:class:`~langgraph_moa.errors.MoAStorageError`, from the ledger or from the call cache inside a
row) is the run's: :func:`relabel_row` lets it through instead of recording the row as failed,
and :func:`drive_rows` stops on it with that one error (rows in flight are cancelled and stay
unrecorded, so a rerun runs them; every row written before is durable).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import threading
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from langchain_core.messages import AIMessage, convert_to_openai_messages

from langgraph_moa.batch.ledger import Ledger, RowRecord
from langgraph_moa.batch.rows import InvalidRow, Row
from langgraph_moa.errors import MoAError, MoAInputError, MoAStorageError
from langgraph_moa.graphs.builder import MoAGraph
from langgraph_moa.nodes.budget import estimate
from langgraph_moa.nodes.cache import row_scope
from langgraph_moa.nodes.calls import error_text
from langgraph_moa.result import result_of
from langgraph_moa.run import ReviewPause, RunFinished, stream_run
from langgraph_moa.spec.models import PriceTable
from langgraph_moa.spec.topology import Topology

__all__ = ["CHUNK", "Budget", "Plan", "Tally", "drive_rows", "relabel_row", "steady_gc"]

CHUNK = 256  # rows read and checked against the ledger at once
GC_THRESHOLD = 10_000  # allocations between two young-generation collections during a run

_gc_lock = threading.Lock()
_gc_users = 0
_gc_before: tuple[int, int, int] = gc.get_threshold()


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
            gc.set_threshold(GC_THRESHOLD, *_gc_before[1:])
    try:
        yield
    finally:
        with _gc_lock:
            _gc_users -= 1
            if _gc_users == 0:
                gc.set_threshold(*_gc_before)
                gc.unfreeze()


@dataclass
class Tally:
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
            "cost_usd": round(self.cost_usd, 6),
            "elapsed_s": round(self.elapsed_s, 3),
            "rows_per_s": round(self.rows_per_s, 3),
            "stopped": self.stopped,
        }


def _figures(result: dict[str, Any]) -> tuple[int, int, int, float | None]:
    usage = result.get("usage") or {}
    by_model = (usage.get("by_model") or {}).values()
    calls = sum(m["calls"] for m in by_model)
    cached = sum(m["cached_calls"] for m in by_model)
    return calls, cached, int(usage.get("total_tokens") or 0), usage.get("cost_usd")


async def relabel_row(graph: MoAGraph, topology: Topology, row: Row) -> RowRecord:
    """Run one row through the graph (the shared run loop) and make its record; a run that
    fails gives a ``failed`` record with the error, never an exception (cancellation aside)."""
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
    )
    config: Any = {"metadata": {"relabel_row": row.id}, "tags": ["moa-relabel"]}
    try:
        with row_scope(row.id):
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
                    calls, cached, tokens, cost = _figures(result)
                    record["calls"], record["cached_calls"] = calls, cached
                    record["tokens"], record["cost_usd"] = tokens, cost
    except asyncio.CancelledError:
        raise
    except Exception as err:  # the row failed; the run goes on
        if (storage := storage_failure(err)) is not None:  # the run's, not the row's
            raise storage from None
        record["error"] = str(err) if isinstance(err, MoAError) else error_text(err)
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


def _first_failure(group: BaseExceptionGroup[Any]) -> BaseException:
    """What stopped a task group, as one error: a storage failure first, else the first one."""
    storage = storage_failure(group)
    if storage is not None:
        return storage
    first: BaseException = group
    while isinstance(first, BaseExceptionGroup):
        first = first.exceptions[0]
    return first


class Budget:
    """The run's budget: admits a row while spent + worst cases in flight stay within it."""

    def __init__(self, max_usd: float | None, spent: float, topology: Topology) -> None:
        self.max_usd = max_usd
        self.spent = spent
        self.topology = topology
        self.prices = PriceTable(topology.prices)
        self.held: dict[str, float] = {}

    def admit(self, row: Row) -> bool:
        if self.max_usd is None:
            return True
        worst = estimate(self.topology, row.messages(), prices=self.prices).cost_usd or 0.0
        if self.spent + sum(self.held.values()) + worst > self.max_usd:
            return False
        self.held[row.id] = worst
        return True

    def settle(self, row_id: str, cost: float | None) -> None:
        self.held.pop(row_id, None)
        self.spent += cost or 0.0


@dataclass
class Plan:
    """What a session runs: the rows to run, and what it skips and records as invalid."""

    ledger: Ledger
    retry_failed: bool
    tally: Tally
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
    budget: Budget,
    on_record: Callable[[RowRecord], None] | None,
    on_progress: Callable[[Tally], None] | None,
) -> None:
    """Run the plan's rows with ``run_one`` (in this process, or on Ray), ``concurrency`` at
    once, within the budget; each record is written to the ledger as its row finishes. What
    stops the run (a disk or database failure) is raised as that one error, not as a group."""
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
            budget.held.pop(row.id, None)
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
                if not budget.admit(row):
                    slots.release()
                    tally.stopped = "budget"
                    break
                plan.in_flight.add(row.id)
                tally.running += 1
                group.create_task(one(row))
                if on_progress is not None:
                    on_progress(tally)
    except ExceptionGroup as failed:
        raise _first_failure(failed) from None
