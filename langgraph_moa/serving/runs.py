"""Where ``moa serve`` runs graphs: a loop of their own (a
:class:`~langgraph_moa.sync_loop.LoopThread`), apart from the loop that serves HTTP, and each run
seen from the serving loop.

Why a second loop: a run does CPU work inside its coroutines (LangChain converts the
conversation, and the openai client serializes it again for every upstream call, about 0.4 ms
per message per call). On the serving loop that work would stall every other request,
``/v1/models`` and 429 answers included, for as long as it lasts. On a loop of its own, the
serving loop only competes with it for the GIL, which Python hands over every few milliseconds.

The loop, and how a run is started on it and cancelled once, is the package's one runner
(:mod:`langgraph_moa.sync_loop`; it says why that is hand-written). What is serving's own: the
run's end and the items it emits are handed back to the serving loop, and the run's concurrency
slot is freed there just before its end is announced.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Generic, TypeVar

from langgraph_moa.sync_loop import LoopThread

_T = TypeVar("_T")
_END = object()


class RunCancelled(Exception):
    """The run was cancelled before it finished (its client left, or the server is stopping)."""


class Run(Generic[_T]):
    """One graph run: a task on the runs loop, seen from the serving loop.

    ``ended`` (a future of the serving loop) is done once the task has finished, whatever
    finished it; ``on_end`` is called on the serving loop just before, and never earlier (it
    frees the run's concurrency slot). Items the run ``emit``s reach ``items()`` in order."""

    def __init__(
        self,
        runs: LoopThread,
        make: Callable[[Run[_T]], Awaitable[_T]],
        on_end: Callable[[], None],
    ) -> None:
        self._home = asyncio.get_running_loop()
        self._on_end = on_end
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._result: Any = None
        self._error: BaseException | None = None
        self.ended: asyncio.Future[None] = self._home.create_future()

        async def main() -> _T:
            return await make(self)

        outcome, self._cancel = runs.submit(main)
        outcome.add_done_callback(self._finished)

    def _finished(self, outcome: concurrent.futures.Future[_T]) -> None:
        """On the runs loop (or wherever the outcome was settled): tell the serving loop."""
        try:
            self._post(self._settle, outcome.result(), None)
        except concurrent.futures.CancelledError:
            self._post(self._settle, None, RunCancelled())
        except BaseException as error:
            self._post(self._settle, None, error)

    def _post(self, callback: Callable[..., None], *args: Any) -> None:
        # RuntimeError: the serving loop is closed, nobody is waiting any more
        with contextlib.suppress(RuntimeError):
            self._home.call_soon_threadsafe(callback, *args)

    def emit(self, item: Any) -> None:
        """Hand ``item`` to the serving loop (called by the run, on the runs loop)."""
        self._post(self._queue.put_nowait, item)

    # -- on the serving loop -------------------------------------------------------------------
    def _settle(self, result: Any, error: BaseException | None) -> None:
        if self.ended.done():
            return
        self._result, self._error = result, error
        try:
            self._on_end()
        finally:
            self._queue.put_nowait(_END)
            self.ended.set_result(None)

    def cancel(self) -> None:
        """Ask the run to stop; ``ended`` tells when it has."""
        if not self.ended.done():
            self._cancel()

    def outcome(self) -> _T:
        """What the ended run returned, or raise what it raised (RunCancelled if cancelled)."""
        if not self.ended.done():
            raise RuntimeError("the run has not ended")
        if self._error is not None:
            raise self._error
        return self._result

    async def items(self) -> AsyncIterator[Any]:
        """The emitted items, as they come; then the run's end (raising its error, if any)."""
        while (item := await self._queue.get()) is not _END:
            yield item
        self.outcome()


class Runner(LoopThread):
    """The runs loop of one app, started on first use; stopped by ``close()``, or when the
    runner is garbage-collected (an app dropped without being served to the end)."""

    def __init__(self) -> None:
        super().__init__("moa-runs")

    def start(
        self, make: Callable[[Run[_T]], Awaitable[_T]], on_end: Callable[[], None]
    ) -> Run[_T]:
        """Start ``make(run)`` on the runs loop; ``on_end`` is called once it has ended."""
        return Run(self, make, on_end)
