"""Deferred calls: a request that is answered later, through a provider's Batch API.

Under the batch engine (:mod:`langgraph_moa.batch.waves`) a row runs the same compiled graph as
an online run. A :class:`Deferral` is set for the row (:func:`defer_calls`); when a node's call
(:func:`langgraph_moa.llm.call.call_agent`) is to a model whose provider has a Batch API, each of
its requests is looked up in the deferral instead of being sent:

- **answered**: the provider's stored reply becomes the call's outcomes, read by the model's own
  LangChain integration (:func:`replies_of`), so the record, usage and finish reason are those
  of an online call; it is priced at the batch price;
- **to send online** (a straggler past ``--finish-online-after``): it is sent now, as online;
- **not yet**: the request, as the exact JSON body the integration would send
  (:func:`request_body`), is handed to the deferral, and once every request of the call is
  known the node pauses with LangGraph's ``interrupt`` (siblings in the same step run on and
  pause too, so a whole layer's requests are collected at once). The wave runner submits them,
  polls, stores the replies and resumes the row's thread; the node runs again and finds them.

A request's key (:meth:`Deferral.key`) names the row's thread, the node, the request's part
and a digest of its body, so a node that runs again asks for the same request under the same
key, and a request is never submitted twice for one row, node and sample.

The body and the reply go through LangChain's own converters (``_get_request_payload``,
``_create_chat_result`` for OpenAI's shape, ``_format_output`` for Anthropic's): they are the
integrations' private methods, used because writing a third copy of each wire format here is
what would drift; a unit test pins them.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.runnables import Runnable, RunnableBinding


@dataclass(frozen=True)
class DeferredRequest:
    """One request waiting for a Batch API: its key, ``provider:model``, the JSON body the
    online call would send, and how many times it may be tried in all."""

    key: str
    model: str
    body: dict[str, Any]
    attempts: int = 1


@dataclass(frozen=True)
class Answer:
    """What a deferral holds for a request: the provider's reply body (or the error that ended
    it, after its retries), or ``online``: send it now. ``latency_s``: submit to result."""

    body: dict[str, Any] | None = None
    error: str | None = None
    online: bool = False
    latency_s: float = 0.0
    attempts: int = 1


class Deferral(Protocol):
    """A row's view of the batch engine's store of deferred requests."""

    def takes(self, model: str) -> bool:
        """Whether calls to ``model`` go through a Batch API (else they are sent online)."""
        ...

    def key(self, node: str, part: int, body: dict[str, Any]) -> str:
        """The key of this request of this row."""
        ...

    def answer(self, key: str) -> Answer | None:
        """The stored answer of a request, if there is one yet."""
        ...

    def defer(self, request: DeferredRequest) -> None:
        """Queue a request for the next wave (a request already queued is not queued again)."""
        ...


_deferral: contextvars.ContextVar[Deferral | None] = contextvars.ContextVar(
    "moa_deferral", default=None
)


@contextlib.contextmanager
def defer_calls(deferral: Deferral) -> Iterator[Deferral]:
    """Defer the Batch-API-capable calls made inside this block (and the tasks it starts)."""
    token = _deferral.set(deferral)
    try:
        yield deferral
    finally:
        _deferral.reset(token)


def current_deferral() -> Deferral | None:
    return _deferral.get()


def digest(value: Any) -> str:
    """A stable short digest of a JSON value (keys sorted)."""
    text = json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def _unbound(runnable: Runnable[Any, Any]) -> tuple[BaseChatModel, dict[str, Any]]:
    """The chat model behind ``runnable`` and the keyword arguments bound on it (tools...)."""
    kwargs: dict[str, Any] = {}
    while isinstance(runnable, RunnableBinding):
        kwargs = {**runnable.kwargs, **kwargs}
        runnable = runnable.bound
    if not isinstance(runnable, BaseChatModel):
        raise TypeError(f"cannot defer a call to {type(runnable).__name__}")
    return runnable, kwargs


def request_body(runnable: Runnable[Any, Any], messages: list[BaseMessage]) -> dict[str, Any]:
    """The JSON body the model's integration would send for ``messages`` (not streamed)."""
    model, kwargs = _unbound(runnable)
    payload: dict[str, Any] = dict(model._get_request_payload(messages, **kwargs))  # type: ignore[attr-defined]
    payload.pop("stream", None)
    payload.pop("stream_options", None)
    # SDK-side extras (``extra_body``) are sent as fields of the body itself
    payload.update(payload.pop("extra_body", None) or {})
    return json.loads(json.dumps(payload, default=_jsonable))


def _jsonable(value: Any) -> Any:
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json", exclude_none=True)
    raise TypeError(f"{type(value).__name__} is not JSON")


def replies_of(runnable: Runnable[Any, Any], body: dict[str, Any]) -> list[AIMessage]:
    """The reply messages (one per sample) in a provider's reply body, read by the model's own
    integration: OpenAI's chat completion, or Anthropic's message."""
    model, _ = _unbound(runnable)
    if hasattr(model, "_create_chat_result"):  # OpenAI's shape
        result = model._create_chat_result(body)
    elif hasattr(model, "_format_output"):  # Anthropic's
        import anthropic.types

        message = anthropic.types.Message.model_validate(body)
        result = model._format_output(message)
    else:
        raise TypeError(f"cannot read a batch reply for {type(model).__name__}")
    replies = []
    for generation in result.generations:
        message = generation.message
        if isinstance(message, AIMessage):
            # as LangChain does for an online call: what the generation and, for a single
            # one, the whole result say (finish or stop reason, model) join its metadata
            info = dict(generation.generation_info or {})
            if len(result.generations) == 1 and result.llm_output:
                info = {**result.llm_output, **info}
            message.response_metadata = {**info, **message.response_metadata}
            replies.append(message)
    return replies
