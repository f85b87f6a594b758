"""The batch engine of a relabel (``engine="batch"``): the rows run in passes, the requests they
defer go to providers' Batch APIs in waves, at the batch price.

Each row runs the same compiled graph as the local engine, in a thread of its own checkpointed
in the run folder (``threads.sqlite``; one thread a turn). A pass runs every row not yet
recorded (:func:`~langgraph_moa.batch.feeding.drive_rows`, the local engine's loop, with its
concurrency and budget): a new row starts, a paused one resumes. Where a node calls a model with
a Batch API, the call is deferred (:mod:`langgraph_moa.llm.deferred`): the node pauses, its
siblings run on and pause too, and the row's requests are queued in the run's wave store
(:mod:`langgraph_moa.batch.wave_store`). Calls to models without a Batch API are made online
inside the pass, as the local engine makes them. A row that finishes is recorded in the ledger
exactly as the local engine records it (its batch calls priced at the batch price and marked
``batch`` in its records).

Between passes the queued requests are submitted as one wave (:class:`~langgraph_moa.batch.
waves.WaveCycle`), polled until every batch ends, and the next pass resumes the rows with their
results. A layer's ``early_stop`` decides in the pass after its wave, so rows whose proposers
agree never put requests in later waves. The session ends when a pass leaves nothing queued;
with ``detach``, after submitting a wave (or when the batches of an earlier one still run): a
later session polls and goes on. Kill the process at any moment: the threads, the store and the
ledger hold everything, and a rerun submits nothing twice.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from langgraph.checkpoint.base import BaseCheckpointSaver

from langgraph_moa.batch.feeding import BatchBudget, Plan, SessionProgress, drive_rows
from langgraph_moa.batch.ledger import Ledger, RowRecord
from langgraph_moa.batch.one_row import TurnContext, Turns, relabel_row, turn_points
from langgraph_moa.batch.row_check import InvalidRow, Row
from langgraph_moa.batch.wave_store import RowDeferral, WaveStore
from langgraph_moa.batch.waves import WaveCycle, WaveProgress
from langgraph_moa.graphs.builder import build_graph
from langgraph_moa.llm.batch_api import BatchClients
from langgraph_moa.spec.topology import Topology

STORE = "batches.sqlite"
THREADS = "threads.sqlite"


class BatchRows:
    """The rows' side of the engine (:class:`~langgraph_moa.batch.one_row.RowWaves`)."""

    def __init__(self, store: WaveStore, takes: set[str]) -> None:
        self.store = store
        self.takes = takes
        self._started: set[str] = set()  # threads known to have a checkpoint

    def deferral(self, thread: str) -> RowDeferral:
        return RowDeferral(self.store, thread, self.takes)

    async def started(self, graph: Any, config: Any) -> bool:
        """Whether the thread was started: known in this session, else its checkpoint is
        read once (a thread started by an earlier session, or cut short by a kill)."""
        thread = config["configurable"]["thread_id"]
        if thread in self._started:
            return True
        self._started.add(thread)  # it runs now, so it has a checkpoint from here on
        return bool((await graph.aget_state(config)).values)

    def forget(self, thread: str) -> None:
        self._started.discard(thread)

    async def queue(self, row_id: str, deferral: RowDeferral) -> None:
        await asyncio.to_thread(self.store.queue, row_id, deferral.requests)


def _threads(row: Row, turns: Turns) -> list[str]:
    if turns == "last":
        return [row.id]
    return [f"{row.id}#{index}" for index in turn_points(row)]


async def run_in_waves(
    topology: Topology,
    *,
    folder: Path,
    ledger: Ledger,
    rows: Callable[[], Iterator[Row | InvalidRow]],
    tally: SessionProgress,
    budget: BatchBudget,
    cache: Any,
    concurrency: int,
    retry_failed: bool,
    turns: Turns,
    turn_context: TurnContext,
    detach: bool,
    poll_s: float,
    finish_online_after: float | None,
    retry_online: bool,
    on_record: Callable[[RowRecord], None] | None,
    on_progress: Callable[[SessionProgress], None] | None,
) -> WaveProgress:
    """Run the rows of ``rows()`` (called once a pass) in passes and waves until none waits
    (see the module docstring); returns what the batch side did."""
    # here, not with the module: only a batch run needs it (an online relabel imports this)
    from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

    store = WaveStore(folder / STORE)
    try:
        async with (
            AsyncSqliteSaver.from_conn_string(str(folder / THREADS)) as saver,
            BatchClients() as clients,
        ):
            takes = {a.model for a in topology.agents() if clients.get(a.model) is not None}
            graph = build_graph(topology, cache=cache, checkpointer=saver)
            glue = BatchRows(store, takes)

            def told(progress: WaveProgress) -> None:
                tally.batch = progress.as_dict()
                if on_progress is not None:
                    on_progress(tally)

            cycle = WaveCycle(
                store,
                clients,
                folder,
                poll_s=poll_s,
                finish_online_after=finish_online_after,
                retry_online=retry_online,
                on_progress=told,
            )
            tally.batch = cycle.progress.as_dict()
            plan = Plan(ledger, retry_failed, tally)
            first = True
            while True:
                if not await cycle.collect(wait=not detach):
                    break  # detached: the batches of the last wave still run
                await _one_pass(
                    graph, topology, saver, glue, plan, rows(), tally, budget, first,
                    concurrency=concurrency, retry_failed=retry_failed, turns=turns,
                    turn_context=turn_context, on_record=on_record, on_progress=on_progress,
                )  # fmt: skip
                first = False
                if tally.stopped is not None:
                    break
                if await cycle.submit_queued() == 0 and not store.waiting():
                    break  # nothing deferred: every row ran to its end
                if detach:
                    break
            tally.batch = cycle.progress.as_dict() | {"store": store.figures()}
            return cycle.progress
    finally:
        store.close()


async def _one_pass(
    graph: Any,
    topology: Topology,
    saver: BaseCheckpointSaver[Any],
    glue: BatchRows,
    plan: Plan,
    rows: Iterator[Row | InvalidRow],
    tally: SessionProgress,
    budget: BatchBudget,
    first: bool,
    *,
    concurrency: int,
    retry_failed: bool,
    turns: Turns,
    turn_context: TurnContext,
    on_record: Callable[[RowRecord], None] | None,
    on_progress: Callable[[SessionProgress], None] | None,
) -> None:
    """One pass over the rows not yet recorded: each starts, resumes or finishes."""
    kept = (tally.seen, tally.skipped, tally.invalid)
    tally.waiting = 0

    async def run_one(row: Row) -> RowRecord | None:
        threads = _threads(row, turns)
        if first and retry_failed:  # a failed row is run again from its start
            for thread in threads:
                glue.forget(thread)
                await saver.adelete_thread(thread)
        record = await relabel_row(
            graph, topology, row, turns=turns, turn_context=turn_context, waves=glue
        )
        if record is not None:
            plan.settled.add(row.id)
            for thread in threads:  # its record holds everything now
                glue.forget(thread)
                with contextlib.suppress(Exception):
                    await saver.adelete_thread(thread)
        return record

    await drive_rows(
        run_one,
        plan,
        rows,
        concurrency=concurrency,
        budget=budget,
        on_record=on_record,
        on_progress=on_progress,
    )
    if not first:  # a later pass reads the same rows again: count them once
        tally.seen, tally.skipped, tally.invalid = kept
