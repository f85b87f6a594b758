"""A small OpenAI-compatible chat-completions server for tests and benchmarks.

It runs on 127.0.0.1 in a background thread, so the real client path (langchain-openai ->
openai -> httpx -> HTTP) is exercised. Per model it can add latency, refuse ``n`` > 1 (as some
providers do), and inject failures (HTTP errors with optional Retry-After, hangs, malformed JSON,
empty completions). Every request is logged with its body, headers and timing. ``keep_alive_s``
sets how long an idle connection is kept open: a short one closes connections the client is
about to reuse (the keep-alive race a real provider's load balancer causes).

Needs the ``dev`` extra (starlette and uvicorn).
"""

from __future__ import annotations

import asyncio
import json
import random
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Self

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from langgraph_moa.testing.fake_batches import BatchBook, BatchShape, openai_batch_routes

Reply = Callable[[dict[str, Any], int, int], str]
"""reply(request_body, request_number_for_this_model, choice_index) -> text."""


ToolCalls = Callable[[dict[str, Any], int], list[dict[str, Any]] | None]
"""tool_calls(request_body, request_number) -> [{"name": ..., "arguments": {...}}] or None."""


def default_reply(body: dict[str, Any], number: int, choice: int) -> str:
    suffix = f".{choice + 1}" if body.get("n", 1) > 1 else ""
    return f"Answer {number}{suffix} from {body['model']}."


def scripted(*texts: str) -> Reply:
    """A reply giving ``texts`` in turn: one per answer, in request order (then sample order
    within a request with ``n``), starting over after the last."""

    def reply(body: dict[str, Any], number: int, choice: int) -> str:
        n = int(body.get("n") or 1)
        return texts[((number - 1) * n + choice) % len(texts)]

    return reply


def by_marker(replies: dict[str, str], default: Reply = default_reply) -> Reply:
    """A reply chosen by what the request says: the reply of the first marker (in ``replies``
    order) found in any of its messages, else ``default``."""

    def reply(body: dict[str, Any], number: int, choice: int) -> str:
        said = "\n".join(str(m.get("content", "")) for m in body.get("messages", []))
        for marker, text in replies.items():
            if marker in said:
                return text
        return default(body, number, choice)

    return reply


@dataclass
class Behavior:
    """How the server answers one model.

    ``faults`` is a queue consumed one per request before normal answers resume; each item is
    an HTTP status (``500``, ``429``...), ``"hang"`` (sleeps ``hang_s`` before answering),
    ``"malformed"`` (invalid JSON body) or ``"empty"`` (a completion with no text).
    ``always`` applies a fault to every request. ``random_faults`` maps faults to the chance
    that any one request gets it (drawn from the server's seeded random generator).
    ``usage`` replaces the usage reported (word counts by default): a dict, or a function of the
    request's body and the reply texts. ``drip_s`` sends the response body one byte at a time,
    this many seconds apart (a server that never trips a read timeout); ``truncate`` ends a
    stream after its text, without a finish reason and without ``[DONE]`` (a connection cut
    cleanly mid-answer).

    A request whose client closes the connection (while the server waits out ``latency_s``, a
    hang, or mid-stream) is logged with status 499 and ``disconnected=True``.
    """

    latency_s: float = 0.0
    reply: Reply = default_reply
    supports_n: bool = True
    faults: list[int | str] = field(default_factory=list)
    always: int | str | None = None
    random_faults: dict[int | str, float] = field(default_factory=dict)
    retry_after: float | None = None
    hang_s: float = 30.0
    tool_calls: ToolCalls | None = None
    finish_reason: str = "stop"  # e.g. "length": the reply was cut at max_tokens
    drip_s: float | None = None
    truncate: bool = False
    # reported instead of the word counts: a fixed usage, or usage(request_body, texts)
    usage: dict[str, Any] | Callable[[dict[str, Any], list[str]], dict[str, Any]] | None = None
    # the text of injected HTTP errors; "{key}" stands for the request's API key, echoed back
    # as OpenAI does on a 401
    error_message: str | None = None


@dataclass
class LoggedRequest:
    model: str
    body: dict[str, Any]
    headers: dict[str, str]
    started: float
    finished: float = 0.0
    status: int = 0
    disconnected: bool = False
    fault: int | str | None = None
    batch: str | None = None  # the id of the batch it came in, if any

    @property
    def messages(self) -> list[dict[str, Any]]:
        return list(self.body.get("messages", []))

    @property
    def system(self) -> str:
        return "\n".join(m["content"] for m in self.messages if m["role"] == "system")

    @property
    def last(self) -> str:
        """The text of the request's last message (where a synthesis request lists the
        answers to work from)."""
        messages = self.messages
        content = messages[-1].get("content") if messages else ""
        if isinstance(content, list):  # content blocks
            return "".join(str(b.get("text", "")) for b in content if isinstance(b, dict))
        return str(content or "")


def _words(text: str) -> int:
    return len(text.split())


class FakeOpenAI:
    """``with FakeOpenAI() as server:`` -> ``server.base_url`` is ``http://127.0.0.1:PORT/v1``.

    It also serves OpenAI's Batch API (files and ``/v1/batches``), set up and watched through
    :attr:`batches` (see :mod:`langgraph_moa.testing.fake_batches`).
    """

    BATCH_SHAPE: BatchShape = "openai"

    def __init__(
        self,
        behaviors: dict[str, Behavior] | None = None,
        *,
        seed: int = 0,
        keep_alive_s: float = 30,
    ) -> None:
        self.keep_alive_s = keep_alive_s
        self.random = random.Random(seed)
        self.behaviors: dict[str, Behavior] = dict(behaviors or {})
        self.default = Behavior()
        self.requests: list[LoggedRequest] = []
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()
        self.batches = BatchBook(self, self.BATCH_SHAPE)
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    # --- control -------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def behave(self, model: str, **changes: Any) -> Behavior:
        behavior = self.behaviors.setdefault(model, Behavior())
        for key, value in changes.items():
            setattr(behavior, key, value)
        return behavior

    def requests_for(self, model: str) -> list[LoggedRequest]:
        return [r for r in self.requests if r.model == model]

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self._counts.clear()
        self.batches.reset()

    def routes(self) -> list[Route]:
        """The HTTP API served (a subclass serves another provider's wire format)."""
        return [
            Route("/v1/chat/completions", self._chat, methods=["POST"]),
            Route("/v1/models", self._models, methods=["GET"]),
            *openai_batch_routes(self.batches),
        ]

    def start(self) -> Self:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        app = Starlette(routes=self.routes())
        config = uvicorn.Config(
            app,
            log_level="warning",
            lifespan="off",
            timeout_keep_alive=self.keep_alive_s,  # type: ignore[arg-type]  # a float works
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{type(self).__name__} server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
            self._server.force_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.batches.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- HTTP ----------------------------------------------------------------------------
    async def _models(self, request: Request) -> Response:
        data = [{"id": m, "object": "model", "owned_by": "fake"} for m in self.behaviors]
        return JSONResponse({"object": "list", "data": data})

    def error_body(self, status: int, message: str) -> dict[str, Any]:
        """An HTTP error's body, in the provider's format."""
        return {"error": {"message": message, "type": "fake_error", "code": status}}

    @staticmethod
    def key_of(log: LoggedRequest) -> str:
        """The API key a request carried (a bearer token)."""
        return log.headers.get("authorization", "").removeprefix("Bearer ")

    def _error(self, log: LoggedRequest, status: int, message: str, **headers: str) -> Response:
        log.status, log.finished = status, time.perf_counter()
        return JSONResponse(self.error_body(status, message), status_code=status, headers=headers)

    async def injected(
        self,
        request: Request,
        log: LoggedRequest,
        behavior: Behavior,
        fault: int | str | None,
        malformed: str,
    ) -> Response | None:
        """The response to an injected fault (a hang, an HTTP error, a ``malformed`` body), or
        None when the request is to be answered."""
        if fault == "hang" and not await self.wait(request, behavior.hang_s, log):
            return Response(status_code=499)
        if isinstance(fault, int):
            headers = {}
            if behavior.retry_after is not None:
                headers["retry-after"] = str(behavior.retry_after)
            message = f"injected failure {fault}"
            if behavior.error_message is not None:  # "{key}": the request's key, echoed back
                message = behavior.error_message.replace("{key}", self.key_of(log))
            return self._error(log, fault, message, **headers)
        if fault == "malformed":
            log.status, log.finished = 200, time.perf_counter()
            return Response(malformed, media_type="application/json")
        return None

    def admit(
        self, body: dict[str, Any], headers: dict[str, str], *, batch: str | None = None
    ) -> tuple[LoggedRequest, Behavior, int, int | str | None]:
        """Log a request; its model's behaviour, its number for that model and its fault."""
        model = str(body.get("model", ""))
        log = LoggedRequest(model, body, headers, time.perf_counter(), batch=batch)
        behavior = self.behaviors.get(model, self.default)
        with self._lock:
            self.requests.append(log)
            self._counts[model] = number = self._counts.get(model, 0) + 1
            fault = behavior.faults.pop(0) if behavior.faults else behavior.always
            if fault is None and behavior.random_faults:
                draw = self.random.random()
                for candidate, chance in behavior.random_faults.items():
                    if draw < chance:
                        fault = candidate
                        break
                    draw -= chance
            log.fault = fault
        return log, behavior, number, fault

    async def _chat(self, request: Request) -> Response:
        body = await request.json()
        log, behavior, number, fault = self.admit(body, dict(request.headers))
        model = log.model

        if behavior.latency_s and not await self.wait(request, behavior.latency_s, log):
            return Response(status_code=499)
        n = int(body.get("n") or 1)
        if n > 1 and not behavior.supports_n:
            return self._error(log, 400, "'n' : number must be at most 1")
        injected = await self.injected(request, log, behavior, fault, '{"id": "x", "choices": [')
        if injected is not None:
            return injected

        if body.get("stream"):
            texts, tool_calls, usage = self.answer(body, behavior, number, fault)
            ident = f"chatcmpl-fake-{model}-{number}"
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            events = self._sse(
                log,
                ident,
                model,
                texts[0],
                usage if include_usage else None,
                tool_calls,
                behavior.finish_reason,
                behavior.truncate,
            )
            return StreamingResponse(
                self.dripped(events, behavior.drip_s, log),
                media_type="text/event-stream",
            )
        reply = json.dumps(self.whole_reply(body, behavior, number, fault))
        if behavior.drip_s:

            async def whole() -> AsyncIterator[str]:
                yield reply
                log.status = 200

            return StreamingResponse(
                self.dripped(whole(), behavior.drip_s, log), media_type="application/json"
            )
        log.status, log.finished = 200, time.perf_counter()
        return Response(reply, media_type="application/json")

    def answer(
        self, body: dict[str, Any], behavior: Behavior, number: int, fault: int | str | None
    ) -> tuple[list[str], list[dict[str, Any]], dict[str, Any]]:
        """A request's answer: its texts (one per choice), tool calls and usage."""
        calls = behavior.tool_calls(body, number) if behavior.tool_calls else None
        tool_calls = [
            {
                "id": f"call_{number}_{k}",
                "type": "function",
                "function": {"name": c["name"], "arguments": json.dumps(c["arguments"])},
            }
            for k, c in enumerate(calls or [])
        ]
        texts = [
            "" if fault == "empty" or tool_calls else behavior.reply(body, number, k)
            for k in range(int(body.get("n") or 1))
        ]
        prompt_tokens = sum(_words(str(m.get("content", ""))) for m in body.get("messages", []))
        completion_tokens = sum(_words(t) for t in texts)
        usage = (behavior.usage(body, texts) if callable(behavior.usage) else behavior.usage) or {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
        return texts, tool_calls, usage

    def whole_reply(
        self, body: dict[str, Any], behavior: Behavior, number: int, fault: int | str | None
    ) -> dict[str, Any]:
        """The whole (unstreamed) answer to ``body``: a ``chat.completion``."""
        texts, tool_calls, usage = self.answer(body, behavior, number, fault)
        model = str(body.get("model", ""))
        return {
            "id": f"chatcmpl-fake-{model}-{number}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": k,
                    "message": {"role": "assistant", "content": text}
                    | ({"tool_calls": tool_calls} if tool_calls else {}),
                    "finish_reason": "tool_calls" if tool_calls else behavior.finish_reason,
                }
                for k, text in enumerate(texts)
            ],
            "usage": usage,
        }

    def batch_answer(
        self, body: dict[str, Any], headers: dict[str, str], batch: str
    ) -> tuple[int, dict[str, Any]]:
        """One request of a batch, answered as the same live request would be: its HTTP status
        and body, the request logged (``batch`` set) and its model's next fault used. Latency is
        not waited (the batch's turnaround stands for it); ``"hang"`` and ``"malformed"``, which
        a batch cannot show, become 500s; streaming and dripping do not apply."""
        log, behavior, number, fault = self.admit(body, headers, batch=batch)
        status, answer = 200, None
        if int(body.get("n") or 1) > 1 and not behavior.supports_n:
            status, answer = 400, self.error_body(400, "'n' : number must be at most 1")
        elif isinstance(fault, int) or fault in ("hang", "malformed"):
            status = fault if isinstance(fault, int) else 500
            message = f"injected failure {fault}"
            if behavior.error_message is not None:
                message = behavior.error_message.replace("{key}", self.key_of(log))
            answer = self.error_body(status, message)
        else:
            answer = self.whole_reply(body, behavior, number, fault)
        log.status, log.finished = status, time.perf_counter()
        return status, answer

    async def wait(self, request: Request, seconds: float, log: LoggedRequest) -> bool:
        """Sleep ``seconds``; False (and the request logged as 499) if the client left first.

        The body has been read, so the next ASGI message is the client's disconnect: waiting
        for it costs nothing while the request is pending.
        """

        async def client_left() -> None:
            while (await request.receive())["type"] != "http.disconnect":
                pass

        watcher = asyncio.ensure_future(client_left())
        try:
            done, _ = await asyncio.wait([watcher], timeout=seconds)
        except asyncio.CancelledError:  # the server is stopping
            log.status, log.finished = 499, time.perf_counter()
            raise
        finally:
            watcher.cancel()
        if watcher in done:
            log.status, log.finished = 499, time.perf_counter()
            log.disconnected = True
            return False
        return True

    async def dripped(
        self, events: AsyncIterator[str], drip_s: float | None, log: LoggedRequest
    ) -> AsyncIterator[str]:
        """The body as produced, or one byte every ``drip_s`` seconds; a client that leaves
        mid-body is logged."""
        try:
            async for event in events:
                if not drip_s:
                    yield event
                    continue
                for char in event:
                    yield char
                    await asyncio.sleep(drip_s)
        except asyncio.CancelledError:  # Starlette cancels the body when the client leaves
            log.status, log.finished, log.disconnected = 499, time.perf_counter(), True
            raise
        if log.status == 200:
            log.finished = time.perf_counter()

    async def _sse(
        self,
        log: LoggedRequest,
        ident: str,
        model: str,
        text: str,
        usage: dict[str, int] | None,
        tool_calls: list[dict[str, Any]],
        finish_reason: str,
        truncate: bool = False,
    ) -> AsyncIterator[str]:
        def event(delta: dict[str, Any], finish: str | None = None) -> str:
            chunk = {
                "id": ident,
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
            return f"data: {json.dumps(chunk)}\n\n"

        yield event({"role": "assistant", "content": ""})
        if tool_calls:
            for k, call in enumerate(tool_calls):
                yield event({"tool_calls": [call | {"index": k}]})
            yield event({}, "tool_calls")
        else:
            words = text.split(" ")
            for k, word in enumerate(words):
                yield event({"content": word if k == 0 else " " + word})
            if truncate:
                log.status = 200
                return
            yield event({}, finish_reason)
        if usage is not None:
            chunk = {
                "id": ident,
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": model,
                "choices": [],
                "usage": usage,
            }
            yield f"data: {json.dumps(chunk)}\n\n"
        yield "data: [DONE]\n\n"
        log.status = 200
