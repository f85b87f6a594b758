"""``moa serve``: a Mixture-of-Agents behind an OpenAI-compatible HTTP API (FastAPI + uvicorn).

Every shipped preset is a model id under its own name (``moa``, ``moa-lite``, ``local``...), and
so is every topology file of ``--topologies DIR`` (by file stem; a file named like a preset
replaces it). Any OpenAI client can then ask a MoA: ``POST /v1/chat/completions`` takes the usual
body (messages with tool calls and results, ``stream``, ``stream_options.include_usage``,
``tools``, ``tool_choice``, ``temperature``, ``max_tokens``/``max_completion_tokens``; the last
four only concern the aggregator) and answers with a normal ``chat.completion`` whose usage sums
every call of the run. MoA's own record (layers, critique, cost, degraded, ledger, fallback)
rides along where plain clients ignore it: one extra top-level field ``moa``, on the final chunk
when streaming; per-proposer progress is sent as SSE comment lines (``: moa {...}``), which every
SSE parser skips.

Status codes, always with OpenAI's error body ``{"error": {message, type, param, code}}``:

- 400: not JSON, a bad field, an unusable conversation, a model this server refuses to run (its
  topology points back at this server, or needs a human reviewer);
- 401: a missing or wrong bearer key (only when keys are configured);
- 404: an unknown model or route;
- 413: a body over the limit (declared or actually sent);
- 429: the server is already running ``max_concurrency`` requests (rejected at once, not queued);
- 502: the upstream models failed (a layer below its quorum, the aggregator and its fallback);
- 503: the topology needs an API key the server's environment lacks. That is the operator's
  configuration, not the caller's mistake nor an upstream failure, so it is reported as the
  service being unavailable, naming the variable;
- 500: anything unexpected, with a generic message (one line goes to the server's stderr).

A stream has already answered 200 when the run starts, so a failure during it arrives as one
``data: {"error": {...}}`` event (which the openai client raises as an error) before
``data: [DONE]``.

By default the server listens on 127.0.0.1 only. Bearer keys come from a keys file (one per
line; lines starting with ``#`` are comments) and/or ``MOA_SERVE_KEYS`` (comma-separated);
without keys there is no authentication, and listening on a non-loopback address is then
refused. Keys are compared in constant time and never logged or echoed.

A topology is refused (not listed; 400 if asked for) when one of its agents' base URLs leads
back to this server, since every request would then call itself again.

Run it with ``python -m langgraph_moa.serve [--host H] [--port P] [--topologies DIR]
[--keys-file F] [--max-concurrency N] [--max-body-bytes B]``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import json
import os
import re
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeAlias, TypeVar
from urllib.parse import urlsplit

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from langgraph_moa.errors import MissingCredentialsError, MoAError, MoAInputError, MoARunError
from langgraph_moa.graphs.builder import AGGREGATOR, FALLBACK, build_graph
from langgraph_moa.providers import PROVIDERS, check_credentials, redact
from langgraph_moa.result import result_of
from langgraph_moa.topology import Topology, list_presets, load_preset, load_topology

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_MAX_CONCURRENCY",
    "DEFAULT_PORT",
    "KEYS_ENV",
    "SelfAddress",
    "create_app",
    "is_loopback_host",
    "load_keys",
    "run_server",
]

DEFAULT_HOST = "127.0.0.1"
# Not 8000: that is vLLM's usual port, which the `vllm` provider points at by default.
DEFAULT_PORT = 8080
DEFAULT_MAX_CONCURRENCY = 16
DEFAULT_MAX_BODY_BYTES = 1024 * 1024
KEYS_ENV = "MOA_SERVE_KEYS"
TOPOLOGY_SUFFIXES = (".yaml", ".yml", ".json")
OPENAI_DEFAULT_BASE_URL = "https://api.openai.com/v1"

_T = TypeVar("_T")


def _log(message: str) -> None:
    """One line for the operator on stderr (never a traceback, keys masked)."""
    sys.stderr.write(f"moa serve: {redact(' '.join(message.split()))}\n")
    sys.stderr.flush()


# --- errors in OpenAI's shape -----------------------------------------------------------------


class APIError(Exception):
    """An error answer: HTTP status plus OpenAI's ``{"error": {...}}`` body."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def _no_retry() -> dict[str, str]:
    # The openai client retries 5xx by default; these failures would only repeat (and be
    # paid for again), so say so with the header it honours.
    return {"x-should-retry": "false"}


def _internal_error() -> APIError:
    return APIError(
        500,
        "internal server error: the request could not be completed",
        type_="server_error",
        code="internal_error",
    )


def _error_of_run(exc: BaseException) -> APIError:
    """Map what a graph run raised to the status a caller should see."""
    if isinstance(exc, MissingCredentialsError):
        return APIError(
            503,
            f"this server is not configured for the model: {exc}",
            type_="server_error",
            code="missing_api_key",
            headers=_no_retry(),
        )
    if isinstance(exc, MoAInputError):
        return APIError(400, str(exc), code="invalid_request")
    if isinstance(exc, MoARunError):
        return APIError(
            502,
            f"the upstream models failed: {exc}",
            type_="upstream_error",
            code="upstream_failed",
            headers=_no_retry(),
        )
    if isinstance(exc, MoAError):
        return APIError(500, str(exc), type_="server_error", code="internal_error")
    _log(f"internal error: {type(exc).__name__}: {exc}")
    return _internal_error()


def _param_of(loc: Sequence[int | str]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _validation_error(errors: Sequence[Any]) -> APIError:
    parts, param = [], None
    for e in errors:
        loc = [p for p in e.get("loc", ()) if p != "body"]
        where = _param_of(loc)
        param = param or where or None
        msg = str(e.get("msg", "invalid value")).removeprefix("Value error, ")
        parts.append(f"{where}: {msg}" if where else msg)
    return APIError(400, "invalid request: " + "; ".join(parts), param=param, code="invalid_value")


# --- authentication ---------------------------------------------------------------------------


def load_keys(keys_file: str | Path | None = None, *, env_value: str | None = None) -> list[str]:
    """Bearer keys from a file (one per line; blank lines and lines starting with ``#`` are
    skipped) and from ``MOA_SERVE_KEYS`` (comma-separated; ``env_value`` replaces the
    environment's). A keys file that cannot be read or holds no key is an error: the operator
    asked for authentication."""
    keys: list[str] = []
    if keys_file is not None:
        path = Path(keys_file)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as e:
            raise MoAInputError(f"cannot read the keys file {str(path)!r}: {e.strerror}") from None
        except UnicodeDecodeError:
            raise MoAInputError(f"the keys file {str(path)!r} is not UTF-8 text") from None
        for number, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            if any(c.isspace() for c in line) or not line.isprintable():
                raise MoAInputError(
                    f"keys file {str(path)!r}, line {number}: a key is one word of printable "
                    "characters"
                )
            keys.append(line)
        if not keys:
            raise MoAInputError(f"the keys file {str(path)!r} holds no key")
    value = os.environ.get(KEYS_ENV, "") if env_value is None else env_value
    for item in value.split(","):
        item = item.strip()
        if not item:
            continue
        if any(c.isspace() for c in item) or not item.isprintable():
            raise MoAInputError(f"{KEYS_ENV}: a key is one word of printable characters")
        keys.append(item)
    return list(dict.fromkeys(keys))


class _KeyRing:
    """Checks a bearer token against the configured keys in constant time."""

    def __init__(self, keys: Iterable[str]) -> None:
        # Digests make every comparison the same length, whatever the keys' lengths.
        self._digests = [hashlib.sha256(k.encode("utf-8")).digest() for k in keys]

    def __bool__(self) -> bool:
        return bool(self._digests)

    def __len__(self) -> int:
        return len(self._digests)

    def accepts(self, token: str) -> bool:
        digest = hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()
        found = False
        for known in self._digests:  # no early exit: every key is compared
            found |= hmac.compare_digest(known, digest)
        return found


# --- where this server is, for the recursion guard --------------------------------------------

_LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"}
_IP: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address


def _ip_of(host: str) -> _IP | None:
    try:
        ip = ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _resolve(host: str) -> set[_IP]:
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return set()
    found = {_ip_of(str(info[4][0])) for info in infos}
    return {ip for ip in found if ip is not None}


def is_loopback_host(host: str) -> bool:
    """Whether listening on ``host`` keeps the server reachable from this machine only."""
    name = host.strip().lower()
    if name in _LOOPBACK_NAMES:
        return True
    ip = _ip_of(name)
    if ip is not None:
        return ip.is_loopback
    if not name:
        return False
    addresses = _resolve(name)
    return bool(addresses) and all(ip.is_loopback for ip in addresses)


class SelfAddress:
    """Tells whether a base URL leads back to this server (same port, and a host that reaches
    the address it listens on: localhost/127.x/::1/0.0.0.0 for a loopback or wildcard bind, plus
    the machine's own names and addresses for a wildcard bind)."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host.strip().lower().strip("[]")
        self.port = port
        ip = _ip_of(self.host)
        self.wildcard = self.host == "" or (ip is not None and ip.is_unspecified)
        self.loopback = not self.wildcard and is_loopback_host(self.host)
        self.names: set[str] = {self.host}
        self.ips: set[_IP] = {ip} if ip is not None else _resolve(self.host)
        if self.wildcard:
            for name in (socket.gethostname(), socket.getfqdn()):
                if name:
                    self.names.add(name.lower())
                    self.ips |= _resolve(name)

    def _reaches_loopback(self, name: str, ip: _IP | None) -> bool:
        if name in _LOOPBACK_NAMES or name.endswith(".localhost"):
            return True
        return ip is not None and (ip.is_loopback or ip.is_unspecified)

    def matches(self, url: str) -> bool:
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            return False
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return False
        if (port or (443 if parts.scheme == "https" else 80)) != self.port:
            return False
        name = parts.hostname.lower()
        ip = _ip_of(name)
        if name in self.names or (ip is not None and ip in self.ips):
            return True
        if self.wildcard or self.loopback:
            return self._reaches_loopback(name, ip) or (ip is not None and ip in self.ips)
        return ip is not None and ip.is_unspecified


def _base_url(provider: str) -> str | None:
    spec = PROVIDERS[provider]
    if not spec.openai_compatible:
        return None
    url = spec.resolve_base_url()
    if url is None and provider == "openai":
        url = OPENAI_DEFAULT_BASE_URL
    return url


def _refusal(topology: Topology, here: SelfAddress) -> str | None:
    """Why this server will not run the topology, or None."""
    for agent in topology.agents():
        url = _base_url(agent.provider)
        if url and here.matches(url):
            return (
                f"its agent {agent.name or agent.model!r} ({agent.model}) points back at this "
                f"server ({url}), which would make it call itself without end"
            )
    if topology.review != "none":
        return "it pauses for a human review, which an HTTP completion cannot wait for"
    return None


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
        files[path.stem] = path
    for model_id, path in files.items():
        catalog[model_id] = _Served(model_id, load_topology(path), str(path))
    return catalog


# --- the request ------------------------------------------------------------------------------

_TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class _Strict(BaseModel):
    # Unknown OpenAI fields (user, seed, logprobs...) are accepted and ignored.
    model_config = ConfigDict(extra="allow", strict=True)


class _FunctionCall(_Strict):
    name: str = Field(min_length=1)
    arguments: str

    @field_validator("arguments")
    @classmethod
    def _json_object(cls, value: str) -> str:
        try:
            parsed = json.loads(value) if value.strip() else {}
        except json.JSONDecodeError:
            raise ValueError("must be a JSON object encoded as a string") from None
        if not isinstance(parsed, dict):
            raise ValueError("must be a JSON object encoded as a string")
        return value


class _ToolCall(_Strict):
    id: str = Field(min_length=1)
    type: Literal["function"] = "function"
    function: _FunctionCall


def _check_content(value: Any, *, role: str) -> Any:
    if value is None or isinstance(value, str):
        return value
    if not isinstance(value, list):
        raise ValueError("content must be a string or a list of content parts")
    for k, part in enumerate(value):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            if not isinstance(part.get("text"), str):
                raise ValueError(f"content part {k}: a text part needs a string 'text'")
        elif kind == "image_url" and role == "user":
            image = part.get("image_url")
            if not isinstance(image, dict) or not isinstance(image.get("url"), str):
                raise ValueError(f"content part {k}: an image_url part needs image_url.url")
        else:
            raise ValueError(f"content part {k}: type {kind!r} is not supported in {role} messages")
    return value


class _Message(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Any = None
    name: str | None = None
    tool_calls: list[_ToolCall] | None = None
    tool_call_id: str | None = None

    @model_validator(mode="after")
    def _fits_role(self) -> _Message:
        _check_content(self.content, role=self.role)
        if self.role == "assistant":
            if self.content is None and not self.tool_calls:
                raise ValueError("an assistant message needs content or tool_calls")
        elif self.content is None:
            raise ValueError(f"a {self.role} message needs content")
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a tool message needs tool_call_id")
        if self.tool_calls and self.role != "assistant":
            raise ValueError("only assistant messages carry tool_calls")
        return self


class _FunctionDef(_Strict):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _TOOL_NAME.match(value):
            raise ValueError("a function name is 1-64 letters, digits, '_' or '-'")
        return value


class _ToolDef(_Strict):
    type: Literal["function"]
    function: _FunctionDef


class _StreamOptions(_Strict):
    include_usage: bool = False


class _ChatRequest(_Strict):
    model: str = Field(min_length=1)
    messages: list[_Message] = Field(min_length=1)
    stream: bool = False
    stream_options: _StreamOptions | None = None
    tools: list[_ToolDef] | None = None
    tool_choice: Any = None
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    max_tokens: int | None = Field(default=None, gt=0)
    max_completion_tokens: int | None = Field(default=None, gt=0)
    n: int | None = None


def _check_request(req: _ChatRequest) -> None:
    """Checks across fields, with OpenAI's wording where it has one."""
    if req.n not in (None, 1):
        raise APIError(400, "only n=1 is supported", param="n", code="invalid_value")
    if req.stream_options is not None and not req.stream:
        raise APIError(
            400,
            "stream_options is only allowed when stream is true",
            param="stream_options",
            code="invalid_value",
        )
    names = [t.function.name for t in req.tools or []]
    if len(set(names)) != len(names):
        raise APIError(400, "tool names must be unique", param="tools", code="invalid_value")
    choice = req.tool_choice
    if choice is None:
        return
    if not req.tools:
        raise APIError(
            400,
            "tool_choice is only allowed when tools are given",
            param="tool_choice",
            code="invalid_value",
        )
    if choice in ("none", "auto", "required"):
        return
    named = choice.get("function") if isinstance(choice, dict) else None
    if not (
        isinstance(choice, dict)
        and choice.get("type") == "function"
        and isinstance(named, dict)
        and isinstance(named.get("name"), str)
    ):
        raise APIError(
            400,
            "tool_choice must be 'none', 'auto', 'required' or "
            '{"type": "function", "function": {"name": ...}}',
            param="tool_choice",
            code="invalid_value",
        )
    if named["name"] not in names:
        raise APIError(
            400,
            f"tool_choice names {named['name']!r}, which is not among the tools",
            param="tool_choice",
            code="invalid_value",
        )


def _parse_request(raw: bytes) -> _ChatRequest:
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise APIError(400, "the request body is not valid JSON", code="invalid_json") from None
    if not isinstance(data, dict):
        raise APIError(400, "the request body must be a JSON object", code="invalid_json")
    try:
        req = _ChatRequest.model_validate(data)
    except ValidationError as err:
        raise _validation_error(err.errors()) from None
    _check_request(req)
    return req


def _joined_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(p["text"] for p in content if p.get("type") == "text")


def _plain_or_parts(content: Any) -> Any:
    """Text parts only -> one string; parts with images stay a list."""
    if isinstance(content, list) and all(p.get("type") == "text" for p in content):
        return "\n".join(p["text"] for p in content)
    return content if content is not None else ""


def _conversation(messages: Sequence[_Message]) -> list[BaseMessage]:
    """OpenAI messages -> LangChain messages, checking the conversation can be answered."""
    out: list[BaseMessage] = []
    calls: dict[str, str] = {}  # tool_call_id -> function name, from earlier assistant turns
    for k, m in enumerate(messages):
        content = _plain_or_parts(m.content)
        extra: dict[str, Any] = {"name": m.name} if m.name else {}
        if m.role in ("system", "developer"):
            out.append(SystemMessage(content, **extra))
        elif m.role == "user":
            out.append(HumanMessage(content, **extra))
        elif m.role == "assistant":
            tool_calls = []
            for call in m.tool_calls or []:
                args = call.function.arguments
                tool_calls.append(
                    {
                        "name": call.function.name,
                        "args": json.loads(args) if args.strip() else {},
                        "id": call.id,
                        "type": "tool_call",
                    }
                )
                calls[call.id] = call.function.name
            out.append(AIMessage(content, tool_calls=tool_calls, **extra))
        else:
            call_id = m.tool_call_id or ""
            if call_id not in calls:
                raise APIError(
                    400,
                    f"messages[{k}]: a tool message must answer a tool call of an earlier "
                    f"assistant message (no call has id {call_id!r})",
                    param=f"messages[{k}].tool_call_id",
                    code="invalid_value",
                )
            out.append(ToolMessage(content, tool_call_id=call_id, name=calls[call_id]))
    last = messages[-1]
    if last.role not in ("user", "tool"):
        raise APIError(
            400,
            "the conversation must end with a user message (or tool results)",
            param="messages",
            code="invalid_value",
        )
    if last.role == "user":
        has_image = isinstance(last.content, list) and any(
            p.get("type") == "image_url" for p in last.content
        )
        if not _joined_text(last.content).strip() and not has_image:
            raise APIError(
                400,
                "the last user message is empty",
                param=f"messages[{len(messages) - 1}].content",
                code="invalid_value",
            )
    return out


def _graph_inputs(req: _ChatRequest) -> dict[str, Any]:
    inputs: dict[str, Any] = {"messages": _conversation(req.messages)}
    if req.tools:
        inputs["tools"] = [t.model_dump(exclude_none=True) for t in req.tools]
        if req.tool_choice is not None:
            inputs["tool_choice"] = req.tool_choice
    options: dict[str, Any] = {}
    if req.temperature is not None:
        options["temperature"] = req.temperature
    limit = req.max_completion_tokens or req.max_tokens
    if limit is not None:
        options["max_tokens"] = limit
    if options:
        inputs["aggregator_options"] = options
    return inputs


# --- the response -----------------------------------------------------------------------------


def _text(message: BaseMessage) -> str:
    text = message.text
    return text if isinstance(text, str) else str(message.content)


def _openai_tool_calls(message: AIMessage) -> list[dict[str, Any]]:
    return [
        {
            "id": call.get("id") or f"call_{uuid.uuid4().hex[:24]}",
            "type": "function",
            "function": {
                "name": call["name"],
                "arguments": json.dumps(call["args"], ensure_ascii=False),
            },
        }
        for call in message.tool_calls
    ]


def _answer(state: dict[str, Any]) -> AIMessage:
    messages = state.get("messages") or []
    if not messages or not isinstance(messages[-1], AIMessage):
        raise MoAError("the run ended without an answer")
    return messages[-1]


def _finish_reason(answer: AIMessage) -> str:
    if answer.tool_calls:
        return "tool_calls"
    if (answer.response_metadata or {}).get("finish_reason") == "length":
        return "length"
    return "stop"


def _usage(result: dict[str, Any]) -> dict[str, int]:
    usage = result["usage"]
    return {
        "prompt_tokens": usage["prompt_tokens"],
        "completion_tokens": usage["completion_tokens"],
        "total_tokens": usage["total_tokens"],
    }


def _moa_record(result: dict[str, Any], served: _Served) -> dict[str, Any]:
    usage = result["usage"]
    return {
        "topology": served.topology.name,
        "layers": result["layers"],
        "critique": result["critique"],
        "cost_usd": usage.get("cost_usd"),
        "unpriced": usage.get("unpriced", []),
        "by_model": usage.get("by_model", {}),
        "degraded": result["degraded"],
        "ledger": result["ledger"],
        "fallback": result["fallback"],
        "latency_s": result["latency_s"],
    }


def _sse(data: Any) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


class _SlotResponse(StreamingResponse):
    """A streaming response that frees its concurrency slot however the stream ends
    (finished, failed, or the client went away before it even started)."""

    def __init__(self, content: AsyncIterator[str], release: Any, **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self._release = release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._release()


class _ClientGone(Exception):
    pass


async def _unless_client_leaves(work: Awaitable[_T], receive: Receive) -> _T:
    """Await ``work``, cancelling it if the client disconnects first (the body is read)."""
    task = asyncio.ensure_future(work)

    async def watch() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(watch())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            return task.result()
        raise _ClientGone
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


class _Service:
    """Per-app state: the catalog, one compiled graph per model id, the concurrency count."""

    def __init__(
        self,
        catalog: dict[str, _Served],
        *,
        max_concurrency: int,
        cache: Any,
    ) -> None:
        self.catalog = catalog
        self.max_concurrency = max_concurrency
        self.cache = cache
        self.active = 0
        self.graphs: dict[str, Any] = {}
        self.created = int(time.time())

    def lookup(self, model_id: str) -> _Served:
        served = self.catalog.get(model_id)
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

    def graph_for(self, served: _Served) -> Any:
        graph = self.graphs.get(served.id)
        if graph is None:  # built once; a compiled graph holds no per-request state
            graph = self.graphs[served.id] = build_graph(served.topology, cache=self.cache)
        return graph

    def take_slot(self) -> Any:
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

    def models(self) -> dict[str, Any]:
        data = [
            {"id": s.id, "object": "model", "created": self.created, "owned_by": "langgraph-moa"}
            for s in self.catalog.values()
            if s.refusal is None
        ]
        return {"object": "list", "data": data}

    # -- one chat completion ----------------------------------------------------------------
    async def complete(self, request: Request) -> Response:
        req = _parse_request(await request.body())
        served = self.lookup(req.model)
        inputs = _graph_inputs(req)
        try:
            check_credentials(served.topology)
        except MissingCredentialsError as e:
            raise _error_of_run(e) from None
        graph = self.graph_for(served)
        release = self.take_slot()
        ident = f"chatcmpl-moa-{uuid.uuid4().hex[:24]}"
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            events = self._stream(graph, inputs, served, ident, include_usage)
            return _SlotResponse(
                events,
                release,
                media_type="text/event-stream",
                headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
            )
        try:
            start = time.perf_counter()
            try:
                state = await _unless_client_leaves(graph.ainvoke(inputs), request.receive)
            except _ClientGone:
                return Response(status_code=499)
            except Exception as e:
                raise _error_of_run(e) from None
            latency = time.perf_counter() - start
        finally:
            release()
        try:
            answer = _answer(state)
        except MoAError as e:
            raise _error_of_run(e) from None
        result = result_of(state, latency_s=latency)
        message: dict[str, Any] = {
            "role": "assistant",
            "content": _text(answer) if (_text(answer) or not answer.tool_calls) else None,
            "refusal": None,
        }
        if answer.tool_calls:
            message["tool_calls"] = _openai_tool_calls(answer)
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
                    "finish_reason": _finish_reason(answer),
                }
            ],
            "usage": _usage(result),
            "moa": _moa_record(result, served),
        }
        return JSONResponse(body)

    async def _stream(
        self,
        graph: Any,
        inputs: dict[str, Any],
        served: _Served,
        ident: str,
        include_usage: bool,
    ) -> AsyncIterator[str]:
        created = int(time.time())

        def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
            return _sse(
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
            async for mode, payload in graph.astream(
                inputs, stream_mode=["messages", "custom", "values"]
            ):
                if mode == "values":
                    state = payload
                elif mode == "custom":
                    # A comment line: SSE parsers (the openai client's too) skip it.
                    yield f": moa {json.dumps(payload, ensure_ascii=False, default=str)}\n\n"
                elif mode == "messages":
                    message, meta = payload
                    if meta.get("langgraph_node") not in (AGGREGATOR, FALLBACK):
                        continue
                    if not isinstance(message, AIMessageChunk):
                        continue  # a whole message written to the state: sent at the end
                    delta: dict[str, Any] = {}
                    if text := _text(message):
                        delta["content"] = text
                        sent.append(text)
                    if message.tool_call_chunks:
                        delta["tool_calls"] = [
                            _tool_call_delta(c) for c in message.tool_call_chunks
                        ]
                        sent_tool_calls = True
                    if delta:
                        yield chunk(delta)
            answer = _answer(state)
        except Exception as e:
            yield _sse(_error_of_run(e).body())
            yield "data: [DONE]\n\n"
            return
        final, streamed = _text(answer), "".join(sent)
        if final != streamed and final.startswith(streamed):
            # e.g. the fallback answered with a proposal, which is not streamed token by token
            yield chunk({"content": final[len(streamed) :]})
        if answer.tool_calls and not sent_tool_calls:
            calls = _openai_tool_calls(answer)
            yield chunk({"tool_calls": [{"index": k, **c} for k, c in enumerate(calls)]})
        result = result_of(state, latency_s=time.perf_counter() - start)  # type: ignore[arg-type]
        yield chunk({}, _finish_reason(answer), moa=_moa_record(result, served))
        if include_usage:
            yield _sse(
                {
                    "id": ident,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": served.id,
                    "choices": [],
                    "usage": _usage(result),
                }
            )
        yield "data: [DONE]\n\n"


def _tool_call_delta(chunk: Any) -> dict[str, Any]:
    function: dict[str, Any] = {"arguments": chunk.get("args") or ""}
    if chunk.get("name"):
        function["name"] = chunk["name"]
    delta: dict[str, Any] = {"index": chunk.get("index") or 0, "function": function}
    if chunk.get("id"):
        delta["id"] = chunk["id"]
        delta["type"] = "function"
    return delta


# --- the outer guard: authentication, body size, last-resort errors --------------------------


class _TooLarge(Exception):
    pass


class _Guard:
    """Pure ASGI middleware in front of every route: checks the bearer key, enforces the body
    limit on both the declared Content-Length and the bytes really received, and turns any
    escaped exception into a 500 without a traceback."""

    def __init__(self, app: ASGIApp, *, keys: _KeyRing, max_body_bytes: int) -> None:
        self.app = app
        self.keys = keys
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        refusal = self._check(headers)
        if refusal is not None:
            await refusal.response()(scope, receive, send)
            return
        started = False
        received = 0
        limit = self.max_body_bytes

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _TooLarge
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
                await _too_large(limit).response()(scope, receive, send)
        except Exception as e:
            _log(f"internal error: {type(e).__name__}: {e}")
            if not started:
                await _internal_error().response()(scope, receive, send)

    def _check(self, headers: dict[str, str]) -> APIError | None:
        if self.keys:
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
                return _too_large(self.max_body_bytes)
        return None


def _too_large(limit: int) -> APIError:
    return APIError(
        413,
        f"the request body is too large: the limit is {limit} bytes",
        code="request_too_large",
    )


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
) -> FastAPI:
    """The OpenAI-compatible app. ``host``/``port`` are where it is served, so that topologies
    calling back into it can be refused; ``keys`` empty means no authentication; ``cache`` is
    passed to :func:`build_graph` (off by default: a long-running server would otherwise keep
    every cacheable proposal in memory). Raises MoAInputError for a bad topologies folder or
    file."""
    if max_concurrency < 1:
        raise MoAInputError(f"max concurrency must be at least 1, got {max_concurrency}")
    if max_body_bytes < 1:
        raise MoAInputError(f"the body limit must be at least 1 byte, got {max_body_bytes}")
    catalog = _load_catalog(topologies_dir)
    here = SelfAddress(host, port)
    for served in catalog.values():
        served.refusal = _refusal(served.topology, here)
    service = _Service(catalog, max_concurrency=max_concurrency, cache=cache)

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
        return _validation_error(exc.errors()).response()

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

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return service.models()

    @app.get("/v1/models/{model_id}")
    async def model(model_id: str) -> dict[str, Any]:
        served = service.lookup(model_id)
        return {
            "id": served.id,
            "object": "model",
            "created": service.created,
            "owned_by": "langgraph-moa",
        }

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await service.complete(request)

    app.add_middleware(_Guard, keys=_KeyRing(keys), max_body_bytes=max_body_bytes)
    return app


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
) -> None:
    """Serve until interrupted. Keys come from ``keys_file`` and ``MOA_SERVE_KEYS``; without any,
    only a loopback ``host`` is accepted. Raises MoAInputError (one line) for a bad keys file,
    topologies folder or file, a non-loopback host without keys, or an address that cannot be
    listened on."""
    import uvicorn

    if not 0 <= port <= 65535:
        raise MoAInputError(f"the port must be between 0 and 65535, got {port}")
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
        )
    except BaseException:
        sock.close()
        raise
    service: _Service = app.state.moa
    for served in service.catalog.values():
        if served.refusal is not None:
            _log(f"not serving {served.id!r}: {served.refusal}")
    served_count = sum(1 for s in service.catalog.values() if s.refusal is None)
    shown = f"[{host}]" if ":" in host else host
    auth = f"bearer keys ({len(keys)})" if keys else "no authentication"
    _log(
        f"listening on http://{shown}:{bound_port}/v1, {served_count} models, {auth}, "
        f"up to {max_concurrency} concurrent requests"
    )
    config = uvicorn.Config(
        app,
        log_level=log_level,
        access_log=access_log,
        lifespan="off",
        timeout_graceful_shutdown=5,
    )
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
