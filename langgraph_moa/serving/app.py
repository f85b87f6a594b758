"""The FastAPI app and its uvicorn runner: the catalog of served models, running one completion
(whole or streamed) with a bounded number at once, on the runs loop (runs.py) through the one
run loop (:func:`langgraph_moa.run.stream_run`, with the topology's ``deadline_s``), cancelling
the run of a client that leaves, handing pass-through models to passthrough.py (under the same
disconnect watcher), and the outer guard for keys, body size, body time and the access log.

The guard is a hand-written pure ASGI middleware because what it enforces is outside what
FastAPI and Starlette offer: the bytes really received (not only the declared Content-Length),
a deadline on receiving the body, and answering errors in OpenAI's format however the request
ends."""

from __future__ import annotations

import asyncio
import json
import socket
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from langgraph_moa.errors import (
    MissingCredentialsError,
    MissingExtraError,
    MoAError,
    MoAInputError,
)
from langgraph_moa.graphs.builder import build_graph
from langgraph_moa.llm.chat_models import check_ready
from langgraph_moa.llm.text import text_of
from langgraph_moa.result import result_of
from langgraph_moa.run import AnswerToken, DeadlinePassed, Progress, RunFinished, stream_run
from langgraph_moa.serving.access import (
    KEYS_ENV,
    KeyRing,
    SelfAddress,
    is_loopback_host,
    load_keys,
    refusal_of,
)
from langgraph_moa.serving.access_log import (
    access_record,
    configure,
    log_request,
    new_record,
    note_usage,
)
from langgraph_moa.serving.capture import CaptureSink, load_capture_config
from langgraph_moa.serving.errors import (
    APIError,
    error_of_run,
    http_wording,
    internal_error,
    log_line,
    too_large,
    too_slow,
    validation_error,
)
from langgraph_moa.serving.passthrough import PREFIX, PassThrough
from langgraph_moa.serving.protocol import (
    DEFAULT_MAX_MESSAGES,
    answer_text,
    finish_reason_of,
    graph_inputs,
    load_body,
    moa_record,
    openai_tool_calls,
    openai_usage,
    parse_request,
    requested_model,
    sse_event,
    tool_call_delta,
)
from langgraph_moa.serving.runs import Run, Runner
from langgraph_moa.serving.transport import (
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_READ_TIMEOUT_S,
    connection_cap,
    protocol_class,
)
from langgraph_moa.serving.workers import run_workers
from langgraph_moa.spec.providers import PROVIDERS
from langgraph_moa.spec.topology import (
    Agent,
    Topology,
    list_presets,
    load_preset,
    load_topology,
)

DEFAULT_HOST = "127.0.0.1"
# Not 8000: that is vLLM's usual port, which the `vllm` provider points at by default.
DEFAULT_PORT = 8080
DEFAULT_MAX_CONCURRENCY = 16
DEFAULT_MAX_BODY_BYTES = 1024 * 1024
TOPOLOGY_SUFFIXES = (".yaml", ".yml", ".json")
# Graphs compiled for a request's seed (see _with_seed), kept for the seeds used most recently.
SEEDED_GRAPHS = 32
# What the embedded model (an in-process aggregator) takes of the writer's options.
_IN_PROCESS_OPTIONS = frozenset({"temperature", "max_tokens", "stop"})

_T = TypeVar("_T")


# --- the models on offer ----------------------------------------------------------------------


@dataclass
class _Served:
    id: str
    topology: Topology
    source: str  # "preset" or the file's path
    refusal: str | None = None


def _load_catalog(topologies_dir: str | Path | None) -> dict[str, _Served]:
    catalog = {name: _Served(name, load_preset(name), "preset") for name in list_presets()}
    if topologies_dir is None:
        return catalog
    folder = Path(topologies_dir)
    if not folder.is_dir():
        raise MoAInputError(f"the topologies folder {str(folder)!r} is not a directory")
    files: dict[str, Path] = {}
    try:
        entries = sorted(folder.iterdir())
    except OSError as e:
        reason = e.strerror or str(e)
        raise MoAInputError(
            f"cannot list the topologies folder {str(folder)!r}: {reason}"
        ) from None
    for path in entries:
        if path.suffix.lower() not in TOPOLOGY_SUFFIXES or not path.is_file():
            continue
        if path.stem in files:
            raise MoAInputError(
                f"two topology files give the model id {path.stem!r}: "
                f"{files[path.stem].name} and {path.name}"
            )
        if path.stem in catalog:
            raise MoAInputError(
                f"the topology file {str(path)!r} would shadow the preset {path.stem!r}: "
                "rename the file (a preset keeps its name)"
            )
        files[path.stem] = path
    for model_id, path in files.items():
        catalog[model_id] = _Served(model_id, load_topology(path), str(path))
    return catalog


def not_ready(topology: Topology) -> str | None:
    """Why this server cannot run ``topology`` right now (a key not set, an extra not
    installed), in words for an HTTP client; None if it can. Keys are read at each call, so a
    key set later is seen."""
    try:
        check_ready(topology)
    except (MissingCredentialsError, MissingExtraError) as e:
        return http_wording(str(e))
    return None


def _with_seed(value: Any, seed: int) -> Any:
    """``value`` (a topology, or any part of one) with every agent's seed set to ``seed``."""
    if isinstance(value, Agent):
        return value.model_copy(update={"seed": seed})
    if isinstance(value, BaseModel):
        update = {}
        for name in type(value).model_fields:
            old = getattr(value, name)
            new = _with_seed(old, seed)
            if new is not old:
                update[name] = new
        return value.model_copy(update=update) if update else value
    if isinstance(value, list):
        items = [_with_seed(v, seed) for v in value]
        return items if any(a is not b for a, b in zip(items, value, strict=True)) else value
    return value


def _writers(topology: Topology) -> list[Agent]:
    """The agents that may write the final answer: the aggregator, and a fallback model."""
    found: list[Agent] = [topology.aggregator]
    if isinstance(topology.fallback, Agent):
        found.append(topology.fallback)
    return found


def _check_writer_options(served: _Served, options: dict[str, Any]) -> None:
    """A 400 for a request field the answer's writer cannot take (the embedded model has no
    top_p, penalties or response formats): refused, not ignored."""
    for agent in _writers(served.topology):
        spec = PROVIDERS.get(agent.provider)
        if spec is None or spec.openai_compatible:
            continue
        for name in options:
            if name not in _IN_PROCESS_OPTIONS:
                raise APIError(
                    400,
                    f"unsupported parameter {name!r} for the model {served.id!r}: its answer "
                    f"is written by {agent.model}, which does not take it",
                    param=name,
                    code="unsupported_parameter",
                )


# --- running a completion ---------------------------------------------------------------------


class _RunResponse(StreamingResponse):
    """A streamed completion: however the stream ends (finished, failed, the client went away,
    even before it started), its run is cancelled if still going and awaited."""

    def __init__(self, content: AsyncIterator[str], run: Run[Any], **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self._run = run

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._run.cancel()
            await asyncio.wait({self._run.ended})


class _ClientGone(Exception):
    pass


async def _watch(receive: Receive) -> None:
    """Ends when the client disconnects (the request's body has been read, so that is the only
    message still to come)."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def _unless_client_leaves_here(work: Awaitable[_T], receive: Receive) -> _T:
    """``work`` (on the serving loop: a pass-through); if the client disconnects first, it is
    cancelled and awaited, then _ClientGone is raised."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_watch(receive))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            return task.result()
        raise _ClientGone
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
            await asyncio.wait({task})


async def _unless_client_leaves(run: Run[_T], receive: Receive) -> _T:
    """The run's result; if the client disconnects first (the body is read), the run is
    cancelled and awaited, then _ClientGone is raised."""
    watcher = asyncio.ensure_future(_watch(receive))
    try:
        await asyncio.wait({run.ended, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if run.ended.done():
            return run.outcome()
        raise _ClientGone
    finally:
        watcher.cancel()
        if not run.ended.done():
            run.cancel()
            await asyncio.wait({run.ended})


async def _stream_graph(
    graph: Any, inputs: dict[str, Any], deadline_s: float | None, run: Run[None]
) -> None:
    """The run's events (see :mod:`langgraph_moa.run`), handed to the serving loop one by one
    (on the runs loop)."""
    async for event in stream_run(graph, inputs, deadline_s=deadline_s):
        run.emit(event)


async def _run_graph(graph: Any, inputs: dict[str, Any], deadline_s: float | None) -> Any:
    """The final state of a whole (not streamed) run: the same run loop, without tokens."""
    async for event in stream_run(graph, inputs, tokens=False, deadline_s=deadline_s):
        if isinstance(event, RunFinished):
            return event.state
    raise MoAError("the run ended without its final state")


def _failure(e: BaseException, served: _Served, record: dict[str, Any]) -> APIError:
    """The error answer for a failed run. A passed deadline keeps what had finished: the
    record of the partial run (proposals, usage, cost) goes in the error body's ``moa`` field
    and the access log."""
    error = error_of_run(e)
    if isinstance(e, DeadlinePassed):
        result = result_of(e.state, latency_s=e.latency_s)  # type: ignore[arg-type]
        note_usage(record, openai_usage(result) | {"cost_usd": result["usage"].get("cost_usd")})
        error.extra = {"moa": moa_record(result, served.topology)}
    return error


class _Service:
    """Per-app state: the catalog, one compiled graph per model id, the concurrency count, and
    the loop the runs happen on."""

    def __init__(
        self,
        catalog: dict[str, _Served],
        *,
        max_concurrency: int,
        max_messages: int = DEFAULT_MAX_MESSAGES,
        cache: Any,
        passthrough: PassThrough | None = None,
    ) -> None:
        self.catalog = catalog
        self.passthrough = passthrough
        self.max_concurrency = max_concurrency
        self.max_messages = max_messages
        self.cache = cache
        self.active = 0
        self.graphs: dict[str, Any] = {}
        self.seeded: OrderedDict[tuple[str, int], Any] = OrderedDict()
        self.created = int(time.time())
        self.runner = Runner()

    async def aclose(self) -> None:
        """Close what the service owns on the serving loop (the pass-through's HTTP client),
        then write the capture rows still queued."""
        if self.passthrough is not None:
            await self.passthrough.aclose()
            self.passthrough.sink.close()

    def lookup(self, model_id: str) -> _Served:
        served = self.catalog.get(model_id)
        if served is None and model_id.startswith(PREFIX):
            raise APIError(
                404,
                f"the model {model_id!r} does not exist: this server was started without a "
                "capture directory, so it serves no pass-through models",
                param="model",
                code="model_not_found",
            )
        if served is None:
            available = ", ".join(m for m, s in self.catalog.items() if s.refusal is None)
            raise APIError(
                404,
                f"the model {model_id!r} does not exist; available: {available}",
                param="model",
                code="model_not_found",
            )
        if served.refusal is not None:
            raise APIError(
                400,
                f"the model {model_id!r} is not served: {served.refusal}",
                param="model",
                code="model_refused",
            )
        return served

    async def graph_for(self, served: _Served, seed: int | None = None) -> Any:
        if seed is not None:
            # every call of the run takes the request's seed: the topology's agents with it
            key = (served.id, seed)
            graph = self.seeded.get(key)
            if graph is not None:
                self.seeded.move_to_end(key)
                return graph
            # compiling takes tens of ms: in a worker thread, so other requests go on
            topology = _with_seed(served.topology, seed)
            graph = await asyncio.to_thread(build_graph, topology, cache=self.cache)
            self.seeded[key] = graph
            while len(self.seeded) > SEEDED_GRAPHS:
                self.seeded.popitem(last=False)
            return graph
        graph = self.graphs.get(served.id)
        if graph is None:  # built once; a compiled graph holds no per-request state
            graph = self.graphs[served.id] = build_graph(served.topology, cache=self.cache)
        return graph

    def take_slot(self) -> Callable[[], None]:
        if self.active >= self.max_concurrency:
            raise APIError(
                429,
                f"the server is busy: {self.max_concurrency} requests are already running; "
                "retry shortly",
                type_="rate_limit_error",
                code="server_busy",
                headers={"retry-after": "1", "x-should-retry": "true"},
            )
        self.active += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.active -= 1

        return release

    def model_entry(self, model_id: str) -> dict[str, Any]:
        return {
            "id": model_id,
            "object": "model",
            "created": self.created,
            "owned_by": "langgraph-moa",
        }

    def models(self) -> dict[str, Any]:
        """The models that can run now in ``data``; the others in ``unavailable``, each with
        the reason (refused at start-up, or a key or extra missing now)."""
        data, unavailable = [], []
        for s in self.catalog.values():
            reason = s.refusal or not_ready(s.topology)
            if reason is None:
                data.append(self.model_entry(s.id))
            else:
                unavailable.append({"id": s.id, "reason": reason})
        if self.passthrough is not None:
            for alias in self.passthrough.listed():
                upstream = self.passthrough.resolve(alias)
                reason = self.passthrough.not_ready(upstream)
                if reason is None:
                    data.append(self.model_entry(alias))
                else:
                    unavailable.append({"id": alias, "reason": reason})
        return {"object": "list", "data": data, "unavailable": unavailable}

    def model(self, model_id: str) -> dict[str, Any]:
        if self.passthrough is not None and self.passthrough.handles(model_id):
            self.passthrough.resolve(model_id)  # 404 if it cannot name an upstream model
            return self.model_entry(model_id)
        return self.model_entry(self.lookup(model_id).id)

    # -- one chat completion ----------------------------------------------------------------
    async def complete(self, request: Request) -> Response:
        raw = await request.body()
        record = access_record(request)
        data = load_body(raw)
        record["model"] = model_id = requested_model(data)
        if model_id and self.passthrough is not None and self.passthrough.handles(model_id):
            try:
                return await _unless_client_leaves_here(
                    self.passthrough.complete(data, record), request.receive
                )
            except _ClientGone:
                return Response(status_code=499)
        # Checking and converting up to max_messages messages takes CPU time (tens of ms): in a
        # worker thread, so that the serving loop answers other requests meanwhile.
        req = await asyncio.to_thread(parse_request, data, max_messages=self.max_messages)
        served = self.lookup(req.model)
        inputs = await asyncio.to_thread(graph_inputs, req)
        _check_writer_options(served, inputs.get("aggregator_options") or {})
        try:
            check_ready(served.topology)
        except (MissingCredentialsError, MissingExtraError) as e:
            raise APIError(
                503,
                f"the model {served.id!r} cannot run on this server: {http_wording(str(e))}",
                type_="server_error",
                code="missing_api_key"
                if isinstance(e, MissingCredentialsError)
                else "model_unavailable",
                headers={"x-should-retry": "false"},
            ) from None
        graph = await self.graph_for(served, req.seed)
        release = self.take_slot()  # held until the run has ended, however it ends
        ident = f"chatcmpl-moa-{uuid.uuid4().hex[:24]}"
        deadline_s = served.topology.deadline_s
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            stream_run: Run[None] = self._start(
                lambda run: _stream_graph(graph, inputs, deadline_s, run), release
            )
            events = self._stream(stream_run, served, ident, include_usage, record)
            return _RunResponse(
                events,
                stream_run,
                media_type="text/event-stream",
                headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
            )
        start = time.perf_counter()
        run: Run[Any] = self._start(lambda run: _run_graph(graph, inputs, deadline_s), release)
        try:
            state = await _unless_client_leaves(run, request.receive)
        except _ClientGone:
            return Response(status_code=499)
        except Exception as e:
            raise _failure(e, served, record) from None
        latency = time.perf_counter() - start
        try:
            answer = answer_text(state)
        except MoAError as e:
            raise error_of_run(e) from None
        result = result_of(state, latency_s=latency)
        note_usage(record, openai_usage(result) | {"cost_usd": result["usage"].get("cost_usd")})
        message: dict[str, Any] = {
            "role": "assistant",
            "content": text_of(answer) if (text_of(answer) or not answer.tool_calls) else None,
            "refusal": None,
        }
        if answer.tool_calls:
            message["tool_calls"] = openai_tool_calls(answer)
        body = {
            "id": ident,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": served.id,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": finish_reason_of(answer),
                }
            ],
            "usage": openai_usage(result),
            "moa": moa_record(result, served.topology),
        }
        return JSONResponse(body)

    def _start(
        self, make: Callable[[Run[Any]], Awaitable[Any]], release: Callable[[], None]
    ) -> Run[Any]:
        try:
            return self.runner.start(make, release)
        except BaseException:
            release()
            raise

    async def _stream(
        self,
        run: Run[None],
        served: _Served,
        ident: str,
        include_usage: bool,
        record: dict[str, Any],
    ) -> AsyncIterator[str]:
        created = int(time.time())

        def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
            return sse_event(
                {
                    "id": ident,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": served.id,
                    "choices": [
                        {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
                    ],
                    **extra,
                }
            )

        yield chunk({"role": "assistant", "content": ""})
        start = time.perf_counter()
        sent: list[str] = []
        sent_tool_calls = False
        state: dict[str, Any] = {}
        try:
            async for event in run.items():
                if isinstance(event, RunFinished):
                    state = event.state
                elif isinstance(event, Progress):
                    # A comment line: SSE parsers (the openai client's too) skip it.
                    payload = json.dumps(event.payload, ensure_ascii=False, default=str)
                    yield f": moa {payload}\n\n"
                elif isinstance(event, AnswerToken):
                    delta: dict[str, Any] = {}
                    if text := event.text:
                        delta["content"] = text
                        sent.append(text)
                    if pieces := event.chunk.tool_call_chunks:
                        delta["tool_calls"] = [tool_call_delta(c) for c in pieces]
                        sent_tool_calls = True
                    if delta:
                        yield chunk(delta)
            answer = answer_text(state)
        except Exception as e:
            # 200 is already sent: the failure goes out as one error event, then [DONE].
            yield sse_event(_failure(e, served, record).body())
            yield "data: [DONE]\n\n"
            return
        final, streamed = text_of(answer), "".join(sent)
        if final != streamed and final.startswith(streamed):
            # e.g. the fallback answered with a proposal, which is not streamed token by token
            yield chunk({"content": final[len(streamed) :]})
        if answer.tool_calls and not sent_tool_calls:
            calls = openai_tool_calls(answer)
            yield chunk({"tool_calls": [{"index": k, **c} for k, c in enumerate(calls)]})
        result = result_of(state, latency_s=time.perf_counter() - start)  # type: ignore[arg-type]
        note_usage(record, openai_usage(result) | {"cost_usd": result["usage"].get("cost_usd")})
        yield chunk({}, finish_reason_of(answer), moa=moa_record(result, served.topology))
        if include_usage:
            yield sse_event(
                {
                    "id": ident,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": served.id,
                    "choices": [],
                    "usage": openai_usage(result),
                }
            )
        yield "data: [DONE]\n\n"


# --- the outer guard: authentication, body size, last-resort errors ---------------------------

# Routes answered without a key: a load balancer's health probe carries none.
OPEN_ROUTES = frozenset({"/health"})


class _TooLarge(Exception):
    pass


class _TooSlow(Exception):
    pass


class _Guard:
    """Pure ASGI middleware in front of every route: checks the bearer key, enforces the body
    limit on both the declared Content-Length and the bytes really received, gives the body
    ``read_timeout_s`` to arrive (408 after), lets a client that disconnects go without a word,
    and turns any other escaped exception into a 500 without a traceback."""

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

    async def _guarded(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        refusal = self._check(headers, open_route=scope["path"] in OPEN_ROUTES)
        if refusal is not None:
            await refusal.response()(scope, receive, send)
            return
        started = False
        received = 0
        limit = self.max_body_bytes
        body_done = False
        deadline = asyncio.get_running_loop().time() + self.read_timeout_s

        async def counting_receive() -> Message:
            nonlocal received, body_done
            if body_done:  # from here on, only a disconnect can come: no deadline
                return await receive()
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                raise _TooSlow from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _TooLarge
                body_done = not message.get("more_body", False)
            return message

        async def watching_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, watching_send)
        except _TooLarge:
            if not started:
                await too_large(limit).response()(scope, receive, send)
        except _TooSlow:
            if not started:
                await too_slow(self.read_timeout_s).response()(scope, receive, send)
        except ClientDisconnect:
            pass  # the client left while sending its request: nobody to answer, nothing wrong
        except Exception as e:
            log_line(f"internal error: {type(e).__name__}: {e}")
            if not started:
                await internal_error().response()(scope, receive, send)

    def _check(self, headers: dict[str, str], *, open_route: bool = False) -> APIError | None:
        if self.keys and not open_route:
            scheme, _, token = headers.get("authorization", "").strip().partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                return APIError(
                    401,
                    "missing API key: send it as 'Authorization: Bearer <key>'",
                    code="invalid_api_key",
                    headers={"www-authenticate": "Bearer"},
                )
            if not self.keys.accepts(token.strip()):
                return APIError(
                    401,
                    "invalid API key",
                    code="invalid_api_key",
                    headers={"www-authenticate": "Bearer"},
                )
        declared = headers.get("content-length")
        if declared is not None:
            if not declared.strip().isdigit():
                return APIError(400, "invalid Content-Length header", code="invalid_request")
            if int(declared) > self.max_body_bytes:
                return too_large(self.max_body_bytes)
        return None


# --- the app ----------------------------------------------------------------------------------


def create_app(
    *,
    topologies_dir: str | Path | None = None,
    keys: Sequence[str] = (),
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    cache: Any = False,
    max_messages: int = DEFAULT_MAX_MESSAGES,
    read_timeout_s: float = DEFAULT_READ_TIMEOUT_S,
    capture_dir: str | Path | None = None,
    capture_config: str | Path | None = None,
    allow_providers: Sequence[str] = (),
) -> FastAPI:
    """The OpenAI-compatible app. ``host``/``port`` are where it is served, so that topologies
    calling back into it can be refused; ``keys`` empty means no authentication; ``cache`` is
    passed to :func:`build_graph` (off by default: a long-running server would otherwise keep
    every cacheable proposal in memory); ``max_messages`` bounds a request's messages (and, in
    all, its content parts and tool calls); ``read_timeout_s`` is how long a request's body may
    take to arrive (408 after). ``capture_dir`` serves the pass-through models
    (``capture/<provider:model>`` and the aliases of ``capture_config``) and writes their
    exchanges there (capture.py); the app then owns a writer thread, closed by the service's
    ``aclose``. A pass-through reaches only the providers the operator configured (their base
    URL or key in the environment, or named in ``allow_providers``; see
    :meth:`PassThrough.configured`). Raises MoAInputError for a bad topologies folder or file (one
    named as a preset included), a limit below its minimum, a bad capture configuration, an
    unknown or non-OpenAI-compatible provider to allow, or a capture directory that cannot be
    written."""
    _check_limits(
        max_concurrency=max_concurrency,
        max_body_bytes=max_body_bytes,
        max_messages=max_messages,
        read_timeout_s=read_timeout_s,
    )
    allowed = _allowed_providers(allow_providers, capture_dir)
    catalog = _load_catalog(topologies_dir)
    here = SelfAddress(host, port)
    for served in catalog.values():
        served.refusal = refusal_of(served.topology, here)
    passthrough = None
    if capture_dir is not None:
        config = load_capture_config(capture_config)
        for alias in config.aliases:
            if alias in catalog:
                raise MoAInputError(f"the capture alias {alias!r} is already a served model id")
        passthrough = PassThrough(CaptureSink(capture_dir, config), here, allowed)
        try:
            for alias in config.aliases:
                passthrough.resolve(alias)
        except APIError as e:
            passthrough.sink.close()
            raise MoAInputError(f"capture config: {e.message}") from None
    elif capture_config is not None:
        raise MoAInputError("a capture configuration needs a capture directory")
    service = _Service(
        catalog,
        max_concurrency=max_concurrency,
        max_messages=max_messages,
        cache=cache,
        passthrough=passthrough,
    )

    app = FastAPI(
        title="langgraph-moa",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.moa = service

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> Response:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        return validation_error(exc.errors()).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 404:
            message = f"unknown route: {request.method} {request.url.path}"
        elif exc.status_code == 405:
            message = f"method {request.method} is not allowed on {request.url.path}"
        else:
            message = str(exc.detail)
        error = APIError(exc.status_code, message, code="invalid_request")
        error.headers = dict(exc.headers or {})
        return error.response()

    @app.get("/health")
    async def health() -> dict[str, Any]:
        """Liveness, without a key and without naming models: the process answers, and how
        busy it is."""
        return {
            "status": "ok",
            "active_requests": service.active,
            "max_concurrency": service.max_concurrency,
        }

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return service.models()

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str) -> dict[str, Any]:
        return service.model(model_id)

    @app.get("/v1/capture/stats")
    async def capture_stats() -> dict[str, Any]:
        if service.passthrough is None:
            raise APIError(
                404,
                "this server was started without a capture directory",
                code="capture_off",
            )
        return service.passthrough.sink.snapshot()

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await service.complete(request)

    app.add_middleware(
        _Guard,
        keys=KeyRing(keys),
        max_body_bytes=max_body_bytes,
        read_timeout_s=read_timeout_s,
    )
    return app


def _allowed_providers(names: Sequence[str], capture_dir: str | Path | None) -> frozenset[str]:
    """The providers ``--allow-provider`` names, checked: known, OpenAI-compatible, and only
    with a capture directory (nothing else is passed through)."""
    if names and capture_dir is None:
        raise MoAInputError("--allow-provider is for pass-through models: give --capture too")
    for name in names:
        spec = PROVIDERS.get(name)
        if spec is None or not spec.openai_compatible:
            known = ", ".join(sorted(p for p, s in PROVIDERS.items() if s.openai_compatible))
            raise MoAInputError(
                f"--allow-provider: {name!r} is not an OpenAI-compatible provider; known: {known}"
            )
    return frozenset(names)


def _check_limits(
    *,
    max_concurrency: int,
    max_body_bytes: int,
    max_messages: int,
    read_timeout_s: float,
    max_connections: int | None = None,
) -> None:
    if max_concurrency < 1:
        raise MoAInputError(f"max concurrency must be at least 1, got {max_concurrency}")
    if max_body_bytes < 1:
        raise MoAInputError(f"the body limit must be at least 1 byte, got {max_body_bytes}")
    if max_messages < 1:
        raise MoAInputError(f"the message limit must be at least 1, got {max_messages}")
    if not read_timeout_s > 0:
        raise MoAInputError(f"the read timeout must be above 0 seconds, got {read_timeout_s}")
    if max_connections is not None and max_connections < 1:
        raise MoAInputError(f"max connections must be at least 1, got {max_connections}")


def server_config(
    app: ASGIApp,
    *,
    read_timeout_s: float = DEFAULT_READ_TIMEOUT_S,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    log_level: str = "info",
    access_log: bool = True,
) -> Any:
    """The uvicorn configuration ``run_server`` uses for ``app``: uvicorn's HTTP protocol with a
    header deadline and a connection cap (transport.py), no websockets, no lifespan."""
    import uvicorn

    return uvicorn.Config(
        app,
        http=protocol_class(read_timeout_s=read_timeout_s, max_connections=max_connections),
        ws="none",
        log_level=log_level,
        access_log=access_log,
        lifespan="off",
        timeout_graceful_shutdown=5,
    )


def _listen(host: str, port: int) -> socket.socket:
    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except (OSError, UnicodeError) as e:
        reason = getattr(e, "strerror", None) or str(e)
        raise MoAInputError(f"cannot listen on {host}:{port}: {reason}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as e:
        sock.close()
        raise MoAInputError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.set_inheritable(True)
    return sock


def run_server(
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    topologies_dir: str | Path | None = None,
    keys_file: str | Path | None = None,
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    *,
    cache: Any = False,
    log_level: str = "info",
    access_log: bool = True,
    max_messages: int = DEFAULT_MAX_MESSAGES,
    read_timeout_s: float = DEFAULT_READ_TIMEOUT_S,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    capture_dir: str | Path | None = None,
    capture_config: str | Path | None = None,
    workers: int = 1,
    allow_providers: Sequence[str] = (),
) -> None:
    """Serve until interrupted, in ``workers`` processes (see :mod:`.workers`). Keys come from
    ``keys_file`` and ``MOA_SERVE_KEYS``; without any,
    only a loopback ``host`` is accepted. A client has ``read_timeout_s`` to send a request's
    headers, then as long again for its body; at most ``max_connections`` connections are held
    (fewer if the process's file-descriptor limit is low: half of it, the other half being kept
    for upstream requests), the one idle longest closed to make room; the kernel queues up to
    2048 more not yet accepted. Raises MoAInputError (one line) for a bad keys file, topologies
    folder or file, a limit below its minimum, a non-loopback host without keys, or an address
    that cannot be listened on."""
    import uvicorn

    if not 0 <= port <= 65535:
        raise MoAInputError(f"the port must be between 0 and 65535, got {port}")
    if workers < 1:
        raise MoAInputError(f"workers must be at least 1, got {workers}")
    if workers > 1 and capture_dir is not None:
        # one writer owns the capture files (its thread and rotation do not survive a fork)
        raise MoAInputError("--capture serves from one process: leave out --workers")
    _check_limits(
        max_concurrency=max_concurrency,
        max_body_bytes=max_body_bytes,
        max_messages=max_messages,
        read_timeout_s=read_timeout_s,
        max_connections=max_connections,
    )
    keys = load_keys(keys_file)
    if not keys and not is_loopback_host(host):
        raise MoAInputError(
            f"refusing to listen on {host} without authentication: give --keys-file or set "
            f"{KEYS_ENV} (or listen on 127.0.0.1)"
        )
    sock = _listen(host, port)
    try:
        bound_port = int(sock.getsockname()[1])
        app = create_app(
            topologies_dir=topologies_dir,
            keys=keys,
            max_concurrency=max_concurrency,
            max_body_bytes=max_body_bytes,
            host=host,
            port=bound_port,
            cache=cache,
            max_messages=max_messages,
            read_timeout_s=read_timeout_s,
            capture_dir=capture_dir,
            capture_config=capture_config,
            allow_providers=allow_providers,
        )
    except BaseException:
        sock.close()
        raise
    service: _Service = app.state.moa
    for served in service.catalog.values():
        if served.refusal is not None:
            log_line(f"not serving {served.id!r}: {served.refusal}")
    served_count = sum(1 for s in service.catalog.values() if s.refusal is None)
    shown = f"[{host}]" if ":" in host else host
    auth = f"bearer keys ({len(keys)})" if keys else "no authentication"
    connections = connection_cap(max_connections)
    log_line(
        f"listening on http://{shown}:{bound_port}/v1, {served_count} models, {auth}, "
        f"up to {max_concurrency} concurrent requests and {connections} connections"
        + (f" in each of {workers} worker processes" if workers > 1 else "")
    )
    if service.passthrough is not None:
        log_line(f"capturing pass-through traffic to {service.passthrough.sink.directory}")
    # this server's own access lines (access_log.py), not uvicorn's; INFO, as uvicorn's were
    configure(access_log and log_level.lower() in ("trace", "debug", "info"))
    config = server_config(
        app,
        read_timeout_s=read_timeout_s,
        max_connections=connections,
        log_level=log_level,
        access_log=False,
    )
    server = uvicorn.Server(config)

    async def serve(ready: Callable[[], None]) -> None:
        async def announce() -> None:  # tells the supervisor (workers.py) this one serves
            while not server.started:
                await asyncio.sleep(0.05)
            ready()

        announcing = asyncio.ensure_future(announce())
        try:
            await server.serve(sockets=[sock])
        finally:
            announcing.cancel()
            await service.aclose()

    def serve_here(ready: Callable[[], None] = lambda: None) -> None:
        # as uvicorn's Server.run does, with the close of what the service owns on that loop
        with asyncio.Runner(loop_factory=config.get_loop_factory()) as runner:
            runner.run(serve(ready))

    try:
        if workers > 1:
            run_workers(serve_here, workers, log_line)
        else:
            serve_here()
    finally:
        sock.close()
        service.runner.close()
