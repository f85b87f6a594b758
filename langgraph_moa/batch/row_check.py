"""One dataset row for relabeling, checked: a :class:`Row`, or an :class:`InvalidRow` saying
why not. Reading rows from files is :mod:`langgraph_moa.batch.rows`.

A row is one example in OpenAI chat format: ``messages`` (system, developer, user, assistant and
tool messages, assistant tool calls), optional ``tools`` and ``tool_choice``, an optional ``id``
(else a stable hash of the row's content), optional ``metadata``; ``messages``, ``tools`` and
``response_format`` may be JSON text (Parquet files often keep nested fields so). The request
fields that shape the answer, under OpenAI's names (``response_format``,
``parallel_tool_calls``, ``temperature``, ``top_p``, ``max_tokens`` or
``max_completion_tokens``, ``seed``, ``stop``, ``presence_penalty``, ``frequency_penalty``, as
``moa serve --capture`` keeps them), are checked and go to the aggregator, which writes the
answer with them (:meth:`Row.inputs`). Any other field (a capture's ``model``, ``usage``,
``timestamp``...) is kept as it is. The *original completion* is a ``completion``
field (text or an assistant message) or, without one, a last message from the
assistant: the prompt is what precedes it.

A row that fails its checks (no messages, a prompt that does not end with a user message or
tool results...) is an :class:`InvalidRow` with a one-line reason, and so is a string holding a
lone surrogate (``"\\ud800"``: not Unicode, so it could be stored nowhere), anything unexpected
while checking one row, and a row whose message content was hashed at capture
(``sha256:<hex>``, capture's ``hash`` setting, in the content or any part of it): there is no
text left to relabel. :func:`decode_line` decodes JSON text (a JSONL line, or a field held as
JSON text) with a one-line reason for what it refuses: not UTF-8, not JSON, nested too deeply, a
number Python will not convert (an integer of more than 4,300 digits, a float out of range, NaN).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from langchain_core.messages import AIMessage, BaseMessage, convert_to_messages
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from langgraph_moa.spec.files import describe_validation_error

_ROLES = ("system", "developer", "user", "assistant", "tool")
_KNOWN = {"id", "messages", "tools", "tool_choice", "completion", "metadata"}
# A value replaced by capture's ``hash`` setting (serving/capture.py, ``_digest``).
_HASHED = re.compile(r"sha256:[0-9a-f]{64}")


class _Message(BaseModel):
    """One OpenAI chat message, checked loosely: what the OpenAI API would refuse, refused."""

    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[Any] | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    name: str | None = None


class _ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: Literal["text", "json_object", "json_schema"]
    json_schema: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _schema_when_needed(self) -> _ResponseFormat:
        if self.type == "json_schema" and not self.json_schema:
            raise ValueError("a json_schema response format needs json_schema")
        return self


class _RowModel(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str | int | None = None
    messages: list[_Message] = Field(min_length=1)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    completion: str | _Message | None = None
    metadata: dict[str, Any] | None = None
    # how the answer is to be written (OpenAI's request fields and bounds)
    response_format: _ResponseFormat | None = None
    parallel_tool_calls: bool | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, ge=0.0, le=1.0)
    max_tokens: int | None = Field(default=None, gt=0)
    max_completion_tokens: int | None = Field(default=None, gt=0)
    seed: int | None = None
    stop: str | list[str] | None = None
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        stops = [value] if isinstance(value, str) else value or []
        if len(stops) > 4 or any(not s for s in stops):
            raise ValueError("at most 4 stop sequences, none empty")
        return value

    def writer_options(self) -> dict[str, Any] | None:
        """The answer's writer's options (the graph's ``aggregator_options``), or None."""
        options: dict[str, Any] = {}
        for name in ("temperature", "top_p", "presence_penalty", "frequency_penalty", "seed"):
            if (value := getattr(self, name)) is not None:
                options[name] = value
        limit = self.max_completion_tokens or self.max_tokens
        if limit is not None:
            options["max_tokens"] = limit
        if self.stop is not None:
            options["stop"] = [self.stop] if isinstance(self.stop, str) else list(self.stop)
        if self.response_format is not None and self.response_format.type != "text":
            options["response_format"] = self.response_format.model_dump(exclude_none=True)
        if self.parallel_tool_calls is not None and self.tools:  # no tools: nothing to run
            options["parallel_tool_calls"] = self.parallel_tool_calls
        return options or None

    @field_validator("id", mode="before")
    @classmethod
    def _id(cls, value: Any) -> Any:
        if isinstance(value, bool) or (isinstance(value, str) and not value.strip()):
            raise ValueError("must be a non-empty string or an integer")
        return value


@dataclass
class Row:
    """A checked row: its prompt, the original completion if it had one, the row as read."""

    id: str
    where: str  # "file:line" (or "#index" for rows fed from Python)
    prompt: list[dict[str, Any]]  # OpenAI messages, the original completion split off
    tools: list[dict[str, Any]] | None
    tool_choice: str | dict[str, Any] | None
    completion: dict[str, Any] | None  # the original completion, as an assistant message
    data: dict[str, Any] = field(repr=False)  # the row as read
    # the answer's writer's sampling and output format (AggregatorOptions), from the row
    options: dict[str, Any] | None = None

    @property
    def json_mode(self) -> bool:
        """Whether the answer must be JSON (a ``json_object``/``json_schema`` format)."""
        kind = ((self.options or {}).get("response_format") or {}).get("type")
        return kind in ("json_object", "json_schema")

    def messages(self) -> list[BaseMessage]:
        """The prompt as LangChain messages, for the graph."""
        return convert_to_messages(self.prompt)

    def inputs(self) -> dict[str, Any]:
        """The graph's input for this row."""
        inputs: dict[str, Any] = {"messages": self.messages()}
        if self.tools:
            inputs["tools"] = self.tools
            inputs["tool_choice"] = self.tool_choice
        if self.options:
            inputs["aggregator_options"] = dict(self.options)
        return inputs


@dataclass(frozen=True)
class InvalidRow:
    """A row that could not be read or checked."""

    where: str
    reason: str
    id: str | None = None


def _drop_nones(value: Any) -> Any:
    """Parquet gives every struct field of a column to every row: absent ones come as None."""
    if isinstance(value, dict):
        return {k: _drop_nones(v) for k, v in value.items() if v is not None or k == "content"}
    if isinstance(value, list):
        return [_drop_nones(v) for v in value]
    return value


def _stable_id(data: Mapping[str, Any]) -> str:
    """A row's id when it has none: a hash of its content (the same row gets the same id)."""
    blob = json.dumps(data, sort_keys=True, ensure_ascii=False, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _dump(message: _Message) -> dict[str, Any]:
    return message.model_dump(exclude_none=True) | (
        {"content": message.content} if message.content is None else {}
    )


def check_row(data: Any, where: str) -> Row | InvalidRow:
    """A parsed row, checked: a :class:`Row`, or an :class:`InvalidRow` saying why not (also
    for anything unexpected while checking it: one row never stops the reading)."""
    try:
        return _check_row(data, where)
    except Exception as err:  # a check that broke on this row (nesting too deep...)
        return InvalidRow(where, f"cannot check the row: {_one_line(err)}")


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())[:200]
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def lone_surrogate(data: Any) -> str | None:
    """Why ``data`` cannot be written as UTF-8 JSON (a lone surrogate in a string), or None."""
    try:
        json.dumps(data, ensure_ascii=False, default=str).encode("utf-8")
    except UnicodeEncodeError as err:
        char = err.object[err.start : err.end]
        escaped = char.encode("unicode_escape").decode("ascii") if isinstance(char, str) else "?"
        return f"a string holds a lone surrogate ({escaped}): not Unicode text"
    return None


def _check_row(data: Any, where: str) -> Row | InvalidRow:
    if not isinstance(data, dict):
        return InvalidRow(where, f"a row must be a JSON object, not {type(data).__name__}")
    if (why := lone_surrogate(data)) is not None:
        return InvalidRow(where, why)
    data = _drop_nones(data)
    # Parquet files often keep nested fields as JSON text
    for key in ("messages", "tools", "response_format"):
        if isinstance(data.get(key), str) and not _HASHED.fullmatch(data[key]):
            try:
                data[key] = decode_line(data[key].encode("utf-8"))
            except ValueError as err:  # the same reasons as a line of JSONL
                return InvalidRow(where, f"{key}: {err}")
    raw_id = data.get("id")
    row_id = str(raw_id) if isinstance(raw_id, str | int) and not isinstance(raw_id, bool) else None
    if hashed := _hashed(data.get("messages")):
        return InvalidRow(where, f"{hashed} was hashed at capture; it cannot be relabeled", row_id)
    try:
        model = _RowModel.model_validate(data)
    except ValidationError as err:
        return InvalidRow(where, describe_validation_error(err), row_id)
    messages = [_dump(m) for m in model.messages]
    completion: dict[str, Any] | None = None
    if model.completion is not None:
        completion = (
            {"role": "assistant", "content": model.completion}
            if isinstance(model.completion, str)
            else _dump(model.completion)
        )
        if completion["role"] != "assistant":
            return InvalidRow(where, "completion: must be an assistant message", row_id)
    elif messages[-1]["role"] == "assistant":
        completion = messages.pop()
    if not messages:
        return InvalidRow(where, "messages: nothing precedes the completion", row_id)
    if messages[-1]["role"] not in ("user", "tool"):
        return InvalidRow(
            where, "messages: the prompt must end with a user message or tool results", row_id
        )
    last = messages[-1]
    if last["role"] == "user" and not _text(last.get("content")).strip():
        return InvalidRow(where, "messages: the last user message is empty", row_id)
    for k, m in enumerate(messages):
        if m["role"] == "tool" and not m.get("tool_call_id"):
            return InvalidRow(where, f"messages.{k}: a tool message needs tool_call_id", row_id)
    try:
        convert_to_messages(messages)
        if completion is not None and not isinstance(
            convert_to_messages([completion])[0], AIMessage
        ):
            raise ValueError("not an assistant message")
    except Exception as err:  # LangChain's own check of the OpenAI format
        return InvalidRow(where, f"messages: {' '.join(str(err).split())[:200]}", row_id)
    if row_id is None:
        row_id = _stable_id({k: v for k, v in data.items() if k != "id"})
    return Row(
        id=row_id,
        where=where,
        prompt=messages,
        tools=model.tools,
        tool_choice=model.tool_choice,
        completion=completion,
        data=data,
        options=model.writer_options(),
    )


def _hashed(messages: Any) -> str | None:
    """Where the first message content replaced by a capture hash is (``messages.N.content``,
    whole or in a part), or None."""

    def holds_hash(value: Any) -> bool:
        if isinstance(value, str):
            return bool(_HASHED.fullmatch(value))
        if isinstance(value, list):
            return any(holds_hash(v) for v in value)
        return isinstance(value, dict) and any(holds_hash(v) for v in value.values())

    if isinstance(messages, str):
        return "messages" if _HASHED.fullmatch(messages) else None
    for k, message in enumerate(messages if isinstance(messages, list) else []):
        if isinstance(message, str) and _HASHED.fullmatch(message):
            return f"messages.{k}"
        if isinstance(message, dict) and holds_hash(message.get("content")):
            return f"messages.{k}.content"
    return None


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) if isinstance(p, dict) else str(p) for p in content)
    return ""


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:40]} is out of range")
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def decode_line(raw: bytes) -> Any:
    """The JSON value of one line; ValueError with a one-line reason if it has none: not UTF-8,
    not JSON, nested too deeply, a number Python will not convert (an integer of more than
    4,300 digits, a float out of range, NaN or Infinity)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"not UTF-8 text (byte {err.start})") from None
    try:
        return json.loads(text, parse_float=_finite, parse_constant=_no_constant)
    except json.JSONDecodeError as err:
        raise ValueError(f"not JSON: {err.msg} at column {err.colno}") from None
    except RecursionError:
        raise ValueError("not JSON: nested too deeply") from None
    except ValueError as err:  # a number Python will not convert
        if "integer string conversion" in str(err):
            digits = sys.get_int_max_str_digits()
            raise ValueError(f"not JSON: an integer of more than {digits} digits") from None
        raise ValueError(f"not JSON: {' '.join(str(err).split())[:200]}") from None
