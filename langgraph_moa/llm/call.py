"""Make one agent's LLM call(s) and turn the outcome into records: text or error, latency, usage,
HTTP attempts, whether it came from the cache (a cached call is paid $0 now; the usage its cache
entry kept is carried beside it, so what the call costs when made stays known: see
:func:`usage_update`).

Failures are caught and returned as outcomes (the graph decides what a failure means); the error
text is one line, shortened, with any configured API key masked. Retries happen inside the
openai client for the OpenAI-compatible table (see :mod:`langgraph_moa.llm.openai_client`) and
around each LangChain call for every other provider (see
:mod:`langgraph_moa.llm.langchain_models`); a layer deadline cancels what is still running.

Every request is also counted as it ends, paid or not, in the :class:`Meter` of the work it
belongs to, if one is set (:func:`meter_calls`: a relabel row), so what a row spent is known
even when the row then fails; the meter prices each request with the run's price table.

A reply may not run past its ``max_tokens``: an upstream that ignores the limit is cut off, and
what it is counted at is capped. A streamed reply is cut (the connection closed) once its text
passes :data:`CUT_CHARS_PER_TOKEN` characters a token of the limit (natural text averages 3 to 5);
a whole reply whose reported completion tokens or text go past the limit is refused, and one
whose body passes what that text could take is not read further
(:func:`~langgraph_moa.llm.openai_client.limit_reply_bytes`). Either way the call fails with an
error that says so, and is counted at its prompt (as reported, or counted by
:mod:`langgraph_moa.nodes.token_bound` when the report never came) plus ``max_tokens``
completion tokens a sample: the most an upstream that honours the limit can charge, which is
what the budget reserved for it.

The openai client and httpx are imported where they are used (a request, an error to describe),
not with this module: building or drawing a graph must not load the model stack (see
:mod:`langgraph_moa.llm.chat_models`).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import hashlib
import json
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

from langchain_core.callbacks import AsyncCallbackHandler
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.runnables import Runnable, RunnableConfig
from langchain_core.runnables.config import ensure_config, merge_configs

from langgraph_moa.errors import MoAInputError
from langgraph_moa.llm.chat_models import make_chat_model, redact
from langgraph_moa.llm.langchain_models import call_with_retries, status_of
from langgraph_moa.llm.text import text_of
from langgraph_moa.nodes.cache import ProposalCache
from langgraph_moa.nodes.context_window import Trim
from langgraph_moa.nodes.state import CallRecord, TokenUsage, Usage, add_usage
from langgraph_moa.nodes.token_bound import counter_for
from langgraph_moa.spec.models import PriceTable
from langgraph_moa.spec.providers import (
    PROVIDERS,
    langchain_provider,
    provider_kind,
    requests_for,
)
from langgraph_moa.spec.topology import Agent, Retry, Topology

__all__ = [
    "CUT_CHARS_PER_TOKEN",
    "CallExtras",
    "Meter",
    "ModelPool",
    "Outcome",
    "call_agent",
    "call_record",
    "describe_error",
    "error_text",
    "make_models",
    "meter_calls",
    "skipped_record",
    "usage_update",
]

log = logging.getLogger(__name__)
_MAX_ERROR_CHARS = 300
MIN_REPLY_LIMIT = 100_000
CUT_CHARS_PER_TOKEN = 6  # a reply past this many characters a token of max_tokens is cut
# a whole reply's body: up to 6 bytes a character (JSON's \uXXXX escapes), plus its envelope
BODY_BYTES_PER_TOKEN = CUT_CHARS_PER_TOKEN * 6
BODY_ENVELOPE_BYTES = 4096


@dataclass
class Meter:
    """What the requests of one piece of work (a relabel row) were counted at, each added as
    it ends: requests sent (one with ``n`` samples counts once), calls served from the cache,
    tokens, and their cost with ``prices`` (``cost_usd`` None while no priced model was used)."""

    prices: PriceTable
    calls: int = 0
    cached_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = None
    unpriced: list[str] = field(default_factory=list)

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def add(self, model: str, usage: TokenUsage, *, calls: int = 1) -> None:
        self.calls += calls
        prompt, completion = usage["prompt_tokens"], usage["completion_tokens"]
        self.prompt_tokens += prompt
        self.completion_tokens += completion
        cost = self.prices.cost(model, prompt, completion)
        if cost is None:
            if model not in self.unpriced:
                self.unpriced.append(model)
        else:
            self.cost_usd = (self.cost_usd or 0.0) + cost


_meter: contextvars.ContextVar[Meter | None] = contextvars.ContextVar("moa_meter", default=None)


@contextlib.contextmanager
def meter_calls(prices: PriceTable) -> Iterator[Meter]:
    """Count every request made inside this block (and the tasks it starts) in a new meter."""
    meter = Meter(prices)
    token = _meter.set(meter)
    try:
        yield meter
    finally:
        _meter.reset(token)


@dataclass
class Outcome:
    """One sample's result. A request that returned n samples yields n outcomes."""

    text: str | None
    error: str | None
    latency_s: float
    usage: TokenUsage
    message: AIMessage | None = None
    attempts: int = 1
    cached: bool = False
    finish_reason: str | None = None
    # a cached sample: the usage it was counted at when its request was made (None: the cache
    # entry predates keeping it); ``usage`` stays zero, as nothing was paid now
    cached_usage: TokenUsage | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def zero_usage() -> TokenUsage:
    return {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}


def _count(value: Any) -> int:
    """A token count as reported: anything but a non-negative integer counts as 0."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _usage_of(message: BaseMessage) -> TokenUsage:
    meta = getattr(message, "usage_metadata", None) or {}
    prompt, completion = _count(meta.get("input_tokens")), _count(meta.get("output_tokens"))
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": _count(meta.get("total_tokens")) or prompt + completion,
    }


def reply_limit(agent: Agent) -> int:
    """The most characters kept from one reply: far above what ``max_tokens`` allows (a token
    is about 4 characters), so only a broken or hostile upstream reaches it."""
    return max(MIN_REPLY_LIMIT, agent.max_tokens * 16)


class ReplyTooLong(Exception):
    """An upstream reply passed its limit; the stream is closed there."""


class _QuietStop(logging.Filter):
    """LangChain logs a warning for every exception a callback raises, even one raised on
    purpose to stop a stream; the failure is in the call's record, so the log line is dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "_StopLongReplies" not in record.getMessage()


logging.getLogger("langchain_core.callbacks.manager").addFilter(_QuietStop())


class _StopLongReplies(AsyncCallbackHandler):
    """Counts a streamed reply's characters and stops the request once past the limit (a
    callback with ``raise_error`` is how LangChain lets a caller abort a stream)."""

    raise_error = True

    def __init__(self, limit: int, max_tokens: int | None = None) -> None:
        self.limit = limit
        self.max_tokens = max_tokens  # when the limit is what max_tokens allows
        self.seen = 0

    async def on_llm_new_token(
        self, token: str | list[str | dict[str, Any]], **kwargs: Any
    ) -> None:
        self.seen += len(token) if isinstance(token, str) else len(str(token))
        if self.seen > self.limit:
            if self.max_tokens is not None:
                raise ReplyTooLong(
                    f"the upstream ignored max_tokens: the reply passed {self.limit} characters, "
                    f"more than {self.max_tokens} tokens allow; it was cut off there"
                )
            raise ReplyTooLong(f"the reply passed {self.limit} characters; it was cut off there")


def _short(text: str) -> str:
    # one line, keys masked, no terminal control sequences from whatever the upstream said
    text = "".join(c if c.isprintable() else " " for c in text)
    text = redact(" ".join(text.split()))
    return text if len(text) <= _MAX_ERROR_CHARS else text[: _MAX_ERROR_CHARS - 1] + "…"


def error_text(err: BaseException) -> str:
    """A short single-line description of an exception, safe to store and print."""
    return _short(f"{type(err).__name__}: {err}" if str(err) else type(err).__name__)


def describe_error(err: BaseException, *, timeout_s: float | None = None) -> str:
    """What went wrong with a call, in the words a user needs (status, timeout, connection...)."""
    import httpx2
    import openai

    from langgraph_moa.llm.openai_client import ReplyPastLimit

    if isinstance(
        err, openai.APITimeoutError | asyncio.TimeoutError | TimeoutError | httpx2.TimeoutException
    ):
        return f"timed out after {timeout_s:g}s" if timeout_s else "timed out"
    if isinstance(err, openai.APIStatusError):
        return _status_error(err, err.status_code)
    if isinstance(err, openai.APIConnectionError):
        cause = err.__cause__ or err.__context__
        return _short(f"connection failed: {cause or err}")
    if isinstance(err, ReplyTooLong):
        return str(err)
    if isinstance(err, ReplyPastLimit):
        return f"{IGNORED}: {err}"
    if isinstance(err, json.JSONDecodeError | openai.APIResponseValidationError):
        return _short(f"malformed response: {err}")
    # other SDKs (anthropic, google-genai, mistral...): the same facts under their own classes
    if (status := status_of(err)) is not None:
        return _status_error(err, status)
    names = [cls.__name__ for cls in type(err).__mro__]
    if any("Timeout" in name for name in names):
        return f"timed out after {timeout_s:g}s" if timeout_s else "timed out"
    if any("Connection" in name or "ConnectError" in name for name in names):
        return _short(f"connection failed: {err.__cause__ or err.__context__ or err}")
    return error_text(err)


def _status_error(err: BaseException, status: int) -> str:
    """``HTTP <status>: <the server's message>`` (OpenAI and Anthropic both put it in the body's
    ``error.message``)."""
    body = getattr(err, "body", None)
    body = body if isinstance(body, dict) else {}
    inner = body.get("error", body)
    detail = inner.get("message") if isinstance(inner, dict) else None
    return _short(f"HTTP {status}: {detail or getattr(err, 'message', None) or err}")


def _finish_reason(message: AIMessage) -> object:
    """Why the model stopped, under the key its integration uses (OpenAI's ``finish_reason``,
    Anthropic's ``stop_reason``, Bedrock's ``stopReason``)."""
    meta = message.response_metadata
    return next(
        (meta[k] for k in ("finish_reason", "stop_reason", "stopReason") if meta.get(k)), None
    )


def _outcome_of(message: AIMessage, latency_s: float, usage: TokenUsage, attempts: int) -> Outcome:
    text = text_of(message)
    finish = _finish_reason(message)
    finish = str(finish) if finish is not None else None
    if message.tool_calls:  # an answer that calls tools may have no text
        return Outcome(text, None, latency_s, usage, message, attempts, finish_reason=finish)
    if not text.strip():
        return Outcome(
            None, "empty completion", latency_s, usage, attempts=attempts, finish_reason=finish
        )
    return Outcome(text, None, latency_s, usage, message, attempts, finish_reason=finish)


class ModelPool:
    """An agent's chat models, built on first use (keys are read only when a call is made) and
    kept per event loop (an HTTP connection pool belongs to the loop that opened it).

    The sync API runs on one shared loop (:mod:`langgraph_moa.sync_loop`), so a process has few
    loops. Models of a loop that has been closed (``asyncio.run`` returned) are dropped at the
    next call, so their clients and sockets do not pile up across ``asyncio.run`` calls.

    Pools share their models: agents that differ only in name (one model in two layers) use one
    model, one client and its open connections, for the same provider URL and key; so a later
    layer does not make models and open connections again, and :func:`make_models` can make a
    run's models before it starts.
    """

    _shared: ClassVar[dict[asyncio.AbstractEventLoop, dict[tuple[Any, ...], BaseChatModel]]] = {}

    def __init__(self, agent: Agent, *, streaming: bool = False) -> None:
        self.agent = agent
        self.streaming = streaming
        kind = provider_kind(agent.model)
        self.in_process = kind == "local"
        # whether a reply may come as a stream of tokens: the openai-compatible and embedded
        # models made here stream only when asked; any other LangChain model might
        self.may_stream = streaming or kind not in ("openai", "local")
        # other than the openai client, which retries and times out on its own
        self.retried_here = kind not in ("openai", "local")
        # a streamed answer without a finish reason was cut off (where the provider gives one)
        lc = langchain_provider(agent.provider)
        self.reports_finish = kind in ("openai", "local") or (
            kind == "langchain" and lc is not None and lc.reports_finish
        )
        # a table provider's model is shared by agents that differ only in name (for the same
        # URL and key); any other provider's model belongs to this pool
        self._spec = PROVIDERS.get(agent.provider) if kind in ("openai", "local") else None
        self._key = (agent.model_copy(update={"name": None}), streaming)
        self._own: dict[asyncio.AbstractEventLoop, dict[tuple[Any, ...], BaseChatModel]] = {}

    def get(self, n: int = 1) -> BaseChatModel:
        loop = asyncio.get_running_loop()
        pools = self._shared if self._spec is not None else self._own
        if loop not in pools:
            for closed in [old for old in pools if old.is_closed()]:
                del pools[closed]
        models = pools.setdefault(loop, {})
        key: tuple[Any, ...] = (*self._key, n)
        if self._spec is not None:
            # the provider's URL and key as they are now (a key only as its digest)
            secret = hashlib.sha256((self._spec.resolve_key() or "").encode()).digest()
            key = (*key, self._spec.resolve_base_url(), secret)
        if key not in models:
            models[key] = make_chat_model(self.agent, streaming=self.streaming, n=n)
        return models[key]

    @property
    def params(self) -> dict[str, Any]:
        """What makes two requests identical, for the cache."""
        a = self.agent
        return {
            "model": a.model,
            "temperature": a.temperature,
            "max_tokens": a.max_tokens,
            "n": a.n,
            "seed": a.seed,
        }


def make_models(topology: Topology) -> None:
    """Make the chat models a run of ``topology`` uses in the running loop, before the run (a
    cold process would otherwise make them between its first requests): the proposers' and the
    critic's, and the aggregator's and fallback model's, which stream."""
    pools = [ModelPool(a) for layer in topology.layers for a in layer.proposers]
    if topology.critic is not None:
        pools.append(ModelPool(topology.critic.model_copy(update={"n": 1})))
    for writer in (topology.aggregator, topology.fallback):
        if isinstance(writer, Agent):
            pools.append(ModelPool(writer.model_copy(update={"n": 1}), streaming=True))
    for pool in pools:
        if not pool.in_process:  # the embedded model loads on its first call
            pool.get(pool.agent.n if requests_for(pool.agent) == 1 else 1)  # as call_agent asks


@dataclass
class CallExtras:
    """What a single call adds to the agent's settings: tools (OpenAI format) and overrides."""

    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    options: dict[str, Any] | None = None
    max_tokens: int | None = None  # the reply's limit when it overrides the agent's (in options)

    def key(self) -> dict[str, Any] | None:
        """What this adds to a cache key (None when it adds nothing)."""
        if not (self.tools or self.tool_choice or self.options):
            return None
        return {"tools": self.tools, "tool_choice": self.tool_choice, "options": self.options}

    def prepare(self, model: BaseChatModel) -> Runnable[Any, Any]:
        runnable: Runnable[Any, Any] = model
        if self.tools:
            try:
                choice = self.tool_choice
                runnable = model.bind_tools(self.tools, tool_choice=choice)  # type: ignore[arg-type]
            except NotImplementedError:
                raise MoAInputError(f"{model._llm_type} models cannot call tools") from None
        return runnable.bind(**self.options) if self.options else runnable


def _limit(pool: ModelPool, extras: CallExtras | None) -> int:
    """A sample's completion limit for this request: the call's override, else the agent's."""
    return (extras.max_tokens if extras and extras.max_tokens else None) or pool.agent.max_tokens


def _capped(
    pool: ModelPool, messages: list[BaseMessage], usage: TokenUsage, allowed: int
) -> TokenUsage:
    """What a reply that ran past its limit is counted at: its prompt (as reported, else
    counted from the messages) and ``allowed`` completion tokens."""
    prompt = usage["prompt_tokens"] or counter_for(pool.agent.model).messages(messages)
    return {"prompt_tokens": prompt, "completion_tokens": allowed, "total_tokens": prompt + allowed}


async def _request(
    pool: ModelPool, messages: list[BaseMessage], n: int, extras: CallExtras | None = None
) -> list[Outcome]:
    """One request: one sample, or ``n`` in one go; usage is reported once, on the first. The
    request is counted in the meter, if one is set, when it ends (cancelled ones too, at 0)."""
    meter = _meter.get()
    outcomes: list[Outcome] = []
    try:
        outcomes = await _send(pool, messages, n, extras)
        return outcomes
    finally:
        if meter is not None:
            meter.add(pool.agent.model, outcomes[0].usage if outcomes else zero_usage())


async def _send(
    pool: ModelPool, messages: list[BaseMessage], n: int, extras: CallExtras | None
) -> list[Outcome]:
    from langgraph_moa.llm.openai_client import (
        ReplyPastLimit,
        count_attempts,
        limit_reply_bytes,
    )

    timeout_s = pool.agent.timeout_s
    start = time.perf_counter()
    max_tokens = _limit(pool, extras)
    generations: list[Any]
    log.info("request to %s (%d sample(s), %d message(s))", pool.agent.model, n, len(messages))
    body_limit = max_tokens * n * BODY_BYTES_PER_TOKEN + BODY_ENVELOPE_BYTES
    with count_attempts() as attempts, limit_reply_bytes(body_limit):
        guard: _StopLongReplies | None = None
        try:
            if n == 1:
                model = pool.get()
                runnable = extras.prepare(model) if extras else model
                cut = max_tokens * CUT_CHARS_PER_TOKEN
                if cut < reply_limit(pool.agent):
                    guard = _StopLongReplies(cut, max_tokens)
                else:
                    guard = _StopLongReplies(reply_limit(pool.agent))

                def call() -> Any:
                    if not pool.may_stream:  # a whole reply: its length is checked below
                        return runnable.ainvoke(messages)
                    # the guard joins the inherited callbacks (LangGraph's token streaming
                    # among them): a config with only it would replace them
                    assert guard is not None
                    guard.seen = 0  # a retry starts over
                    config: RunnableConfig = {"callbacks": [guard]}
                    return runnable.ainvoke(messages, merge_configs(ensure_config(), config))

                if pool.retried_here:
                    retry = pool.agent.retry or Retry()
                    reply = await call_with_retries(
                        call, retry=retry, timeout_s=timeout_s, attempts=attempts
                    )
                elif pool.in_process:  # in-process models have no HTTP timeout of their own
                    reply = await asyncio.wait_for(call(), timeout_s)
                else:
                    reply = await call()
                generations = [reply]
            else:
                # agenerate (the only call returning n samples) takes no config: its
                # callbacks are passed as ainvoke would, so the call is traced like the others
                config = ensure_config()
                result = await pool.get(n).agenerate(
                    [messages],
                    callbacks=config.get("callbacks"),
                    tags=config.get("tags"),
                    metadata=config.get("metadata"),
                )
                generations = [getattr(g, "message", None) for g in result.generations[0]]
        except MoAInputError:
            raise
        except Exception as err:
            tries = max(attempts[0], 1)
            error = describe_error(err, timeout_s=timeout_s)
            if tries > 1:
                error += f" ({tries} attempts)"
            log.info(
                "%s failed after %.2fs: %s", pool.agent.model, time.perf_counter() - start, error
            )
            usage = zero_usage()
            if isinstance(err, ReplyTooLong) and guard is not None and guard.max_tokens:
                # cut off mid-stream: its usage never came; what it wrote was paid
                usage = _capped(pool, messages, usage, max_tokens)
            elif isinstance(err, ReplyPastLimit):  # a whole reply too big to read: the same
                usage = _capped(pool, messages, usage, max_tokens * n)
            return [
                Outcome(
                    None,
                    error,
                    time.perf_counter() - start,
                    usage if k == 0 else zero_usage(),
                    attempts=tries,
                )
                for k in range(n)
            ]
    latency, tries = time.perf_counter() - start, max(attempts[0], 1)
    log.info("%s answered in %.2fs (%d attempt(s))", pool.agent.model, latency, tries)
    outcomes = []
    # the most a request may be charged for: max_tokens a sample
    allowed = max_tokens * max(len(generations[:n]), 1)
    for k, message in enumerate(generations[:n]):
        if not isinstance(message, AIMessage):
            outcomes.append(Outcome(None, "malformed response", latency, zero_usage()))
            continue
        usage = _usage_of(message) if k == 0 else zero_usage()
        outcome = _outcome_of(message, latency, usage, tries)
        over = _past_the_limit(outcome, usage, max_tokens, allowed)
        if outcome.text is not None and len(outcome.text) > reply_limit(pool.agent):
            limit = reply_limit(pool.agent)
            outcome = Outcome(
                None,
                f"the reply was {len(outcome.text)} characters, more than the limit of {limit}",
                latency,
                _capped(pool, messages, usage, allowed) if k == 0 else usage,
                attempts=tries,
            )
        elif over is not None:
            capped = _capped(pool, messages, usage, allowed) if k == 0 else usage
            outcome = Outcome(None, over, latency, capped, attempts=tries)
        if pool.streaming and pool.reports_finish and outcome.ok and outcome.finish_reason is None:
            # A stream that simply stopped (no finish reason, no [DONE]) was cut off: its text
            # is a fragment, not an answer.
            received = len(outcome.text or "")
            outcome = Outcome(
                None,
                f"truncated stream: the connection ended after {received} characters, "
                "before the model finished",
                latency,
                usage,
                attempts=tries,
            )
        outcomes.append(outcome)
    if any(o.error and o.error.startswith(IGNORED) for o in outcomes) and outcomes:
        # one sample past the limit: the request as a whole is counted at the cap
        first = outcomes[0]
        first.usage = _capped(pool, messages, first.usage, allowed)
    for _ in range(n - len(outcomes)):
        missing = f"provider returned {len(generations)} of {n} samples"
        outcomes.append(Outcome(None, missing, latency, zero_usage(), attempts=tries))
    return outcomes


IGNORED = "the upstream ignored max_tokens"


def _past_the_limit(
    outcome: Outcome, usage: TokenUsage, max_tokens: int, allowed: int
) -> str | None:
    """Why a whole reply ran past ``max_tokens`` (its reported completion tokens, or its text
    by :data:`CUT_CHARS_PER_TOKEN`), or None."""
    # one token over is an end-of-text token some servers count (llama.cpp does), not a reply
    # that ran on
    if usage["completion_tokens"] > allowed + 1:
        return (
            f"{IGNORED}: it reported {usage['completion_tokens']} completion tokens for a limit "
            f"of {allowed}; counted at the limit"
        )
    chars = len(outcome.text or "")
    if chars > max_tokens * CUT_CHARS_PER_TOKEN:
        return (
            f"{IGNORED}: the reply was {chars} characters, more than {max_tokens} tokens allow "
            f"({math.ceil(chars / CUT_CHARS_PER_TOKEN)} tokens at the least); counted at the limit"
        )
    return None


async def call_agent(
    pool: ModelPool,
    messages: list[BaseMessage],
    *,
    deadline_s: float | None = None,
    cache: ProposalCache | None = None,
    extras: CallExtras | None = None,
    node: str = "",
) -> tuple[list[Outcome], int]:
    """Draw ``agent.n`` samples: one request with ``n`` where the provider allows it, else n.

    Requests still running at ``deadline_s`` are cancelled and recorded as timed out; samples
    already finished are kept. Each request is looked up in, and stored to, the cache on its
    own (``node`` names the caller in the key of sampled calls inside a row scope). Returns
    the samples and how many requests were sent.
    """
    n = pool.agent.n
    start = time.perf_counter()
    sizes = [n] if requests_for(pool.agent) == 1 else [1] * n
    finished: dict[int, list[Outcome]] = {}
    key_extras = extras.key() if extras else None

    async def lookup(k: int) -> None:
        assert cache is not None
        hit = await cache.get(pool.params, messages, node=node, part=k, extras=key_extras)
        if hit is not None:
            latency = time.perf_counter() - start
            finished[k] = [
                Outcome(
                    text,
                    None,
                    latency,
                    zero_usage(),
                    message,
                    attempts=0,
                    cached=True,
                    finish_reason=message.response_metadata.get("finish_reason")
                    if message
                    else None,
                    cached_usage=None if made is None else _token_usage(made),
                )
                for text, message, made in zip(*hit, strict=True)
            ]

    if cache is not None:
        for k in range(len(sizes)):
            await lookup(k)
        if finished and (meter := _meter.get()) is not None:
            meter.cached_calls += 1  # as usage_update counts them: once per call
        if len(finished) == len(sizes):
            hits = [o for k in range(len(sizes)) for o in finished[k]]
            log.info("cache hit for %s: %d sample(s), no request sent", pool.agent.model, len(hits))
            return hits, 0

    async def send(k: int, size: int) -> None:
        outcomes = await _request(pool, messages, size, extras)
        finished[k] = outcomes
        if cache is not None and all(o.ok for o in outcomes):
            texts = [o.text or "" for o in outcomes]
            replies = [o.message for o in outcomes]
            await cache.put(
                pool.params,
                messages,
                texts,
                node=node,
                part=k,
                extras=key_extras,
                replies=replies,
                usages=[o.usage for o in outcomes],
            )

    # The requests are children of this call: if the node is cancelled (a client left, Ctrl-C,
    # a cancelled server run), the task group cancels them too, and their HTTP connections
    # close. At the deadline, the same happens to those still running; finished ones are kept.
    sent = [k for k in range(len(sizes)) if k not in finished]
    try:
        async with asyncio.timeout(deadline_s), asyncio.TaskGroup() as group:
            for k in sent:
                group.create_task(send(k, sizes[k]))
    except TimeoutError:
        pass
    except ExceptionGroup as failed:  # only MoAInputError escapes _request: configuration
        raise failed.exceptions[0] from None
    outcomes: list[Outcome] = []
    for k, size in enumerate(sizes):
        if k in finished:
            outcomes.extend(finished[k])
        else:
            late = f"timed out: the layer's deadline of {deadline_s:g}s passed"
            elapsed = time.perf_counter() - start
            outcomes.extend(Outcome(None, late, elapsed, zero_usage()) for _ in range(size))
    return outcomes, len(sent)


def _token_usage(raw: dict[str, Any]) -> TokenUsage:
    """A usage read back from a cache entry (counts that are not whole numbers >= 0 read 0)."""
    prompt, completion = _count(raw.get("prompt_tokens")), _count(raw.get("completion_tokens"))
    total = _count(raw.get("total_tokens")) or prompt + completion
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": total}


def usage_update(model: str, outcomes: list[Outcome], requests: int, prices: PriceTable) -> Usage:
    """The state's usage delta for these outcomes (a failed request counts, with 0 tokens).

    A call served from the cache counts 0 tokens and $0 (nothing was paid now); what it cost
    when it was made is kept beside that, in the model's ``cached_*`` fields (see
    :class:`~langgraph_moa.nodes.state.ModelUsage`), with ``cached_unknown`` counting cached
    samples whose cache entry did not keep its usage."""
    prompt = sum(o.usage["prompt_tokens"] for o in outcomes)
    completion = sum(o.usage["completion_tokens"] for o in outcomes)
    total = sum(o.usage["total_tokens"] for o in outcomes)
    cached = [o for o in outcomes if o.cached]
    made = [o.cached_usage for o in cached if o.cached_usage is not None]
    delta: Usage = {
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "total_tokens": 0,
        "cost_usd": None,
        "unpriced": [],
        "by_model": {
            model: {
                "calls": requests,
                "cached_calls": 1 if any(o.cached for o in outcomes) else 0,
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": total,
                "cost_usd": prices.cost(model, prompt, completion),
            }
        },
    }
    if cached:
        made_prompt = sum(u["prompt_tokens"] for u in made)
        made_completion = sum(u["completion_tokens"] for u in made)
        delta["by_model"][model] |= {
            "cached_prompt_tokens": made_prompt,
            "cached_completion_tokens": made_completion,
            "cached_cost_usd": prices.cost(model, made_prompt, made_completion),
            "cached_unknown": len(cached) - len(made),
        }
    return add_usage(None, delta)


def call_record(
    agent: Agent, node: str, outcome: Outcome, trimmed: Trim | None = None
) -> CallRecord:
    """The state's record of one call (or one sample of a call)."""
    return {
        "name": agent.name or node,
        "node": node,
        "model": agent.model,
        "ok": outcome.ok,
        "text": outcome.text,
        "error": outcome.error,
        "latency_s": round(outcome.latency_s, 4),
        "usage": outcome.usage,
        "attempts": outcome.attempts,
        "cached": outcome.cached,
        "trimmed": trimmed,
        "finish_reason": outcome.finish_reason,
    }


def skipped_record(agent: Agent, node: str) -> CallRecord:
    """The record of a call the budget plan left out."""
    skipped = Outcome(None, "skipped to stay within budget", 0.0, zero_usage(), attempts=0)
    return call_record(agent, node, skipped)
