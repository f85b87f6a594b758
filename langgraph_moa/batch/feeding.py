"""The loop that feeds a relabel's rows to the row engine within the concurrency and the
budget, writing each record to the ledger as its row finishes, and the session's progress.

:func:`drive_rows` is the same whether a row runs in this process or on a Ray actor: only
``run_one`` differs (in this process, :func:`langgraph_moa.batch.one_row.relabel_row`). The budget
(:class:`BatchBudget`) reserves each running row's worst case
(:func:`~langgraph_moa.batch.one_row.row_worst_case_usd`, computed once per row, every turn of a
``turns="all"`` row counted); when the next row does not fit, the loop waits for rows in flight to
settle (their real cost replaces their reservation) and tries again; it stops only when nothing is
in flight and the row still does not fit, and says why (:func:`budget_stop_reason`, in
``SessionProgress.stop_reason``). The Ray engine's budget actor follows the same rule.

:class:`Plan` reads rows a chunk at a time and checks them against the ledger (skip what is
done, record invalid and duplicate rows). A disk or database failure
(:class:`~langgraph_moa.errors.MoAStorageError`, from the ledger or from the call cache inside a
row) stops :func:`drive_rows` with that one error (rows in flight are cancelled and stay
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

from langgraph_moa.batch.ledger import Ledger, RowRecord
from langgraph_moa.batch.one_row import TurnContext, Turns, row_worst_case_usd, storage_failure
from langgraph_moa.batch.row_check import InvalidRow, Row
from langgraph_moa.spec.models import PriceTable
from langgraph_moa.spec.topology import Topology

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
    waiting: int = 0  # rows paused for a wave at the end of the last pass (batch engine)
    started: float = field(default_factory=time.perf_counter)
    stopped: str | None = None
    stop_reason: str | None = None  # in words: spent / budget and why the next row could not start
    batch: dict[str, Any] | None = None  # the batch engine's waves and batches (else None)
    batch_saved_usd: float = 0.0  # the batch calls of the rows done, at online less batch price

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
        usage = (record.get("result") or {}).get("usage") or {}
        for model in (usage.get("by_model") or {}).values():
            self.batch_saved_usd += model.get("batch_saved_usd") or 0.0

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
        } | (
            {
                "waiting": self.waiting,
                "batch": self.batch,
                "batch_saved_usd": round_usd(self.batch_saved_usd),
            }
            if self.batch is not None
            else {}
        )


def _first_failure(group: BaseExceptionGroup[Any]) -> BaseException:
    """What stopped a task group, as one error: a storage failure first, else the first one."""
    storage = storage_failure(group)
    if storage is not None:
        return storage
    first: BaseException = group
    while isinstance(first, BaseExceptionGroup):
        first = first.exceptions[0]
    return first


def budget_stop_reason(spent: float, max_usd: float, where: str, worst: float) -> str:
    """The words of a stop at the budget."""
    return (
        f"stopped at the budget: spent ${spent:.4f} of ${max_usd:.4f}; the next row ({where}) "
        f"could cost up to ${worst:.4f}"
    )


LATER = "later"  # a row the budget holds back until rows waiting for a wave settle


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
        prices: PriceTable | None = None,
    ) -> None:
        self.max_usd = max_usd
        self.spent = spent
        self.topology = topology
        # the batch engine reserves batch prices for the calls it sends in batches
        self.prices = prices or PriceTable(topology.prices)
        self.held: dict[str, float] = {}
        self.turns: Turns = turns
        self.turn_context: TurnContext = turn_context
        self.settled = asyncio.Event()  # set whenever a running row settles
        self.parked: set[str] = set()  # rows holding a reservation while they wait for a wave

    def worst(self, row: Row) -> float:
        """The row's worst case (0 without a budget: nothing is counted then)."""
        if self.max_usd is None:
            return 0.0
        return row_worst_case_usd(
            self.topology, row, self.prices, turns=self.turns, turn_context=self.turn_context
        )

    def admit(self, row: Row, worst: float | None = None) -> bool:
        """Reserve the row's worst case if it fits now (``worst``: already computed); a row
        that waits for a wave (batch engine) keeps the reservation it has."""
        if self.max_usd is None:
            return True
        if row.id in self.held:
            self.parked.discard(row.id)
            return True
        worst = self.worst(row) if worst is None else worst
        if self.spent + sum(self.held.values()) + worst > self.max_usd:
            return False
        self.held[row.id] = worst
        return True

    def park(self, row_id: str) -> None:
        """A row that waits for a wave (batch engine): it keeps its reservation until it
        settles, in a later pass."""
        if row_id in self.held:
            self.parked.add(row_id)
            self.settled.set()

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
            if not set(self.held) - self.parked:  # nothing running that could settle now
                if self.parked:  # rows waiting for a wave settle later: try again then
                    return LATER
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
    # rows recorded by this session (batch engine: a later pass does not run them again)
    settled: set[str] = field(default_factory=set)

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
                wanted_now = status == wanted and row.id not in self.settled
                runs.append(row if wanted_now else None)  # else done, or not asked for
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
    run_one: Callable[[Row], Awaitable[RowRecord | None]],
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
        parked = False
        try:
            found = await run_one(row)
            if found is None:  # the row waits for a wave (batch engine)
                budget.park(row.id)
                parked = True
                tally.waiting += 1
                return
            record = found
            # as written: a record that could not be stored is its row's failure
            (record,) = await asyncio.to_thread(plan.ledger.write, [record])
            tally.add(record)
            budget.settle(row.id, record["cost_usd"])
            if on_record is not None:
                on_record(record)
        finally:
            plan.in_flight.discard(row.id)
            if not parked:
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
                if stop is LATER:  # its turn comes in a later pass
                    slots.release()
                    continue
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
