"""Make one agent's LLM call(s): draw its ``n`` samples (one request with ``n``, or ``n``
requests), each looked up in and stored to the call cache (:mod:`langgraph_moa.llm.call_cache`),
under a deadline, and turn each reply into an :class:`Outcome`: text or error, latency, usage,
HTTP attempts, whether it came from the cache (a cached call is paid $0 now; the usage its cache
entry kept is carried beside it, so what the call costs when made stays known). The graph's
records of these outcomes are written by :mod:`langgraph_moa.nodes.records`.

**One seam: how one request is sent.** Every request goes through :func:`send_request` (one
sample, or ``n`` in one go), and nothing else here talks to a model. It counts the request in
the :class:`~langgraph_moa.llm.usage.Meter` of its work, then sends it now over the agent's
chat model and reads the reply. A deferred call (a provider's Batch API: submit now, collect
later) plugs in there, as another way of sending one request; the cache, the n-splitting, the
deadline, the meter and the records around it stay as they are.

Failures are caught and returned as outcomes (the graph decides what a failure means); the error
text is one line, shortened, with any configured API key masked (:func:`error_text`,
:func:`describe_error`). Retries happen inside the openai client for the OpenAI-compatible table
(see :mod:`langgraph_moa.llm.openai_client`) and around each LangChain call for every other
provider (see :mod:`langgraph_moa.llm.langchain_models`); a layer deadline cancels what is still
running. A reply may not run past its ``max_tokens`` (:mod:`langgraph_moa.llm.reply_guard`).

The openai client and httpx are imported where they are used (a request, an error to describe),
not with this module: building or drawing a graph must not load the model stack (see
:mod:`langgraph_moa.llm.chat_models`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.runnables import RunnableConfig
from langchain_core.runnables.config import ensure_config, merge_configs

from langgraph_moa.errors import MoAInputError
from langgraph_moa.llm.call_cache import ProposalCache
from langgraph_moa.llm.chat_models import redact
from langgraph_moa.llm.deferred import (
    Deferral,
    DeferredRequest,
    current_deferral,
    replies_of,
    request_body,
)
from langgraph_moa.llm.langchain_models import call_with_retries, status_of
from langgraph_moa.llm.model_pool import CallExtras, ModelPool
from langgraph_moa.llm.reply_guard import (
    IGNORED,
    ReplyTooLong,
    StopLongReplies,
    body_limit,
    capped,
    past_the_limit,
    reply_limit,
)
from langgraph_moa.llm.text import text_of
from langgraph_moa.llm.usage import TokenUsage, current_meter, token_usage, usage_of, zero_usage
from langgraph_moa.spec.agent import Retry
from langgraph_moa.spec.providers import requests_for

log = logging.getLogger(__name__)
_MAX_ERROR_CHARS = 300


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
    # answered through a provider's Batch API: which request of the call (its part) it came
    # from; None when sent online
    batch_part: int | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def batch(self) -> bool:
        return self.batch_part is not None


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


def _limit(pool: ModelPool, extras: CallExtras | None) -> int:
    """A sample's completion limit for this request: the call's override, else the agent's."""
    return (extras.max_tokens if extras and extras.max_tokens else None) or pool.agent.max_tokens


async def send_request(
    pool: ModelPool, messages: list[BaseMessage], n: int, extras: CallExtras | None = None
) -> list[Outcome]:
    """How one request is sent (the module's one seam): one sample, or ``n`` in one go; usage
    is reported once, on the first. The request is counted in the meter, if one is set, when it
    ends (cancelled ones too, at 0). Today it is sent now (:func:`_send_now`); a deferred
    sender (a provider's Batch API) is the other way in here."""
    meter = current_meter()
    outcomes: list[Outcome] = []
    try:
        outcomes = await _send_now(pool, messages, n, extras)
        return outcomes
    finally:
        if meter is not None:
            meter.add(pool.agent.model, outcomes[0].usage if outcomes else zero_usage())


async def _send_now(
    pool: ModelPool, messages: list[BaseMessage], n: int, extras: CallExtras | None
) -> list[Outcome]:
    """Send one request over the agent's chat model and read its reply into outcomes (the
    reply-size guard on it, its failure described)."""
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
    with count_attempts() as attempts, limit_reply_bytes(body_limit(max_tokens, n)):
        guard: StopLongReplies | None = None
        try:
            if n == 1:
                model = pool.get()
                runnable = extras.prepare(model) if extras else model
                guard = StopLongReplies.for_request(pool.agent, max_tokens)

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
                usage = capped(pool.agent.model, messages, usage, max_tokens)
            elif isinstance(err, ReplyPastLimit):  # a whole reply too big to read: the same
                usage = capped(pool.agent.model, messages, usage, max_tokens * n)
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
    return _read_reply(pool, messages, generations, n, max_tokens, latency, tries)


def _read_reply(
    pool: ModelPool,
    messages: list[BaseMessage],
    generations: list[Any],
    n: int,
    max_tokens: int,
    latency: float,
    tries: int,
) -> list[Outcome]:
    """A request's reply (its ``n`` generations) as outcomes, each checked against the
    request's limits (an online reply and a Batch API's alike)."""
    outcomes = []
    # the most a request may be charged for: max_tokens a sample
    allowed = max_tokens * max(len(generations[:n]), 1)
    for k, message in enumerate(generations[:n]):
        if not isinstance(message, AIMessage):
            outcomes.append(Outcome(None, "malformed response", latency, zero_usage()))
            continue
        usage = usage_of(message) if k == 0 else zero_usage()
        outcome = _outcome_of(message, latency, usage, tries)
        over = past_the_limit(outcome.text, usage, max_tokens, allowed)
        if outcome.text is not None and len(outcome.text) > reply_limit(pool.agent):
            limit = reply_limit(pool.agent)
            outcome = Outcome(
                None,
                f"the reply was {len(outcome.text)} characters, more than the limit of {limit}",
                latency,
                capped(pool.agent.model, messages, usage, allowed) if k == 0 else usage,
                attempts=tries,
            )
        elif over is not None:
            counted = capped(pool.agent.model, messages, usage, allowed) if k == 0 else usage
            outcome = Outcome(None, over, latency, counted, attempts=tries)
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
        first.usage = capped(pool.agent.model, messages, first.usage, allowed)
    for _ in range(n - len(outcomes)):
        missing = f"provider returned {len(generations)} of {n} samples"
        outcomes.append(Outcome(None, missing, latency, zero_usage(), attempts=tries))
    return outcomes


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
                    cached_usage=None if made is None else token_usage(made),
                )
                for text, message, made in zip(*hit, strict=True)
            ]

    if cache is not None:
        for k in range(len(sizes)):
            await lookup(k)
        if finished and (meter := current_meter()) is not None:
            meter.cached_calls += 1  # as usage_update counts them: once per call
        if len(finished) == len(sizes):
            hits = [o for k in range(len(sizes)) for o in finished[k]]
            log.info("cache hit for %s: %d sample(s), no request sent", pool.agent.model, len(hits))
            return hits, 0

    async def keep(k: int, outcomes: list[Outcome]) -> None:
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

    async def send(k: int, size: int) -> None:
        await keep(k, await send_request(pool, messages, size, extras))

    deferral = current_deferral()
    batched = 0  # requests answered through a Batch API (sent, in an earlier wave)
    if deferral is not None and deferral.takes(pool.agent.model):
        waiting: list[str] = []
        graph_node = _graph_node()
        for k, size in enumerate(sizes):
            if k not in finished:
                where = graph_node or ""
                answered = _deferred(pool, messages, k, size, extras, deferral, where, waiting)
                if answered is not None:
                    await keep(k, answered)
                    batched += 1
        if waiting and graph_node is not None:  # the node pauses; the wave runner resumes it
            from langgraph.types import interrupt

            interrupt({"kind": "batch", "model": pool.agent.model, "requests": waiting})
        elif waiting:  # a call outside a graph (a judge): it fails this pass, kept nowhere
            for k, size in enumerate(sizes):
                if k not in finished:
                    finished[k] = [
                        Outcome(None, WAITING_FOR_BATCH, 0.0, zero_usage(), attempts=0)
                        for _ in range(size)
                    ]

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
    except ExceptionGroup as failed:  # only MoAInputError escapes send_request: configuration
        raise failed.exceptions[0] from None
    outcomes: list[Outcome] = []
    for k, size in enumerate(sizes):
        if k in finished:
            outcomes.extend(finished[k])
        else:
            late = f"timed out: the layer's deadline of {deadline_s:g}s passed"
            elapsed = time.perf_counter() - start
            outcomes.extend(Outcome(None, late, elapsed, zero_usage()) for _ in range(size))
    return outcomes, len(sent) + batched


WAITING_FOR_BATCH = "waiting for a Batch API wave"


def _graph_node() -> str | None:
    """The graph node this call is made in (part of a deferred request's key); None when it is
    not made inside a graph run (which could pause)."""
    from langgraph.config import get_config

    try:
        return str((get_config().get("metadata") or {}).get("langgraph_node", ""))
    except RuntimeError:  # not inside a graph run
        return None


def _deferred(
    pool: ModelPool,
    messages: list[BaseMessage],
    part: int,
    size: int,
    extras: CallExtras | None,
    deferral: Deferral,
    node: str,
    waiting: list[str],
) -> list[Outcome] | None:
    """Request ``part`` of a call under the batch engine: its outcomes when the deferral holds
    its answer (counted in the meter at the batch price); None when it is to be sent online
    now, or when it waits for a wave (its key added to ``waiting``)."""
    model = pool.get(size)
    runnable = extras.prepare(model) if extras else model
    body = request_body(runnable, messages)
    key = deferral.key(node, part, body)
    answer = deferral.answer(key)
    if answer is None:
        deferral.defer(DeferredRequest(key, pool.agent.model, body, _attempts(pool)))
        waiting.append(key)
        return None
    if answer.online:
        return None
    error = answer.error or "the batch returned no reply"
    replies: list[Any] = []
    if answer.body is not None:
        try:
            replies = list(replies_of(runnable, answer.body))
        except Exception as err:  # a reply the integration cannot read
            error = f"malformed response: {error_text(err)}"
        else:
            error = "malformed response: no reply in the batch result"
    if replies:
        max_tokens = _limit(pool, extras)
        outcomes = _read_reply(
            pool, messages, replies, size, max_tokens, answer.latency_s, answer.attempts
        )
    else:
        outcomes = [
            Outcome(None, error, answer.latency_s, zero_usage(), attempts=answer.attempts)
            for _ in range(size)
        ]
    for outcome in outcomes:
        outcome.batch_part = part
    if (meter := current_meter()) is not None:
        meter.add(pool.agent.model, outcomes[0].usage if outcomes else zero_usage(), batch=True)
    return outcomes


def _attempts(pool: ModelPool) -> int:
    retry = pool.agent.retry or Retry()
    return max(retry.attempts, 1)
