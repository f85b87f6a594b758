"""Ctrl-C during a run: the run and every call it started are cancelled, and the command says
what was kept.

The handler is the event loop's own (``loop.add_signal_handler``), not the one ``asyncio.run``
installs: that one is installed only when SIGINT has Python's default handler, so a process
started with SIGINT ignored (a job a non-interactive shell put in the background, which then
gets the signal from ``kill -INT``) would run on as if nothing had been pressed.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class Interrupted(Exception):
    """The person at the terminal pressed Ctrl-C during a run."""


@asynccontextmanager
async def ctrl_c_cancels() -> AsyncIterator[None]:
    """Ctrl-C cancels the current task (the run and every call it started) and raises
    Interrupted, so the caller can say what was kept instead of dying mid-write."""
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    pressed = False

    def on_sigint() -> None:
        nonlocal pressed
        pressed = True
        task.cancel()

    loop.add_signal_handler(signal.SIGINT, on_sigint)
    try:
        yield
    except asyncio.CancelledError:
        if not pressed:
            raise
        task.uncancel()
        raise Interrupted from None
    finally:
        loop.remove_signal_handler(signal.SIGINT)
