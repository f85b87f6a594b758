"""Coroutines run from another thread on an event loop of their own, in a daemon thread: the one
runner behind the sync API and ``moa serve``'s runs.

:class:`LoopThread` is that loop. :meth:`LoopThread.submit` starts a coroutine on it as one plain
asyncio task in the caller's context (``contextvars``), and gives back a thread-safe future of its
outcome and a function that cancels it. Two users:

- The sync API (``graph.invoke``/``graph.stream``, the chat models' ``invoke``/``stream``):
  :func:`run_sync` and :func:`iterate_sync` run on one loop shared by the process. Running async
  code with ``asyncio.run`` per call made a new event loop each time, and with it a new HTTP
  client per agent (a connection pool belongs to the loop that opened it) whose sockets outlived
  the loop: a socket per agent and megabytes per call. On one loop, clients are made once and
  reused, and nothing grows with the number of calls. The caller's context reaches the
  coroutine, so LangGraph's per-run config and stream writer, and LangSmith's current run, do
  too (a sync call stays in its caller's trace). If the caller is interrupted
  (``KeyboardInterrupt``) or stops iterating, the task is cancelled, with every request it
  started. The shared loop is never blocked: a sync call made from code already running on it is
  refused rather than deadlocking.
- ``moa serve`` (:mod:`langgraph_moa.serving.runs`) runs its graphs on a loop of its own, apart
  from the loop serving HTTP, and closes it with the app (:meth:`LoopThread.close`).

Why hand-written: asyncio has no ready-made "run this coroutine from any thread in a given
context and cancel it with its caller" (``run_coroutine_threadsafe`` takes no context). anyio's
blocking portal does run coroutines on another loop, but it cancels through cancel scopes, which
cancel again at every await; that cuts short LangGraph's own cleanup of a cancelled run (it awaits
its node tasks), leaving their upstream requests running. Here a run is one task, cancelled once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import queue
import threading
import weakref
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from typing import Any, TypeVar

T = TypeVar("T")

_SHUTDOWN_GRACE_S = 5.0


def _run_forever(loop: asyncio.AbstractEventLoop) -> None:
    asyncio.set_event_loop(loop)
    try:
        loop.run_forever()
    finally:
        loop.close()


def _stop(loop: asyncio.AbstractEventLoop) -> None:
    with contextlib.suppress(RuntimeError):  # already closed
        loop.call_soon_threadsafe(loop.stop)


class LoopThread:
    """An event loop in a daemon thread, started on first use; stopped by :meth:`close`, or when
    this object is garbage-collected (or at exit, unless ``stop_at_exit`` is False: then the
    thread simply ends with the process)."""

    def __init__(self, name: str, *, stop_at_exit: bool = True) -> None:
        self._name = name
        self._stop_at_exit = stop_at_exit
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(
                    target=_run_forever, args=(loop,), name=self._name, daemon=True
                )
                thread.start()
                weakref.finalize(self, _stop, loop).atexit = self._stop_at_exit
                self._loop, self._thread = loop, thread
            return self._loop

    def submit(
        self, make: Callable[[], Coroutine[Any, Any, T]]
    ) -> tuple[concurrent.futures.Future[T], Callable[[], None]]:
        """Start ``make()`` on the loop, in the caller's context, as one task; returns its
        outcome as a thread-safe future (``concurrent.futures.CancelledError`` if the task was
        cancelled) and a function that cancels the task (at once if the loop is gone)."""
        loop = self.loop
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            raise RuntimeError(f"a blocking call cannot be made from the {self._name} loop itself")
        context = contextvars.copy_context()
        outcome: concurrent.futures.Future[T] = concurrent.futures.Future()
        outcome.set_running_or_notify_cancel()
        tasks: list[asyncio.Task[T]] = []

        def settle(error: BaseException | None, result: Any = None) -> None:
            if outcome.done():
                return
            if error is None:
                outcome.set_result(result)
            else:
                outcome.set_exception(error)

        def relay(task: asyncio.Task[T]) -> None:
            if task.cancelled():
                settle(concurrent.futures.CancelledError())
            elif (error := task.exception()) is not None:
                settle(error)
            else:
                settle(None, task.result())

        def start() -> None:
            try:
                coroutine = make()
            except BaseException as error:
                settle(error)
                return
            task = loop.create_task(coroutine, context=context)
            tasks.append(task)
            task.add_done_callback(relay)

        def cancel() -> None:
            try:
                loop.call_soon_threadsafe(lambda: [t.cancel() for t in tasks])
            except RuntimeError:  # the loop is closed: the task went with it
                settle(concurrent.futures.CancelledError())

        loop.call_soon_threadsafe(start, context=context)
        return outcome, cancel

    def close(self, timeout_s: float = _SHUTDOWN_GRACE_S) -> None:
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

        # A task that will not end stays behind: the daemon thread goes with the process.
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(cancel_all(), loop).result(timeout_s + 1)
        _stop(loop)
        thread.join(timeout_s)


_shared = LoopThread("langgraph-moa-sync", stop_at_exit=False)
"""The sync API's loop, shared by the process and never closed."""


def run_sync(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run ``make()`` on the shared loop and wait for its result."""
    outcome, cancel = _shared.submit(make)
    try:
        return outcome.result()
    except BaseException:
        cancel()  # interrupted (or failed): nothing keeps running on the loop
        raise


def iterate_sync(make: Callable[[], AsyncIterator[T]]) -> Iterator[T]:
    """Drain ``make()`` on the shared loop, handing items to this thread as they come; stopping
    early (or being interrupted) cancels the producer."""
    items: queue.Queue[tuple[bool, Any]] = queue.Queue()

    async def pump() -> None:
        async for item in make():
            items.put((True, item))

    outcome, cancel = _shared.submit(pump)
    outcome.add_done_callback(lambda _: items.put((False, None)))
    finished = False
    try:
        while True:
            more, item = items.get()
            if not more:
                break
            yield item
        finished = True
        outcome.result()  # re-raise what the producer raised
    finally:
        if not finished:
            cancel()
