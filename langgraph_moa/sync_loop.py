"""The event loop behind the sync API: one long-lived loop in a daemon thread per process.

``graph.invoke``/``graph.stream`` and ``ChatMixtureOfAgents.invoke``/``stream`` run async code.
Running it with ``asyncio.run`` per call made a new event loop each time, and with it a new HTTP
client per agent (a connection pool belongs to the loop that opened it) whose sockets outlived the
loop: a socket per agent and megabytes per call. Here every sync call runs on the same loop, so
clients are made once and reused, and nothing grows with the number of calls.

A coroutine runs in the caller's context (``contextvars``), so LangGraph's per-run config and
stream writer, and LangSmith's current run, reach it (a sync call stays in its caller's trace).
If the caller is interrupted (``KeyboardInterrupt``) or stops iterating, the task on the loop is
cancelled, with every request it started. The loop is shared and never
blocked: a sync call made from code already running on it is refused rather than deadlocking.
asyncio has no ready-made "run this coroutine from any thread in a given context and cancel it
with its caller", hence this module.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import queue
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from typing import Any, TypeVar

__all__ = ["iterate_sync", "run_sync"]

T = TypeVar("T")

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None


def _shared_loop() -> asyncio.AbstractEventLoop:
    global _loop
    with _lock:
        if _loop is None:
            loop = asyncio.new_event_loop()
            threading.Thread(
                target=loop.run_forever, name="langgraph-moa-sync", daemon=True
            ).start()
            _loop = loop
        return _loop


def _start(
    make: Callable[[], Coroutine[Any, Any, T]],
) -> tuple[concurrent.futures.Future[T], Callable[[], None]]:
    """Start ``make()`` on the shared loop in the caller's context; returns its outcome as a
    thread-safe future and a function that cancels it."""
    loop = _shared_loop()
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        raise RuntimeError("a sync call cannot be made from the sync API's own event loop")
    context = contextvars.copy_context()
    outcome: concurrent.futures.Future[T] = concurrent.futures.Future()
    tasks: list[asyncio.Task[T]] = []

    def relay(task: asyncio.Task[T]) -> None:
        if task.cancelled():
            outcome.cancel()
        elif (error := task.exception()) is not None:
            outcome.set_exception(error)
        else:
            outcome.set_result(task.result())

    def start() -> None:
        if outcome.cancelled():
            return
        task = loop.create_task(make(), context=context)
        tasks.append(task)
        task.add_done_callback(relay)

    def cancel() -> None:
        loop.call_soon_threadsafe(lambda: [t.cancel() for t in tasks])

    outcome.set_running_or_notify_cancel()
    loop.call_soon_threadsafe(start)
    return outcome, cancel


def run_sync(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run ``make()`` on the shared loop and wait for its result."""
    outcome, cancel = _start(make)
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

    outcome, cancel = _start(pump)
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
