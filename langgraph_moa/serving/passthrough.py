"""Pass-through models: ``capture/<provider:model>`` (and the aliases of the capture
configuration) forwarded to that one upstream model, the request as sent and the answer
returned unchanged, each completed exchange handed to the capture directory (capture.py).

Only the ``model`` field is rewritten (to the upstream's model name) and the server's own key
replaced by the provider's. The upstream's answer goes back byte for byte, streamed as it
arrives; an upstream error status (4xx, 5xx) goes back as that status with the upstream's
body, configured keys masked. No MoA, and one retry only: a request whose pooled connection the
upstream had closed before sending any byte of a response (the keep-alive race: the upstream
never saw it) is sent once more on a new connection; anything else the caller's own client
retries as it would against the provider.

Only providers the operator configured are reached (see :meth:`PassThrough.configured`): a
provider's default loopback URL (vLLM's, Ollama's) is never used on a client's say-so, since
that would let any caller make this server talk to services on its own machine.

A client that leaves is the caller's to notice (the disconnect watcher of routes.py cancels
:meth:`PassThrough.complete`, and Starlette cancels a relayed stream); a cancelled exchange is
counted, never captured.

Why httpx directly, not the openai client: the openai client checks and rebuilds the request
and the answer; a pass-through must forward fields it does not know and return the bytes it
got.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
from starlette.responses import Response, StreamingResponse

from langgraph_moa.llm.chat_models import redact
from langgraph_moa.serving.access import (
    OPENAI_DEFAULT_BASE_URL,
    SelfAddress,
    is_loopback_host,
)
from langgraph_moa.serving.capture import CaptureSink, capture_row
from langgraph_moa.serving.errors import APIError
from langgraph_moa.spec.providers import BUILTIN_PROVIDERS, DEFAULT_TIMEOUT_S, PROVIDERS

PREFIX = "capture/"
# Upstream response headers worth passing on: rate-limit and retry advice, request ids.
_KEPT_HEADERS = ("retry-after", "retry-after-ms", "x-should-retry", "x-request-id")
_KEPT_PREFIXES = ("x-ratelimit-",)
# What sending raises when the upstream closed the connection before a byte of its answer.
_CLOSED_BEFORE_ANSWER = (
    httpx.RemoteProtocolError,
    httpx.ConnectError,
    httpx.ReadError,
    httpx.WriteError,
)


@dataclass(frozen=True)
class Upstream:
    served_id: str  # what the caller asked for: capture/openai:gpt-4o, or an alias
    model: str  # provider:model
    provider: str
    name: str  # the model's name at the provider


def _not_found(model_id: str, why: str) -> APIError:
    return APIError(
        404, f"the model {model_id!r} does not exist: {why}", param="model", code="model_not_found"
    )


class PassThrough:
    """The pass-through models of one app; owns the HTTP client to the upstreams (closed by
    ``aclose``)."""

    def __init__(
        self, sink: CaptureSink, here: SelfAddress, allowed: frozenset[str] = frozenset()
    ) -> None:
        self.sink = sink
        self.here = here
        self.aliases = dict(sink.config.aliases)
        # the operator's word: --allow-provider, and the providers the aliases name
        self.allowed = allowed | {a.partition(":")[0] for a in self.aliases.values()}
        self._client: httpx.AsyncClient | None = None
        self._fresh: httpx.AsyncClient | None = None  # for retries: a new connection each time

    # -- which models ------------------------------------------------------------------------
    def handles(self, model_id: str) -> bool:
        return model_id.startswith(PREFIX) or model_id in self.aliases

    def resolve(self, model_id: str) -> Upstream:
        target = self.aliases.get(model_id) or model_id.removeprefix(PREFIX)
        provider, sep, name = target.partition(":")
        if not sep or not name or not provider:
            raise _not_found(model_id, 'a pass-through model is "capture/<provider>:<model>"')
        spec = PROVIDERS.get(provider)
        if spec is None:
            known = ", ".join(sorted(p for p, s in PROVIDERS.items() if s.openai_compatible))
            raise _not_found(model_id, f"unknown provider {provider!r}; known: {known}")
        if not spec.openai_compatible:
            raise APIError(
                400,
                f"the model {model_id!r} cannot be passed through: {provider} is not an "
                "OpenAI-compatible service",
                param="model",
                code="model_refused",
            )
        return Upstream(model_id, target, provider, name)

    def configured(self, provider: str) -> bool:
        """Whether the operator configured ``provider``: allowed on the command line (or named
        by an alias), its base URL set in the environment, registered in code, or its key set
        for a provider whose default URL is not on this machine. A default loopback URL
        (vllm, ollama) is never reached on a client's say-so."""
        spec = PROVIDERS[provider]
        if provider in self.allowed or os.environ.get(spec.base_url_env):
            return True
        if provider not in BUILTIN_PROVIDERS:
            return True
        return bool(os.environ.get(spec.key_env)) and not _local_default(provider)

    def refusal(self, upstream: Upstream) -> APIError | None:
        """A 403 for a provider the operator did not configure, saying how to allow it."""
        if self.configured(upstream.provider):
            return None
        spec = PROVIDERS[upstream.provider]
        settings = spec.base_url_env
        if not _local_default(upstream.provider):
            settings = f"{spec.key_env} or {settings}"
        return APIError(
            403,
            f"the model {upstream.served_id!r} cannot be passed through: the provider "
            f"{upstream.provider!r} is not configured on this server (the operator can set "
            f"{settings}, or start it with --allow-provider {upstream.provider})",
            type_="permission_error",
            param="model",
            code="provider_not_allowed",
        )

    def listed(self) -> list[str]:
        """The aliases, for /v1/models (``capture/...`` ids are open-ended)."""
        return list(self.aliases)

    def not_ready(self, upstream: Upstream) -> str | None:
        spec = PROVIDERS[upstream.provider]
        if not self.configured(upstream.provider):
            return f"{upstream.provider} is not configured (--allow-provider {upstream.provider})"
        if spec.key_required and not spec.resolve_key():
            return f"{spec.key_env} is not set"
        url = self._base_url(upstream)
        if url is None:
            return f"{spec.base_url_env} is not set"
        if self.here.matches(url):
            return f"{upstream.provider} points back at this server"
        return None

    # -- one exchange ------------------------------------------------------------------------
    @staticmethod
    def _base_url(upstream: Upstream) -> str | None:
        spec = PROVIDERS[upstream.provider]
        url = spec.resolve_base_url()
        if url is None and upstream.provider == "openai":
            url = OPENAI_DEFAULT_BASE_URL
        return url.rstrip("/") if url else None

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:  # made on the serving loop, which it then belongs to
            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(DEFAULT_TIMEOUT_S, connect=10.0),
                limits=httpx.Limits(max_connections=512, max_keepalive_connections=64),
            )
        return self._client

    @property
    def fresh_client(self) -> httpx.AsyncClient:
        """A client that keeps no connection alive: each request on a connection of its own."""
        if self._fresh is None:
            self._fresh = httpx.AsyncClient(
                timeout=httpx.Timeout(DEFAULT_TIMEOUT_S, connect=10.0),
                limits=httpx.Limits(max_connections=512, max_keepalive_connections=0),
            )
        return self._fresh

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
        if self._fresh is not None:
            await self._fresh.aclose()
            self._fresh = None

    async def complete(self, data: dict[str, Any], record: dict[str, Any]) -> Response:
        upstream = self.resolve(str(data["model"]))
        if (refused := self.refusal(upstream)) is not None:
            raise refused
        messages = data.get("messages")
        if not isinstance(messages, list) or not messages:
            raise APIError(
                400,
                "invalid request: messages: a non-empty list is required",
                param="messages",
                code="invalid_value",
            )
        reason = self.not_ready(upstream)
        if reason is not None:
            raise APIError(
                503,
                f"the model {upstream.served_id!r} cannot run on this server: {reason}",
                type_="server_error",
                code="missing_api_key" if "KEY" in reason else "model_unavailable",
                headers={"x-should-retry": "false"},
            )
        spec = PROVIDERS[upstream.provider]
        headers = {"content-type": "application/json", "accept-encoding": "identity"}
        if key := spec.resolve_key():
            headers["authorization"] = f"Bearer {key}"
        body = json.dumps({**data, "model": upstream.name}, ensure_ascii=False).encode("utf-8")
        request = self.client.build_request(
            "POST", f"{self._base_url(upstream)}/chat/completions", content=body, headers=headers
        )
        keep = self.sink.wants(upstream.served_id)
        exchange = _Exchange(self.sink, upstream, data, keep, record)
        start = time.perf_counter()
        try:
            reply = await self._send(request)
            if not data.get("stream") and reply.status_code == 200:
                try:
                    await reply.aread()
                finally:
                    await reply.aclose()
        except asyncio.CancelledError:  # the client left: the upstream request goes with it
            self.sink.stats.add(cancelled=1)
            record["outcome"] = "cancelled"
            raise
        except httpx.HTTPError as e:
            self.sink.stats.add(failed=1)
            record["outcome"] = "upstream_unreachable"
            raise APIError(
                502,
                f"the upstream {upstream.model} could not be reached: {type(e).__name__}",
                type_="upstream_error",
                code="upstream_failed",
            ) from None
        if reply.status_code != 200:
            return await exchange.error(reply)
        if data.get("stream"):
            return StreamingResponse(
                exchange.relay(reply, start),
                status_code=200,
                headers=_kept(reply.headers) | {"cache-control": "no-cache"},
                media_type=reply.headers.get("content-type", "text/event-stream"),
            )
        return exchange.whole(reply, start)

    async def _send(self, request: httpx.Request) -> httpx.Response:
        """The upstream's response, its body not yet read. Sent once more, on a new connection,
        when the first attempt failed before any byte of a response came back: a pooled
        connection the upstream closed as it was reused (it never saw the request: the send
        fails, or the read finds the connection closed or reset), or a connection that could
        not be opened. Not a timeout: the upstream may be working on it."""
        try:
            return await self.client.send(request, stream=True)
        except _CLOSED_BEFORE_ANSWER:
            return await self.fresh_client.send(request, stream=True)


def _local_default(provider: str) -> bool:
    """Whether the provider table's default URL for ``provider`` is on this machine."""
    spec = PROVIDERS[provider]
    default = spec.base_url or (OPENAI_DEFAULT_BASE_URL if provider == "openai" else None)
    host = urlsplit(default).hostname if default else None
    return bool(host and is_loopback_host(host))


def _kept(headers: httpx.Headers) -> dict[str, str]:
    return {
        k: v
        for k, v in headers.items()
        if k.lower() in _KEPT_HEADERS or k.lower().startswith(_KEPT_PREFIXES)
    }


class _Exchange:
    """One forwarded request: its answer, relayed and then captured (or counted)."""

    def __init__(
        self,
        sink: CaptureSink,
        upstream: Upstream,
        data: dict[str, Any],
        keep: bool,
        record: dict[str, Any],
    ) -> None:
        self.sink = sink
        self.upstream = upstream
        self.data = data
        self.keep = keep
        self.record = record

    async def error(self, reply: httpx.Response) -> Response:
        """The upstream's error status and body, passed on (keys masked); counted."""
        try:
            raw = await reply.aread()
        finally:
            await reply.aclose()
        self.sink.stats.add(failed=1)
        self.record["outcome"] = "upstream_error"
        return Response(
            redact(raw.decode("utf-8", "replace")),
            status_code=reply.status_code,
            headers=_kept(reply.headers),
            media_type=reply.headers.get("content-type", "application/json"),
        )

    def whole(self, reply: httpx.Response, start: float) -> Response:
        latency = time.perf_counter() - start
        raw = reply.content
        try:
            answer = json.loads(raw)
            choice = answer["choices"][0]
            message = choice["message"]
        except (ValueError, KeyError, IndexError, TypeError):
            self.sink.stats.add(failed=1)  # answered as received, but not a completion
            self.record["outcome"] = "malformed_upstream"
        else:
            self._capture(message, answer.get("usage"), latency)
        return Response(
            raw,
            status_code=200,
            headers=_kept(reply.headers),
            media_type=reply.headers.get("content-type", "application/json"),
        )

    async def relay(self, reply: httpx.Response, start: float) -> AsyncIterator[bytes]:
        """The upstream's stream as it arrives; the completion is assembled on the way and
        captured once the stream has ended complete ([DONE] or a finish reason)."""
        stream = _StreamedAnswer()
        ended = False
        try:
            async for piece in reply.aiter_bytes():
                stream.feed(piece)
                yield piece
            ended = True
        except (asyncio.CancelledError, GeneratorExit):  # the client left
            self.sink.stats.add(cancelled=1)
            self.record["outcome"] = "cancelled"
            raise
        except httpx.HTTPError:
            self.sink.stats.add(failed=1)
            self.record["outcome"] = "stream_broken"
            return
        finally:
            await reply.aclose()
        if ended and stream.complete:
            self._capture(stream.message(), stream.usage, time.perf_counter() - start)
        elif ended:
            self.sink.stats.add(failed=1)
            self.record["outcome"] = "stream_incomplete"

    def _capture(self, message: dict[str, Any], usage: Any, latency: float) -> None:
        if isinstance(usage, dict):
            self.record.update(
                {k: usage[k] for k in ("prompt_tokens", "completion_tokens") if k in usage}
            )
        if not self.keep:
            self.sink.stats.add(sampled_out=1)
            self.record["captured"] = False
            return
        completion = {"role": "assistant", "content": message.get("content")}
        if message.get("tool_calls"):
            completion["tool_calls"] = message["tool_calls"]
        if message.get("refusal"):
            completion["refusal"] = message["refusal"]
        user = self.data.get("user")
        metadata = self.data.get("metadata")
        self.sink.submit(
            capture_row(
                model=self.upstream.model,
                messages=list(self.data["messages"]),
                completion=completion,
                request=self.data,
                usage=usage if isinstance(usage, dict) else None,
                latency_s=latency,
                user=user if isinstance(user, str) else None,
                metadata=metadata if isinstance(metadata, dict) else None,
            )
        )
        self.record["captured"] = True


class _StreamedAnswer:
    """A chat-completion stream read as it passes: the text, tool calls and usage it carries."""

    def __init__(self) -> None:
        self._buffer = b""
        self.content: list[str] = []
        self.refusal: list[str] = []
        self.tool_calls: dict[int, dict[str, Any]] = {}
        self.usage: dict[str, Any] | None = None
        self.finish_reason: str | None = None
        self.done = False

    @property
    def complete(self) -> bool:
        return self.done or self.finish_reason is not None

    def feed(self, piece: bytes) -> None:
        self._buffer += piece
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            line = line.strip()
            if not line.startswith(b"data:"):
                continue  # comments, event names, blank separators
            payload = line[5:].strip()
            if payload == b"[DONE]":
                self.done = True
                continue
            try:
                chunk = json.loads(payload)
            except ValueError:
                continue
            if isinstance(chunk, dict):
                self._take(chunk)

    def _take(self, chunk: dict[str, Any]) -> None:
        if isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue  # the first choice is the one captured
            delta = choice.get("delta") or {}
            if isinstance(delta.get("content"), str):
                self.content.append(delta["content"])
            if isinstance(delta.get("refusal"), str):
                self.refusal.append(delta["refusal"])
            for call in delta.get("tool_calls") or []:
                slot = self.tool_calls.setdefault(
                    int(call.get("index", 0)),
                    {"id": None, "type": "function", "function": {"name": "", "arguments": ""}},
                )
                if call.get("id"):
                    slot["id"] = call["id"]
                function = call.get("function") or {}
                slot["function"]["name"] += function.get("name") or ""
                slot["function"]["arguments"] += function.get("arguments") or ""
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]

    def message(self) -> dict[str, Any]:
        text = "".join(self.content)
        message: dict[str, Any] = {"content": text if text or not self.tool_calls else None}
        if self.tool_calls:
            message["tool_calls"] = [self.tool_calls[k] for k in sorted(self.tool_calls)]
        if self.refusal:
            message["refusal"] = "".join(self.refusal)
        return message
