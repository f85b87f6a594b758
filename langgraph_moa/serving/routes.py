"""The routes of ``moa serve`` and what they share (:class:`Service`: the catalog, the
concurrency slots, the runs loop): ``/health``, ``/v1/models``, ``/v1/chat/completions`` and
``/v1/capture/stats``, with the handlers that answer FastAPI's own errors in OpenAI's format.

A completion runs through the one run loop (:func:`langgraph_moa.run.stream_run`, with the
topology's ``deadline_s``) on the runs loop (runs.py); the route only renders its events
(protocol.py writes every body). A client that leaves has its run cancelled, and its slot is
freed only once the run has ended. Pass-through models go to passthrough.py, under the same
disconnect watcher."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Receive, Scope, Send

from langgraph_moa.errors import MoAError
from langgraph_moa.result import result_of
from langgraph_moa.run import AnswerToken, DeadlinePassed, Progress, RunFinished, stream_run
from langgraph_moa.serving.access_log import access_record, note_usage
from langgraph_moa.serving.catalog import Catalog, Served, check_runnable, check_writer_options
from langgraph_moa.serving.errors import APIError, error_of_run, validation_error
from langgraph_moa.serving.passthrough import PassThrough
from langgraph_moa.serving.protocol import (
    DEFAULT_MAX_MESSAGES,
    DONE,
    Chunks,
    answer_text,
    completion_body,
    completion_id,
    graph_inputs,
    load_body,
    moa_record,
    openai_usage,
    parse_request,
    progress_comment,
    requested_model,
    sse_event,
    token_delta,
)
from langgraph_moa.serving.runs import Run, Runner

_T = TypeVar("_T")


# --- a client that leaves ---------------------------------------------------------------------


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


# --- the run's events -------------------------------------------------------------------------


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


def _note_result(record: dict[str, Any], result: dict[str, Any]) -> None:
    """A run's usage and cost, for the access log."""
    note_usage(record, openai_usage(result) | {"cost_usd": result["usage"].get("cost_usd")})


def _failure(e: BaseException, served: Served, record: dict[str, Any]) -> APIError:
    """The error answer for a failed run. A passed deadline keeps what had finished: the
    record of the partial run (proposals, usage, cost) goes in the error body's ``moa`` field
    and the access log."""
    error = error_of_run(e)
    if isinstance(e, DeadlinePassed):
        result = result_of(e.state, latency_s=e.latency_s)  # type: ignore[arg-type]
        _note_result(record, result)
        error.extra = {"moa": moa_record(result, served.topology)}
    return error


async def _chunks(
    run: Run[None], served: Served, include_usage: bool, record: dict[str, Any]
) -> AsyncIterator[str]:
    """The SSE events of a streamed completion, rendered from the run's events."""
    out = Chunks(completion_id(), served.id)
    yield out.first()
    start = time.perf_counter()
    sent: list[str] = []
    sent_tool_calls = False
    state: dict[str, Any] = {}
    try:
        async for event in run.items():
            if isinstance(event, RunFinished):
                state = event.state
            elif isinstance(event, Progress):
                yield progress_comment(event.payload)
            elif isinstance(event, AnswerToken):
                delta = token_delta(event.text, event.chunk.tool_call_chunks)
                if "content" in delta:
                    sent.append(delta["content"])
                sent_tool_calls = sent_tool_calls or "tool_calls" in delta
                if delta:
                    yield out.chunk(delta)
        answer = answer_text(state)
    except Exception as e:
        # 200 is already sent: the failure goes out as one error event, then [DONE].
        yield sse_event(_failure(e, served, record).body())
        yield DONE
        return
    for chunk in out.rest(answer, "".join(sent), sent_tool_calls):
        yield chunk
    result = result_of(state, latency_s=time.perf_counter() - start)  # type: ignore[arg-type]
    _note_result(record, result)
    yield out.last(answer, result, served.topology)
    if include_usage:
        yield out.usage(result)
    yield DONE


# --- the service ------------------------------------------------------------------------------


class Service:
    """Per-app state: the catalog (and its compiled graphs), the concurrency count, and the
    loop the runs happen on."""

    def __init__(
        self,
        catalog: Catalog,
        *,
        max_concurrency: int,
        max_messages: int = DEFAULT_MAX_MESSAGES,
    ) -> None:
        self.catalog = catalog
        self.max_concurrency = max_concurrency
        self.max_messages = max_messages
        self.active = 0
        self.runner = Runner()

    @property
    def passthrough(self) -> PassThrough | None:
        return self.catalog.passthrough

    @property
    def graphs(self) -> dict[str, Any]:
        return self.catalog.graphs

    async def aclose(self) -> None:
        """Close what the service owns on the serving loop (the pass-through's HTTP client),
        then write the capture rows still queued."""
        if self.passthrough is not None:
            await self.passthrough.aclose()
            self.passthrough.sink.close()

    def take_slot(self) -> Callable[[], None]:
        """One of the ``max_concurrency`` slots (a 429 if none is free); the function returned
        frees it (once, however often it is called)."""
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

    def _start(
        self, make: Callable[[Run[Any]], Awaitable[Any]], release: Callable[[], None]
    ) -> Run[Any]:
        try:
            return self.runner.start(make, release)
        except BaseException:
            release()
            raise

    # -- one chat completion ----------------------------------------------------------------
    async def complete(self, request: Request) -> Response:
        raw = await request.body()
        record = access_record(request)
        data = load_body(raw)
        record["model"] = model_id = requested_model(data)
        passthrough = self.passthrough
        if model_id and passthrough is not None and passthrough.handles(model_id):
            try:
                return await _unless_client_leaves_here(
                    passthrough.complete(data, record), request.receive
                )
            except _ClientGone:
                return Response(status_code=499)
        # Checking and converting up to max_messages messages takes CPU time (tens of ms): in a
        # worker thread, so that the serving loop answers other requests meanwhile.
        req = await asyncio.to_thread(parse_request, data, max_messages=self.max_messages)
        served = self.catalog.lookup(req.model)
        inputs = await asyncio.to_thread(graph_inputs, req)
        check_writer_options(served, inputs.get("aggregator_options") or {})
        check_runnable(served)
        graph = await self.catalog.graph_for(served, req.seed)
        release = self.take_slot()  # held until the run has ended, however it ends
        deadline_s = served.topology.deadline_s
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            run: Run[Any] = self._start(
                lambda run: _stream_graph(graph, inputs, deadline_s, run), release
            )
            return _RunResponse(
                _chunks(run, served, include_usage, record),
                run,
                media_type="text/event-stream",
                headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
            )
        start = time.perf_counter()
        run = self._start(lambda run: _run_graph(graph, inputs, deadline_s), release)
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
        _note_result(record, result)
        return JSONResponse(
            completion_body(completion_id(), served.id, answer, result, served.topology)
        )


# --- the routes -------------------------------------------------------------------------------


def _http_error(request: Request, exc: StarletteHTTPException) -> APIError:
    """Starlette's own 404, 405 (and others) in OpenAI's format."""
    if exc.status_code == 404:
        message = f"unknown route: {request.method} {request.url.path}"
    elif exc.status_code == 405:
        message = f"method {request.method} is not allowed on {request.url.path}"
    else:
        message = str(exc.detail)
    error = APIError(exc.status_code, message, code="invalid_request")
    error.headers = dict(exc.headers or {})
    return error


def add_error_handlers(app: FastAPI) -> None:
    """Every error FastAPI answers itself goes out in OpenAI's format."""

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> Response:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        return validation_error(exc.errors()).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        return _http_error(request, exc).response()


def add_routes(app: FastAPI, service: Service) -> None:
    """The OpenAI-compatible routes, answered by ``service``."""

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
        return service.catalog.models()

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str) -> dict[str, Any]:
        return service.catalog.model(model_id)

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
