"""What ``engine="ray"`` runs on the Ray cluster: the datasource through which Ray Data reads
the input, the actor class that runs rows through the graph with asyncio, and the keeper of the
run's budget. The driver's side (start or join Ray, build the dataset, write the ledger) is
:mod:`langgraph_moa.batch.ray_engine`, which imports this module only for a Ray run: it needs
the ``[ray]`` extra.

Blocks: Ray Data moves the input as blocks of one Arrow row each, a pickled :class:`Chunk`: up
to ``chunk_rows`` rows to run, plus the invalid rows and the count of skipped rows the reader
met on the way. A chunk is one map task on an actor, and comes back as one block with its
records, which the driver writes to the ledger in one transaction. Chunks are pickled rather
than spread over Arrow columns because rows are nested and free-form (tools, metadata, Parquet
values) and must come back exactly as read.

The reader (:class:`RowsDatasource`, one read task, pinned to the driver's node, where the input
and the ledger are) reads rows with :func:`langgraph_moa.batch.rows.read_rows`, the same parser
as the in-process engine, so an invalid row gets the same file, line and reason; it checks each
row against the ledger as :class:`langgraph_moa.batch.feeding.Plan` does (skip what is done, or
all but the failed rows with ``retry_failed``; a repeated id is invalid). The ids read in this
session are kept in a private temporary SQLite database rather than a set, so memory stays flat
in the number of rows.

The budget (``max_usd``) is one small asyncio actor, :class:`BudgetKeeper`, asked by every
actor before a row starts: the same rule as the in-process engine (spent + the worst cases of
the rows running anywhere + this one's must fit, the worst case from
:func:`~langgraph_moa.batch.one_row.row_worst_case_usd`), the same wait (a row that does not fit
waits for rows in flight to settle and tries again) and the same stop (only when nothing is in
flight and the row still does not fit; then none starts any more, and the keeper holds the
reason, which the driver reports).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import pickle
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import ray
from ray.data import Datasource, ReadTask
from ray.data.block import BlockMetadata

from langgraph_moa.batch.feeding import budget_stop_reason
from langgraph_moa.batch.ledger import RowRecord
from langgraph_moa.batch.limits import RateGate, RateLimits
from langgraph_moa.batch.one_row import TurnContext, Turns, relabel_row, row_worst_case_usd
from langgraph_moa.batch.row_check import InvalidRow, Row
from langgraph_moa.batch.rows import read_rows
from langgraph_moa.graphs.builder import build_graph
from langgraph_moa.llm.call_cache import open_cache
from langgraph_moa.llm.openai_client import gate_requests
from langgraph_moa.spec.models import PriceTable
from langgraph_moa.spec.topology import parse_topology

_COLUMN = "chunk"
_READ_AT_ONCE = 256  # rows read and checked against the ledger at once
_BOOKKEEPING = 1024  # skipped and invalid rows carried by one chunk without rows to run


@dataclass
class Chunk:
    """One block's content: rows to run (on the way in), records (on the way out), and what
    the reader met on the way."""

    rows: list[Row] = field(default_factory=list)
    invalid: list[InvalidRow] = field(default_factory=list)
    skipped: int = 0
    records: list[RowRecord] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)  # rows the budget did not admit


def pack(chunk: Chunk) -> pa.Table:
    return pa.table({_COLUMN: pa.array([pickle.dumps(chunk)], pa.large_binary())})


def unpack(block: pa.Table) -> Chunk:
    found: Chunk = pickle.loads(block.column(_COLUMN)[0].as_py())
    return found


@dataclass(frozen=True)
class Source:
    """What the reader reads: a file or folder (``path``), or rows fed from Python that the
    driver spooled to a file (``spool``: pickled :class:`Row` / :class:`InvalidRow`, already
    limited); and how it sorts them."""

    ledger: str
    retry_failed: bool
    chunk_rows: int
    path: str | None = None
    spool: str | None = None
    limit: int | None = None
    keeper: Any = None  # the BudgetKeeper's handle: reading stops once it refuses a row


def _spooled(path: str) -> Iterator[Row | InvalidRow]:
    with open(path, "rb") as f:
        while True:
            try:
                yield pickle.load(f)
            except EOFError:
                return


def _items(source: Source) -> Iterator[Row | InvalidRow]:
    if source.path is not None:
        items = read_rows(Path(source.path))
        return itertools.islice(items, source.limit) if source.limit else items
    assert source.spool is not None
    return _spooled(source.spool)


class _Sorter:
    """Sorts rows as :meth:`langgraph_moa.batch.feeding.Plan.runnable` does: run, skip, or
    invalid (a repeated id)."""

    def __init__(self, source: Source) -> None:
        self.wanted = "failed" if source.retry_failed else None
        self.ledger = sqlite3.connect(source.ledger, timeout=30)
        self.ids = sqlite3.connect("")  # a private temporary database: spills to disk
        self.ids.execute("CREATE TABLE ids (id TEXT PRIMARY KEY)")

    def close(self) -> None:
        self.ledger.close()
        self.ids.close()

    def sort(self, items: list[Row | InvalidRow]) -> tuple[list[Row], list[InvalidRow], int]:
        valid = [r for r in items if isinstance(r, Row)]
        invalid = [r for r in items if isinstance(r, InvalidRow)]
        ids = [r.id for r in valid]
        marks = ",".join("?" * len(ids))
        recorded: dict[str, tuple[str, str]] = {
            row_id: (status, where)
            for row_id, status, where in self.ledger.execute(
                f"SELECT id, status, row_where FROM rows WHERE id IN ({marks})", ids
            )
        }
        earlier = {i for (i,) in self.ids.execute(f"SELECT id FROM ids WHERE id IN ({marks})", ids)}
        here: set[str] = set()
        runnable: list[Row] = []
        skipped = 0
        for row in valid:
            status, where = recorded.get(row.id, (None, row.where))
            if row.id in here or row.id in earlier or where != row.where:
                first = where if where != row.where else "earlier in this run"
                invalid.append(InvalidRow(row.where, f"duplicate id {row.id!r} ({first})", row.id))
                continue
            here.add(row.id)
            if status != self.wanted:  # done, or not what this session runs
                skipped += 1
            else:
                runnable.append(row)
        self.ids.executemany("INSERT INTO ids VALUES (?)", [(i,) for i in here])
        return runnable, invalid, skipped


def _read_chunks(source: Source) -> Iterator[pa.Table]:
    """The read task: the input as blocks of one chunk each."""
    sorter = _Sorter(source)
    items = _items(source)
    pending = Chunk()
    try:
        while batch := list(itertools.islice(items, _READ_AT_ONCE)):
            runnable, invalid, skipped = sorter.sort(batch)
            pending.invalid += invalid
            pending.skipped += skipped
            for row in runnable:
                pending.rows.append(row)
                if len(pending.rows) == source.chunk_rows:
                    yield pack(pending)
                    pending = Chunk()
                    if source.keeper is not None and ray.get(source.keeper.closed.remote()):
                        return  # the budget is spent: no row starts any more
            if not pending.rows and len(pending.invalid) + pending.skipped >= _BOOKKEEPING:
                yield pack(pending)
                pending = Chunk()
        if pending.rows or pending.invalid or pending.skipped:
            yield pack(pending)
    finally:
        sorter.close()


class RowsDatasource(Datasource):
    """The input as Ray Data reads it: one streaming read task (rows must be sorted in order,
    against the ledger and the ids already read, as the in-process engine does)."""

    def __init__(self, source: Source) -> None:
        self.source = source

    def estimate_inmemory_data_size(self) -> int | None:
        return None

    def get_read_tasks(
        self, parallelism: int, per_task_row_limit: int | None = None, data_context: Any = None
    ) -> list[ReadTask]:
        source = self.source
        metadata = BlockMetadata(num_rows=None, size_bytes=None, input_files=None, exec_stats=None)
        return [ReadTask(lambda: _read_chunks(source), metadata)]

    def get_name(self) -> str:
        return "RelabelRows"

    @property
    def supports_distributed_reads(self) -> bool:
        return False  # the input and the ledger are on the driver's node


class BudgetKeeper:
    """The run's budget, for every actor (an asyncio actor: its methods share one loop): a row
    starts only if what is spent plus the worst cases of the rows running and of this one stays
    within ``max_usd``; a row that does not fit waits for rows in flight to settle; once one does
    not fit with nothing in flight, none starts any more (as in the in-process engine)."""

    def __init__(self, max_usd: float, spent: float) -> None:
        self.max_usd = max_usd
        self.spent = spent
        self.held: dict[str, float] = {}
        self.stopped = False
        self.reason: str | None = None
        self.settled = asyncio.Event()

    async def admit(self, row_id: str, where: str, worst: float) -> bool:
        while not self.stopped:
            if self.spent + sum(self.held.values()) + worst <= self.max_usd:
                self.held[row_id] = worst
                return True
            if not self.held:
                self.stopped = True
                self.reason = budget_stop_reason(self.spent, self.max_usd, where, worst)
                self.settled.set()  # the rows waiting learn that the run stopped
                break
            self.settled.clear()
            await self.settled.wait()
        return False

    async def settle(self, row_id: str, cost: float | None) -> None:
        self.held.pop(row_id, None)
        self.spent += cost or 0.0
        self.settled.set()

    async def closed(self) -> bool:
        return self.stopped

    async def stop_reason(self) -> str | None:
        return self.reason


class RowWorker:
    """A Ray Data actor: the graph, the call cache and the rate gate, made once per actor; each
    call runs one chunk's rows at once, within ``slots`` rows in flight per actor."""

    def __init__(
        self,
        topology: dict[str, Any],
        cache_path: str,
        limits: dict[str, Any],
        slots: int,
        keeper: Any = None,
        turns: Turns = "last",
        turn_context: TurnContext = "relabeled",
    ) -> None:
        self.topology = parse_topology(topology, source="the run's topology")
        self.graph = build_graph(self.topology, cache=open_cache(cache_path))
        rates = RateLimits(**limits)
        self.gate = RateGate(rates) if rates else None
        self.slots = asyncio.Semaphore(slots)
        self.keeper = keeper
        self.prices = PriceTable(self.topology.prices)
        self.turns: Turns = turns
        self.turn_context: TurnContext = turn_context

    async def __call__(self, block: pa.Table) -> pa.Table:
        chunk = unpack(block)
        records = await asyncio.gather(*(self._run(row) for row in chunk.rows))
        for row, record in zip(chunk.rows, records, strict=True):
            if record is None:
                chunk.refused.append(row.id)
            else:
                chunk.records.append(record)
        chunk.rows = []  # the records carry what the driver needs
        return pack(chunk)

    async def _run(self, row: Row) -> RowRecord | None:
        async with self.slots:
            if self.keeper is not None:
                worst = row_worst_case_usd(
                    self.topology,
                    row,
                    self.prices,
                    turns=self.turns,
                    turn_context=self.turn_context,
                )
                if not await self.keeper.admit.remote(row.id, row.where, worst):
                    return None
            record = None
            try:
                with gate_requests(self.gate) if self.gate else contextlib.nullcontext():
                    record = await relabel_row(
                        self.graph,
                        self.topology,
                        row,
                        turns=self.turns,
                        turn_context=self.turn_context,
                    )
            finally:
                if self.keeper is not None:  # a row cut short gives its reservation back
                    cost = record["cost_usd"] if record is not None else 0.0
                    await self.keeper.settle.remote(row.id, cost)
            return record


def spool(items: Iterable[Row | InvalidRow], path: Path) -> None:
    """Rows fed from Python, to a file the reader can stream (memory stays flat)."""
    with path.open("wb") as f:
        for item in items:
            pickle.dump(item, f)
