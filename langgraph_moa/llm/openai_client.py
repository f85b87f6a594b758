"""The HTTP side of OpenAI-compatible providers: the openai client's own retries, tuned, and a
timeout that bounds a whole request.

The openai client already retries what is worth retrying (429, 408, 409, 5xx, timeouts and
connection errors; never other 4xx), with exponential backoff and jitter, and honours a server's
Retry-After. This module lets a topology set the backoff (``retry: {attempts, initial_s,
max_s}``) and counts the HTTP attempts each call made, so records can say how hard we tried.

httpx's timeouts (which the openai client uses) bound each network operation, not a request: a
server that drips one byte every 100 ms never trips a 2 s read timeout, and a request can run for
minutes. :class:`WholeRequestTimeout` is a thin transport around httpx's own that puts one
deadline on each HTTP attempt, from sending the request to the last byte of the body (a
streamed answer included), and raises httpx's own ``ReadTimeout`` when it passes, so the client
retries or reports it like any other timeout. httpx has no such setting, hence this wrapper.

Rate limits shared by many runs (a batch of rows) plug in as a :class:`RequestGate` set with
:func:`gate_requests`: every HTTP attempt of a model's client waits at the gate before it is
sent, and the gate sees each response (a 429 can pause the model for every run, not only the
one that got it). The gate itself lives with the batch runner.

A whole (unstreamed) reply is read only up to the size set with :func:`limit_reply_bytes` for
the request: past it, reading stops, the connection is dropped and :class:`ReplyPastLimit`
(an ``openai.OpenAIError``, which the client neither retries nor wraps) says so; an upstream
that ignores ``max_tokens`` cannot make the process read, or keep, an unbounded body. Streamed
replies are cut by the caller as their tokens arrive (see :mod:`langgraph_moa.llm.reply_guard`).

Each agent has a client of its own, but they share one TLS context: httpx builds one per
transport by reading the system's CA bundle, tens of milliseconds each, which a topology of
nine agents would otherwise pay inside its first layer.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import math
import random
import ssl
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from functools import cache
from typing import Any, Protocol

import httpx2
import openai

from langgraph_moa.spec.agent import Retry
from langgraph_moa.spec.providers import MAX_RETRY_AFTER_S

log = logging.getLogger(__name__)

_attempts: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar(
    "moa_http_attempts", default=None
)


@cache
def _tls_context() -> ssl.SSLContext:
    """httpx's default TLS context (system CA bundle, ``SSL_CERT_FILE``/``DIR``), built once."""
    return httpx2.create_ssl_context()


@contextmanager
def count_attempts() -> Iterator[list[int]]:
    """Count the HTTP requests sent inside this block (and tasks it starts): ``counter[0]``."""
    counter = [0]
    token = _attempts.set(counter)
    try:
        yield counter
    finally:
        _attempts.reset(token)


_reply_bytes: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "moa_reply_bytes", default=None
)


class ReplyPastLimit(openai.OpenAIError):
    """A whole reply's body passed the size allowed for it; reading stopped there."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"the reply passed {limit} bytes; reading stopped there")
        self.limit = limit


@contextmanager
def limit_reply_bytes(limit: int) -> Iterator[None]:
    """Read at most ``limit`` bytes of each whole reply body inside this block."""
    token = _reply_bytes.set(limit)
    try:
        yield
    finally:
        _reply_bytes.reset(token)


class RequestGate(Protocol):
    """Where requests wait for a rate limit (``model`` is the agent's ``provider:model``)."""

    async def before(self, model: str, request: httpx2.Request) -> None: ...

    def after(self, model: str, response: httpx2.Response) -> None: ...


_gate: contextvars.ContextVar[RequestGate | None] = contextvars.ContextVar(
    "moa_request_gate", default=None
)


@contextmanager
def gate_requests(gate: RequestGate) -> Iterator[None]:
    """Send every request made inside this block (and tasks it starts) through ``gate``."""
    token = _gate.set(gate)
    try:
        yield
    finally:
        _gate.reset(token)


def _hooks(model: str) -> dict[str, list[Any]]:
    async def on_request(request: httpx2.Request) -> None:
        counter = _attempts.get()
        if counter is not None:
            counter[0] += 1
        log.debug("HTTP %s %s", request.method, request.url)
        gate = _gate.get()
        if gate is not None:
            await gate.before(model, request)

    async def on_response(response: httpx2.Response) -> None:
        gate = _gate.get()
        if gate is not None:
            gate.after(model, response)

    return {"request": [on_request], "response": [on_response]}


class _BodyWithDeadline(httpx2.AsyncByteStream):
    """A response body whose every chunk must arrive before the request's deadline."""

    def __init__(
        self, body: httpx2.AsyncByteStream, deadline: float, request: Any, limit: int | None
    ) -> None:
        self.body, self.deadline, self.request, self.limit = body, deadline, request, limit

    async def __aiter__(self) -> AsyncIterator[bytes]:
        chunks = aiter(self.body)
        received = 0
        while True:
            try:
                async with asyncio.timeout_at(self.deadline):
                    chunk = await anext(chunks)
            except StopAsyncIteration:
                return
            except TimeoutError:
                raise httpx2.ReadTimeout(
                    "the response did not complete within the request's timeout",
                    request=self.request,
                ) from None
            received += len(chunk)
            if self.limit is not None and received > self.limit:
                await self.body.aclose()
                raise ReplyPastLimit(self.limit)
            yield chunk

    async def aclose(self) -> None:
        await self.body.aclose()


class WholeRequestTimeout(httpx2.AsyncBaseTransport):
    """An httpx transport whose every request, body included, ends within ``timeout_s``."""

    def __init__(self, timeout_s: float, inner: httpx2.AsyncBaseTransport | None = None) -> None:
        self.timeout_s = timeout_s
        self.inner = inner or httpx2.AsyncHTTPTransport(verify=_tls_context())

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        deadline = asyncio.get_running_loop().time() + self.timeout_s
        try:
            async with asyncio.timeout_at(deadline):
                response = await self.inner.handle_async_request(request)
        except TimeoutError:
            raise httpx2.ReadTimeout(
                f"no response within {self.timeout_s:g}s", request=request
            ) from None
        assert isinstance(response.stream, httpx2.AsyncByteStream)
        streamed = response.headers.get("content-type", "").startswith("text/event-stream")
        limit = None if streamed else _reply_bytes.get()
        return httpx2.Response(
            status_code=response.status_code,
            headers=response.headers,
            stream=_BodyWithDeadline(response.stream, deadline, request, limit),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        await self.inner.aclose()


class RetryingAsyncOpenAI(openai.AsyncOpenAI):
    """``openai.AsyncOpenAI`` whose retry delays come from a :class:`Retry` setting and whose
    ``timeout_s`` bounds each whole HTTP attempt (see :class:`WholeRequestTimeout`)."""

    def __init__(self, *, retry: Retry, timeout_s: float, model: str = "", **kwargs: Any) -> None:
        http_client = openai.DefaultAsyncHttpxClient(
            timeout=timeout_s,
            event_hooks=_hooks(model),
            transport=WholeRequestTimeout(timeout_s),
        )
        super().__init__(
            max_retries=retry.attempts - 1, timeout=timeout_s, http_client=http_client, **kwargs
        )
        self._backoff = retry

    def _calculate_retry_timeout(
        self, remaining_retries: int, options: Any, response_headers: Any = None
    ) -> float:
        log.info("retrying a request (%d retries left)", remaining_retries)
        retry_after = self._parse_retry_after_header(response_headers)
        if retry_after is not None and math.isfinite(retry_after) and retry_after > 0:
            return float(min(retry_after, MAX_RETRY_AFTER_S))
        done = min(options.get_max_retries(self.max_retries) - remaining_retries, 60)
        delay = min(self._backoff.initial_s * 2.0**done, self._backoff.max_s)
        return delay * (1 - 0.25 * random.random())
