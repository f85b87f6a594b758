"""Where ``moa serve`` runs graphs: an event loop of their own, in a thread, apart from the loop
that serves HTTP.

Why a second loop: a run does CPU work inside its coroutines (LangChain converts the
conversation, and the openai client serializes it again for every upstream call, about 0.4 ms
per message per call). On the serving loop that work would stall every other request,
``/v1/models`` and 429 answers included, for as long as it lasts. On a loop of its own, the
serving loop only competes with it for the GIL, which Python hands over every few milliseconds.

Why hand-written: uvicorn and Starlette run blocking functions in threads, not coroutines on
another loop. anyio's blocking portal does, but it cancels through cancel scopes, which cancel
again at every await; that cuts short LangGraph's own cleanup of a cancelled run (it awaits its
node tasks), leaving their upstream requests running. Here a run is one plain asyncio task,
cancelled once, and its owner learns when it has really ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Generic, TypeVar

_T = TypeVar("_T")
_END = object()
SHUTDOWN_GRACE_S = 5.0


class RunCancelled(Exception):
    """The run was cancelled before it finished (its client left, or the server is stopping)."""


class Run(Generic[_T]):
    """One graph run: a task on the runs loop, seen from the serving loop.

    ``ended`` (a future of the serving loop) is done once the task has finished, whatever
    finished it; ``on_end`` is called on the serving loop just before, and never earlier (it
    frees the run's concurrency slot). Items the run ``emit``s reach ``items()`` in order."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        make: Callable[[Run[_T]], Awaitable[_T]],
        on_end: Callable[[], None],
    ) -> None:
        self._home = asyncio.get_running_loop()
        self._loop = loop
        self._on_end = on_end
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._task: asyncio.Task[_T] | None = None
        self._cancelled = False
        self._result: Any = None
        self._error: BaseException | None = None
        self.ended: asyncio.Future[None] = self._home.create_future()
        loop.call_soon_threadsafe(self._begin, make)

    # -- on the runs loop ----------------------------------------------------------------------
    def _begin(self, make: Callable[[Run[_T]], Awaitable[_T]]) -> None:
        if self._cancelled:  # cancelled before it started
            self._post(self._settle, None, RunCancelled())
            return

        async def main() -> _T:
            return await make(self)

        self._task = self._loop.create_task(main())
        self._task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[_T]) -> None:
        if task.cancelled():
            self._post(self._settle, None, RunCancelled())
        elif (error := task.exception()) is not None:
            self._post(self._settle, None, error)
        else:
            self._post(self._settle, task.result(), None)

    def _cancel_task(self) -> None:
        self._cancelled = True
        if self._task is not None:
            self._task.cancel()

    def _post(self, callback: Callable[..., None], *args: Any) -> None:
        # RuntimeError: the serving loop is closed, nobody is waiting any more
        with contextlib.suppress(RuntimeError):
            self._home.call_soon_threadsafe(callback, *args)

    def emit(self, item: Any) -> None:
        """Hand ``item`` to the serving loop (called by the run, on the runs loop)."""
        self._post(self._queue.put_nowait, item)

    # -- on the serving loop -------------------------------------------------------------------
    def _settle(self, result: Any, error: BaseException | None) -> None:
        self._result, self._error = result, error
        try:
            self._on_end()
        finally:
            self._queue.put_nowait(_END)
            if not self.ended.done():
                self.ended.set_result(None)

    def cancel(self) -> None:
        """Ask the run to stop; ``ended`` tells when it has."""
        if self.ended.done():
            return
        try:
            self._loop.call_soon_threadsafe(self._cancel_task)
        except RuntimeError:  # the runs loop is closed: the run went with it
            self._settle(None, RunCancelled())

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


def _serve_forever(loop: asyncio.AbstractEventLoop) -> None:
    asyncio.set_event_loop(loop)
    try:
        loop.run_forever()
    finally:
        loop.close()


def _stop(loop: asyncio.AbstractEventLoop) -> None:
    with contextlib.suppress(RuntimeError):  # already closed
        loop.call_soon_threadsafe(loop.stop)


class Runner:
    """The runs loop, started in a daemon thread on first use; stopped by ``close()``, or when
    the runner is garbage-collected (an app dropped without being served to the end)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(
                    target=_serve_forever, args=(loop,), name="moa-runs", daemon=True
                )
                thread.start()
                weakref.finalize(self, _stop, loop)
                self._loop, self._thread = loop, thread
            return self._loop

    def start(
        self, make: Callable[[Run[_T]], Awaitable[_T]], on_end: Callable[[], None]
    ) -> Run[_T]:
        """Start ``make(run)`` on the runs loop; ``on_end`` is called once it has ended."""
        return Run(self.loop, make, on_end)

    def close(self, timeout_s: float = SHUTDOWN_GRACE_S) -> None:
        """Cancel what still runs, wait up to ``timeout_s`` for it to end, stop the loop."""
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None or thread is None:
            return

        async def cancel_all() -> None:
            tasks = asyncio.all_tasks() - {asyncio.current_task()}
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.wait(tasks, timeout=timeout_s)
            await loop.shutdown_asyncgens()

        # A run that will not end stays behind: the daemon thread goes with the process.
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(cancel_all(), loop).result(timeout_s + 1)
        _stop(loop)
        thread.join(timeout_s)
