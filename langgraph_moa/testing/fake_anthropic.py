"""A small Anthropic Messages API (``POST /v1/messages``) for tests, beside the fake OpenAI server.

It lets the tests run a LangChain ``init_chat_model`` provider through its real client path
(langchain-anthropic -> anthropic SDK -> httpx -> HTTP on 127.0.0.1). Plain and streamed (SSE)
answers, with usage in Anthropic's shape; per model the OpenAI fake's behaviours
(``server.behave(model, ...)``: latency, faults as HTTP statuses with Anthropic's error body and
an optional Retry-After, hangs, a reply function, reported usage). Requests are logged alike;
:meth:`FakeAnthropic.key_of` reads the key a request carried (``x-api-key`` or a bearer token,
as SDK versions differ).

Point ``anthropic:<model>`` at it with ``ANTHROPIC_BASE_URL`` = :attr:`FakeAnthropic.base_url`.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from langgraph_moa.testing.fake_batches import BatchShape, anthropic_batch_routes
from langgraph_moa.testing.fake_openai import Behavior, FakeOpenAI, LoggedRequest

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    429: "rate_limit_error",
    529: "overloaded_error",
}


def text_of_content(content: Any) -> str:
    """The text of an Anthropic message's ``content`` (a string or a list of blocks)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(b.get("text", "")) for b in content if isinstance(b, dict))
    return ""


def _words(text: str) -> int:
    return len(text.split())


class FakeAnthropic(FakeOpenAI):
    """``with FakeAnthropic() as server:`` -> ``server.base_url`` is ``http://127.0.0.1:PORT``.

    It also serves the Message Batches API (``/v1/messages/batches``), set up and watched
    through :attr:`batches` (see :mod:`langgraph_moa.testing.fake_batches`).
    """

    BATCH_SHAPE: BatchShape = "anthropic"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @staticmethod
    def key_of(log: LoggedRequest) -> str:
        """The API key a request carried."""
        bearer = log.headers.get("authorization", "").removeprefix("Bearer ")
        return log.headers.get("x-api-key") or bearer

    def routes(self) -> list[Route]:
        return [
            Route("/v1/messages", self._messages, methods=["POST"]),
            *anthropic_batch_routes(self.batches),
        ]

    def error_body(self, status: int, message: str) -> dict[str, Any]:
        kind = _ERROR_TYPES.get(status, "api_error")
        return {"type": "error", "error": {"type": kind, "message": message}}

    async def _messages(self, request: Request) -> Response:
        body = await request.json()
        log, behavior, number, fault = self.admit(body, dict(request.headers))
        if behavior.latency_s and not await self.wait(request, behavior.latency_s, log):
            return Response(status_code=499)
        injected = await self.injected(request, log, behavior, fault, '{"id": "msg", "content": [')
        if injected is not None:
            return injected
        reply = self.whole_reply(body, behavior, number, fault)
        text = text_of_content(reply["content"])
        if body.get("stream"):
            events = self._events(log, reply, text, behavior.truncate)
            return StreamingResponse(
                self.dripped(events, behavior.drip_s, log), media_type="text/event-stream"
            )
        log.status, log.finished = 200, time.perf_counter()
        return Response(json.dumps(reply), media_type="application/json")

    def whole_reply(
        self, body: dict[str, Any], behavior: Behavior, number: int, fault: int | str | None
    ) -> dict[str, Any]:
        """The whole (unstreamed) answer to ``body``: a ``message``."""
        text = "" if fault == "empty" else behavior.reply(body, number, 0)
        prompt = _words(text_of_content(body.get("system"))) + sum(
            _words(text_of_content(m.get("content"))) for m in body.get("messages", [])
        )
        usage = behavior.usage or {"input_tokens": prompt, "output_tokens": _words(text)}
        stop = "max_tokens" if behavior.finish_reason == "length" else "end_turn"
        model = str(body.get("model", ""))
        return {
            "id": f"msg_fake_{model}_{number}",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [{"type": "text", "text": text}] if text else [],
            "stop_reason": stop,
            "stop_sequence": None,
            "usage": usage,
        }

    async def _events(
        self, log: LoggedRequest, message: dict[str, Any], text: str, truncate: bool
    ) -> AsyncIterator[str]:
        def event(kind: str, data: dict[str, Any]) -> str:
            return f"event: {kind}\ndata: {json.dumps({'type': kind, **data})}\n\n"

        usage = message["usage"]
        start = message | {
            "content": [],
            "stop_reason": None,
            "usage": {"input_tokens": usage.get("input_tokens", 0), "output_tokens": 1},
        }
        yield event("message_start", {"message": start})
        yield event(
            "content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}
        )
        for k, word in enumerate(text.split(" ") if text else []):
            delta = {"type": "text_delta", "text": word if k == 0 else " " + word}
            yield event("content_block_delta", {"index": 0, "delta": delta})
        if truncate:  # the connection ends cleanly mid-answer
            log.status = 200
            return
        yield event("content_block_stop", {"index": 0})
        yield event(
            "message_delta",
            {
                "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
                "usage": usage,  # the whole count, as the API reports it at the end
            },
        )
        yield event("message_stop", {})
        log.status = 200
