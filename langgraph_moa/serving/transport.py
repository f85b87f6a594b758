"""The connection side of ``moa serve``: how long a client may take to send a request's headers,
and how many connections the server holds at once.

uvicorn has neither. Its keep-alive timeout stops at the first byte received, so a client
trickling a header one byte at a time holds its connection forever; its ``limit_concurrency``
is checked only when a request's headers are complete (it answers 503 then), so connections
that never complete a header are never refused, and enough of them exhaust the process's file
descriptors (new clients then see resets). Both are therefore hand-written here, in a subclass
of uvicorn's own HTTP protocol class (h11 or httptools, whichever uvicorn picks):

- a deadline from the moment a connection waits for a request (opened, or done with the
  previous one) until the request's headers are in; past it the connection is closed;
- a cap on open connections: when it is reached, the connection that has waited longest without
  sending a request (a slow or idle one) is closed to make room, and the newcomer is refused
  only when every other connection is busy with a request.

The body has its own deadline, enforced where it is read (the ASGI guard, guard.py), so that its
expiry can be answered with a 408.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

DEFAULT_READ_TIMEOUT_S = 15.0
DEFAULT_MAX_CONNECTIONS = 1024
# File descriptors kept for everything but client connections (log files, the thread store,
# the event loops) before the rest is shared between clients and upstream requests.
_RESERVED_FDS = 64


def connection_cap(requested: int) -> int:
    """``requested``, lowered to half the file descriptors this process may open (after a
    reserve): the other half stays for the upstream requests the runs make."""
    try:
        import resource
    except ImportError:  # not on Unix: no such limit to read
        return requested
    try:
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (OSError, ValueError):
        return requested
    if soft == resource.RLIM_INFINITY:
        return requested
    return max(1, min(requested, (soft - _RESERVED_FDS) // 2))


def protocol_class(*, read_timeout_s: float, max_connections: int) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol class, with a header deadline and a connection cap."""
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    base: Any = AutoHTTPProtocol

    class GuardedHTTPProtocol(base):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._deadline: asyncio.TimerHandle | None = None
            self.waiting_since: float | None = None  # waiting for a request since (monotonic)

        # -- uvicorn's protocol interface, extended --------------------------------------------
        def connection_made(self, transport: asyncio.Transport) -> None:
            super().connection_made(transport)
            self._await_request()
            if len(self.connections) > max_connections and (
                _open_count(self.connections) > max_connections
            ):
                _make_room(self.connections, newcomer=self)

        def connection_lost(self, exc: Exception | None) -> None:
            self._stop_waiting()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.waiting_since is not None and self._busy():
                self._stop_waiting()  # the headers are in: a request is being answered

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing() and not self._busy():
                self._await_request()

        # -- the deadline ----------------------------------------------------------------------
        def _busy(self) -> bool:
            """Whether a request's headers have arrived and its answer is not complete."""
            cycle = self.cycle
            pending = getattr(self, "pipeline", None)
            return bool(pending) or (cycle is not None and not cycle.response_complete)

        def _await_request(self) -> None:
            self._stop_waiting()
            self.waiting_since = time.monotonic()
            self._deadline = self.loop.call_later(read_timeout_s, self._expired)

        def _stop_waiting(self) -> None:
            self.waiting_since = None
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _expired(self) -> None:
            self._deadline = None
            if self._busy():  # a request is being answered: nothing is late
                self.waiting_since = None
            elif not self.transport.is_closing():
                self.transport.close()  # no request came in time: nothing to answer

    return GuardedHTTPProtocol


def _open_count(connections: set[Any]) -> int:
    return sum(1 for c in connections if not c.transport.is_closing())


def _make_room(connections: set[Any], *, newcomer: Any) -> None:
    waiting = [
        c
        for c in connections
        if c is not newcomer
        and getattr(c, "waiting_since", None) is not None
        and not c.transport.is_closing()
    ]
    if waiting:
        min(waiting, key=lambda c: c.waiting_since).transport.close()
    else:  # every other connection is busy with a request
        newcomer.transport.close()
