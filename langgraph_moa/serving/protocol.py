"""The OpenAI chat-completions wire format, all of it: checking a request, turning its messages
into LangChain ones, and shaping every reply body (the whole completion, the stream's chunks,
progress comments and ``[DONE]``, usage, the extra ``moa`` record).

Why one module past 500 lines: the request half is OpenAI's schema written out (pydantic models
and the cross-field checks, with OpenAI's wording) and the reply half mirrors it; they change
together when the API does, and the routes (routes.py) render run events through this module
only, so no other module writes a byte of the format."""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Sequence
from typing import Any, Literal

from langchain_core.messages import (
    AIMessage,
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

from langgraph_moa.errors import MoAError
from langgraph_moa.llm.text import text_of
from langgraph_moa.serving.errors import APIError, validation_error
from langgraph_moa.spec.topology import Topology

# --- the request ------------------------------------------------------------------------------

_TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# Messages per request, and content parts plus tool calls per request (each is converted, then
# serialized again for every upstream call: a long conversation costs CPU time in proportion).
DEFAULT_MAX_MESSAGES = 2000
MAX_TOOLS = 128  # OpenAI's own limit on tools per request


class Strict(BaseModel):
    # Inside messages and tools, fields this server does not read (an echoed assistant message's
    # ``refusal`` or ``annotations``...) are accepted; the request's own fields are checked
    # against FIELDS below.
    model_config = ConfigDict(extra="allow", strict=True)


class _FunctionCall(Strict):
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


class _ToolCall(Strict):
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


class _Message(Strict):
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


class _FunctionDef(Strict):
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


class _ToolDef(Strict):
    type: Literal["function"]
    function: _FunctionDef


class _StreamOptions(Strict):
    include_usage: bool = False


class _JsonSchema(Strict):
    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class _ResponseFormat(Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: _JsonSchema | None = None

    @model_validator(mode="after")
    def _schema_when_needed(self) -> _ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("a json_schema response format needs json_schema")
        return self


# Where each request field goes (README, "Request fields"): the final answer's writer (the
# aggregator, or the fallback model) takes the output-shaping and sampling fields; ``seed``
# reaches every call of the run; ``user`` and ``metadata`` stay on this server.
AGGREGATOR_FIELDS = (
    "temperature",
    "top_p",
    "max_tokens",
    "max_completion_tokens",
    "stop",
    "presence_penalty",
    "frequency_penalty",
    "response_format",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
)
ALL_CALLS_FIELDS = ("seed",)
SERVER_FIELDS = ("model", "messages", "stream", "stream_options", "n", "user", "metadata")
FIELDS = frozenset(AGGREGATOR_FIELDS + ALL_CALLS_FIELDS + SERVER_FIELDS + ("logprobs", "store"))
# Fields known to OpenAI that a mixture cannot honour, with the reason the 400 gives.
_REFUSED = {
    "logprobs": "a mixture's answer is a synthesis of several models' outputs: there are no "
    "token log probabilities to report",
    "top_logprobs": "a mixture's answer has no token log probabilities",
    "logit_bias": "token ids differ between the models of a mixture",
    "store": "this server does not store completions",
    "functions": "the legacy functions field is not supported: use tools",
    "function_call": "the legacy function_call field is not supported: use tool_choice",
}


class _ChatRequest(Strict):
    model: str = Field(min_length=1)
    messages: list[_Message] = Field(min_length=1)
    stream: bool = False
    stream_options: _StreamOptions | None = None
    tools: list[_ToolDef] | None = None
    tool_choice: Any = None
    parallel_tool_calls: bool | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, ge=0.0, le=1.0)
    max_tokens: int | None = Field(default=None, gt=0)
    max_completion_tokens: int | None = Field(default=None, gt=0)
    n: int | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    response_format: _ResponseFormat | None = None
    user: str | None = Field(default=None, max_length=256)
    metadata: dict[str, str] | None = None
    logprobs: bool | None = None
    store: bool | None = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        stops = _stop_list(value)
        if len(stops) > 4:
            raise ValueError("at most 4 stop sequences")
        if any(not s for s in stops):
            raise ValueError("a stop sequence cannot be empty")
        return value

    @property
    def stops(self) -> list[str] | None:
        return None if self.stop is None else _stop_list(self.stop)


def _stop_list(value: str | list[str] | None) -> list[str]:
    """``stop`` as a list: one string is one stop sequence."""
    return [value] if isinstance(value, str) else list(value or [])


def _check_fields(data: dict[str, Any]) -> None:
    """A 400 naming the first request field this server would otherwise have to ignore."""
    for name, value in data.items():
        if name in FIELDS and name not in _REFUSED:
            continue
        if name in ("logprobs", "store") and value in (None, False):
            continue  # asking for nothing is honoured
        unknown = "this server does not know it, and will not ignore it silently"
        reason = _REFUSED.get(name, unknown)
        raise APIError(
            400,
            f"unsupported parameter {name!r}: {reason}",
            param=name,
            code="unsupported_parameter",
        )


def _invalid(param: str, message: str) -> APIError:
    """A 400 for the value of ``param``."""
    return APIError(400, message, param=param, code="invalid_value")


def _check_request(req: _ChatRequest) -> None:
    """Checks across fields, with OpenAI's wording where it has one."""
    if req.n not in (None, 1):
        raise _invalid("n", "only n=1 is supported")
    if req.parallel_tool_calls is not None and not req.tools:
        raise _invalid(
            "parallel_tool_calls", "parallel_tool_calls is only allowed when tools are given"
        )
    if req.stream_options is not None and not req.stream:
        raise _invalid("stream_options", "stream_options is only allowed when stream is true")
    names = [t.function.name for t in req.tools or []]
    if len(set(names)) != len(names):
        raise _invalid("tools", "tool names must be unique")
    choice = req.tool_choice
    if choice is None:
        return
    if not req.tools:
        raise _invalid("tool_choice", "tool_choice is only allowed when tools are given")
    if choice in ("none", "auto", "required"):
        return
    named = choice.get("function") if isinstance(choice, dict) else None
    if not (
        isinstance(choice, dict)
        and choice.get("type") == "function"
        and isinstance(named, dict)
        and isinstance(named.get("name"), str)
    ):
        raise _invalid(
            "tool_choice",
            "tool_choice must be 'none', 'auto', 'required' or "
            '{"type": "function", "function": {"name": ...}}',
        )
    if named["name"] not in names:
        raise _invalid(
            "tool_choice", f"tool_choice names {named['name']!r}, which is not among the tools"
        )


def _not_json(reason: str) -> APIError:
    return APIError(400, f"the request body is not valid JSON: {reason}", code="invalid_json")


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def _load_json(raw: bytes) -> Any:
    """The body's JSON, or a 400 for anything the standard library would choke on later: bad
    syntax or encoding, NaN/Infinity, a number over Python's digit limit, nesting past the
    recursion limit, a lone surrogate escape (``"\\ud800"``: no valid text to send upstream)."""
    try:
        data = json.loads(raw, parse_constant=_no_constant)
    except json.JSONDecodeError as e:
        raise _not_json(f"{e.msg} at line {e.lineno}, column {e.colno}") from None
    except UnicodeDecodeError:
        raise _not_json("it is not UTF-8 text") from None
    except RecursionError:
        raise _not_json("it is nested too deeply") from None
    except ValueError as e:  # NaN/Infinity, or an integer over sys.get_int_max_str_digits()
        reason = str(e) if "JSON value" in str(e) else "a number has too many digits"
        raise _not_json(reason) from None
    try:
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise _not_json(
            "a string holds a lone UTF-16 surrogate (\\ud800-\\udfff), which is not Unicode text"
        ) from None
    except RecursionError:
        raise _not_json("it is nested too deeply") from None
    return data


def _check_sizes(data: dict[str, Any], max_messages: int) -> None:
    """Bound the work one request can ask for before validating it item by item: every message
    and content part is converted, then serialized once per upstream call."""
    messages = data.get("messages")
    if not isinstance(messages, list):
        return
    if len(messages) > max_messages:
        raise APIError(
            400,
            f"too many messages: {len(messages)}; this server takes at most {max_messages} "
            "per request",
            param="messages",
            code="array_above_max_length",
        )
    items = 0
    for m in messages:
        if isinstance(m, dict):
            for key in ("content", "tool_calls"):
                if isinstance(m.get(key), list):
                    items += len(m[key])
    if items > max_messages:
        raise APIError(
            400,
            f"too many content parts and tool calls: {items} in all; this server takes at most "
            f"{max_messages} per request",
            param="messages",
            code="array_above_max_length",
        )
    tools = data.get("tools")
    if isinstance(tools, list) and len(tools) > MAX_TOOLS:
        raise APIError(
            400,
            f"too many tools: {len(tools)}; at most {MAX_TOOLS} are supported",
            param="tools",
            code="array_above_max_length",
        )


def load_body(raw: bytes) -> dict[str, Any]:
    """The request body as a JSON object, or a 400."""
    data = _load_json(raw)
    if not isinstance(data, dict):
        raise APIError(400, "the request body must be a JSON object", code="invalid_json")
    return data


def requested_model(data: dict[str, Any]) -> str | None:
    """The body's ``model``, read before anything else (it decides how the rest of the
    request is read); None if it is not a model id (the full check then says why)."""
    model = data.get("model")
    return model if isinstance(model, str) and model else None


def parse_request(
    raw: bytes | dict[str, Any], *, max_messages: int = DEFAULT_MAX_MESSAGES
) -> _ChatRequest:
    data = load_body(raw) if isinstance(raw, bytes) else raw
    _check_sizes(data, max_messages)
    _check_fields(data)
    try:
        req = _ChatRequest.model_validate(data)
    except ValidationError as err:
        raise validation_error(err.errors()) from None
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
                raise _invalid(
                    f"messages[{k}].tool_call_id",
                    f"messages[{k}]: a tool message must answer a tool call of an earlier "
                    f"assistant message (no call has id {call_id!r})",
                )
            out.append(ToolMessage(content, tool_call_id=call_id, name=calls[call_id]))
    last = messages[-1]
    if last.role not in ("user", "tool"):
        raise _invalid(
            "messages", "the conversation must end with a user message (or tool results)"
        )
    if last.role == "user":
        has_image = isinstance(last.content, list) and any(
            p.get("type") == "image_url" for p in last.content
        )
        if not _joined_text(last.content).strip() and not has_image:
            raise _invalid(
                f"messages[{len(messages) - 1}].content", "the last user message is empty"
            )
    return out


def graph_inputs(req: _ChatRequest) -> dict[str, Any]:
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
    for name in ("top_p", "presence_penalty", "frequency_penalty", "parallel_tool_calls"):
        if (value := getattr(req, name)) is not None:
            options[name] = value
    if req.stops:
        options["stop"] = req.stops
    if req.response_format is not None and req.response_format.type != "text":
        options["response_format"] = req.response_format.model_dump(
            by_alias=True, exclude_none=True
        )
    if options:
        inputs["aggregator_options"] = options
    return inputs


# --- the response -----------------------------------------------------------------------------


def openai_tool_calls(message: AIMessage) -> list[dict[str, Any]]:
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


def answer_text(state: dict[str, Any]) -> AIMessage:
    messages = state.get("messages") or []
    if not messages or not isinstance(messages[-1], AIMessage):
        raise MoAError("the run ended without an answer")
    return messages[-1]


def finish_reason_of(answer: AIMessage) -> str:
    if answer.tool_calls:
        return "tool_calls"
    if (answer.response_metadata or {}).get("finish_reason") == "length":
        return "length"
    return "stop"


def openai_usage(result: dict[str, Any]) -> dict[str, int]:
    usage = result["usage"]
    return {
        "prompt_tokens": usage["prompt_tokens"],
        "completion_tokens": usage["completion_tokens"],
        "total_tokens": usage["total_tokens"],
    }


def moa_record(result: dict[str, Any], topology: Topology) -> dict[str, Any]:
    usage = result["usage"]
    return {
        "topology": topology.name,
        "layers": result["layers"],
        "critique": result["critique"],
        "cost_usd": usage.get("cost_usd"),
        "unpriced": usage.get("unpriced", []),
        "by_model": usage.get("by_model", {}),
        "degraded": result["degraded"],
        "ledger": result["ledger"],
        "fallback": result["fallback"],
        "aggregation": result.get("aggregation"),
        "early_stop": result.get("early_stop") or [],
        "joins": result.get("joins") or [],
        "latency_s": result["latency_s"],
    }


def sse_event(data: Any) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


def tool_call_delta(chunk: Any) -> dict[str, Any]:
    function: dict[str, Any] = {"arguments": chunk.get("args") or ""}
    if chunk.get("name"):
        function["name"] = chunk["name"]
    delta: dict[str, Any] = {"index": chunk.get("index") or 0, "function": function}
    if chunk.get("id"):
        delta["id"] = chunk["id"]
        delta["type"] = "function"
    return delta


# --- the reply bodies -------------------------------------------------------------------------

DONE = "data: [DONE]\n\n"


def completion_id() -> str:
    return f"chatcmpl-moa-{uuid.uuid4().hex[:24]}"


def progress_comment(payload: Any) -> str:
    """A run's progress as an SSE comment line: SSE parsers (the openai client's too) skip it."""
    return f": moa {json.dumps(payload, ensure_ascii=False, default=str)}\n\n"


def assistant_message(answer: AIMessage) -> dict[str, Any]:
    text = text_of(answer)
    message: dict[str, Any] = {
        "role": "assistant",
        "content": text if (text or not answer.tool_calls) else None,
        "refusal": None,
    }
    if answer.tool_calls:
        message["tool_calls"] = openai_tool_calls(answer)
    return message


def completion_body(
    ident: str, model_id: str, answer: AIMessage, result: dict[str, Any], topology: Topology
) -> dict[str, Any]:
    """The body of a whole (not streamed) completion."""
    return {
        "id": ident,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model_id,
        "choices": [
            {
                "index": 0,
                "message": assistant_message(answer),
                "logprobs": None,
                "finish_reason": finish_reason_of(answer),
            }
        ],
        "usage": openai_usage(result),
        "moa": moa_record(result, topology),
    }


def token_delta(text: str, tool_call_chunks: Sequence[Any]) -> dict[str, Any]:
    """The delta of a streamed answer token (empty if the token carries nothing to send)."""
    delta: dict[str, Any] = {}
    if text:
        delta["content"] = text
    if tool_call_chunks:
        delta["tool_calls"] = [tool_call_delta(c) for c in tool_call_chunks]
    return delta


class Chunks:
    """The SSE events of one streamed completion: one id, one creation time, one model id."""

    def __init__(self, ident: str, model_id: str) -> None:
        self.ident = ident
        self.model_id = model_id
        self.created = int(time.time())

    def _body(self, choices: list[dict[str, Any]], **extra: Any) -> str:
        return sse_event(
            {
                "id": self.ident,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model_id,
                "choices": choices,
                **extra,
            }
        )

    def chunk(self, delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return self._body([choice], **extra)

    def first(self) -> str:
        return self.chunk({"role": "assistant", "content": ""})

    def rest(self, answer: AIMessage, streamed: str, sent_tool_calls: bool) -> list[str]:
        """What the tokens did not carry of the final ``answer``: text the stream did not
        reach (e.g. the fallback answered with a proposal, which is not streamed token by
        token) and tool calls not streamed."""
        out = []
        final = text_of(answer)
        if final != streamed and final.startswith(streamed):
            out.append(self.chunk({"content": final[len(streamed) :]}))
        if answer.tool_calls and not sent_tool_calls:
            calls = openai_tool_calls(answer)
            out.append(self.chunk({"tool_calls": [{"index": k, **c} for k, c in enumerate(calls)]}))
        return out

    def last(self, answer: AIMessage, result: dict[str, Any], topology: Topology) -> str:
        """The closing chunk: the finish reason and the ``moa`` record."""
        return self.chunk({}, finish_reason_of(answer), moa=moa_record(result, topology))

    def usage(self, result: dict[str, Any]) -> str:
        """The usage chunk ``stream_options.include_usage`` asks for."""
        return self._body([], usage=openai_usage(result))
