"""The outer guard of ``moa serve``: in front of every route, it checks the bearer key, enforces
the body limit on both the declared Content-Length and the bytes really received, gives the
body ``read_timeout_s`` to arrive (408 after), lets a client that disconnects go without a
word, turns any other escaped exception into a 500 without a traceback, and writes each
request's access line (access_log.py).

Why a hand-written pure ASGI middleware: what it enforces is outside what FastAPI and Starlette
offer: the bytes really received (not only the declared Content-Length), a deadline on
receiving the body, and answering errors in OpenAI's format however the request ends."""

from __future__ import annotations

import asyncio
import time

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from langgraph_moa.serving.access import KeyRing
from langgraph_moa.serving.access_log import log_request, new_record
from langgraph_moa.serving.errors import APIError, internal_error, log_line, too_large, too_slow

# Routes answered without a key: a load balancer's health probe carries none.
_OPEN_ROUTES = frozenset({"/health"})


class _TooLarge(Exception):
    pass


class _TooSlow(Exception):
    pass


def _unauthorized(message: str) -> APIError:
    return APIError(401, message, code="invalid_api_key", headers={"www-authenticate": "Bearer"})


def _key_refusal(keys: KeyRing, headers: dict[str, str]) -> APIError | None:
    """A 401 unless the request carries one of ``keys`` as its bearer token (none needed when
    there are no keys)."""
    if not keys:
        return None
    scheme, _, token = headers.get("authorization", "").strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return _unauthorized("missing API key: send it as 'Authorization: Bearer <key>'")
    if not keys.accepts(token.strip()):
        return _unauthorized("invalid API key")
    return None


def _length_refusal(max_body_bytes: int, headers: dict[str, str]) -> APIError | None:
    """A 400 for a Content-Length that is not a number, a 413 for one over the limit."""
    declared = headers.get("content-length")
    if declared is None:
        return None
    if not declared.strip().isdigit():
        return APIError(400, "invalid Content-Length header", code="invalid_request")
    if int(declared) > max_body_bytes:
        return too_large(max_body_bytes)
    return None


class _BodyReader:
    """The app's ``receive``: counts the body's bytes against the limit (raising _TooLarge past
    it) and waits for them until the deadline (raising _TooSlow after); once the body is all
    in, only a disconnect can come, so there is no deadline any more."""

    def __init__(self, receive: Receive, *, limit: int, timeout_s: float) -> None:
        self.receive = receive
        self.limit = limit
        self.received = 0
        self.done = False
        self.deadline = asyncio.get_running_loop().time() + timeout_s

    async def __call__(self) -> Message:
        if self.done:
            return await self.receive()
        try:
            async with asyncio.timeout_at(self.deadline):
                message = await self.receive()
        except TimeoutError:
            raise _TooSlow from None
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if self.received > self.limit:
                raise _TooLarge
            self.done = not message.get("more_body", False)
        return message


class Guard:
    """Pure ASGI middleware in front of every route (see the module's docstring)."""

    def __init__(
        self, app: ASGIApp, *, keys: KeyRing, max_body_bytes: int, read_timeout_s: float
    ) -> None:
        self.app = app
        self.keys = keys
        self.max_body_bytes = max_body_bytes
        self.read_timeout_s = read_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        begun = time.perf_counter()
        record = new_record(scope)
        status = 0

        async def logged_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self._guarded(scope, receive, logged_send)
        finally:
            shown = status or 499  # no answer was sent: the client left first
            log_request(scope["method"], scope["path"], shown, time.perf_counter() - begun, record)

    def _refusal(self, scope: Scope) -> APIError | None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        open_route = scope["path"] in _OPEN_ROUTES
        if not open_route and (refusal := _key_refusal(self.keys, headers)) is not None:
            return refusal
        return _length_refusal(self.max_body_bytes, headers)

    async def _guarded(self, scope: Scope, receive: Receive, send: Send) -> None:
        refusal = self._refusal(scope)
        if refusal is not None:
            await refusal.response()(scope, receive, send)
            return
        started = False

        async def watching_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        body = _BodyReader(receive, limit=self.max_body_bytes, timeout_s=self.read_timeout_s)
        error: APIError | None = None
        try:
            await self.app(scope, body, watching_send)
        except _TooLarge:
            error = too_large(self.max_body_bytes)
        except _TooSlow:
            error = too_slow(self.read_timeout_s)
        except ClientDisconnect:
            pass  # the client left while sending its request: nobody to answer, nothing wrong
        except Exception as e:
            log_line(f"internal error: {type(e).__name__}: {e}")
            error = internal_error()
        if error is not None and not started:
            await error.response()(scope, receive, send)
