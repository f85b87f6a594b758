"""Make one agent's LLM call(s) and turn the outcome into records: text or error, latency, usage.

Failures are caught and returned as records (the graph decides what a failure means); the error
text is one line, shortened, with any configured API key masked.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from dataclasses import dataclass

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage

from langgraph_moa.graphs.state import CallRecord, TokenUsage, Usage, add_usage
from langgraph_moa.pricing import PriceTable
from langgraph_moa.providers import make_chat_model, redact, supports_n
from langgraph_moa.topology import Agent

__all__ = ["ModelPool", "Outcome", "call_agent", "error_text", "usage_update"]

_MAX_ERROR_CHARS = 300


@dataclass
class Outcome:
    """One sample's result. A request that returned n samples yields n outcomes."""

    text: str | None
    error: str | None
    latency_s: float
    usage: TokenUsage
    message: AIMessage | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def zero_usage() -> TokenUsage:
    return {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}


def _usage_of(message: BaseMessage) -> TokenUsage:
    meta = getattr(message, "usage_metadata", None) or {}
    prompt, completion = meta.get("input_tokens", 0), meta.get("output_tokens", 0)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": meta.get("total_tokens", prompt + completion),
    }


def error_text(err: BaseException) -> str:
    """A short single-line description of an exception, safe to store and print."""
    text = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
    text = redact(" ".join(text.split()))
    return text if len(text) <= _MAX_ERROR_CHARS else text[: _MAX_ERROR_CHARS - 1] + "…"


def _outcome_of(message: AIMessage, latency_s: float, usage: TokenUsage) -> Outcome:
    text = message.text if isinstance(message.text, str) else str(message.content)
    if not text.strip():
        return Outcome(None, "empty completion", latency_s, usage)
    return Outcome(text, None, latency_s, usage, message)


class ModelPool:
    """An agent's chat models, built on first use (keys are read only when a call is made) and
    kept per event loop (an HTTP connection pool belongs to the loop that opened it)."""

    def __init__(self, agent: Agent, *, streaming: bool = False) -> None:
        self.agent = agent
        self.streaming = streaming
        self._models: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, dict[int, BaseChatModel]
        ] = weakref.WeakKeyDictionary()

    def get(self, n: int = 1) -> BaseChatModel:
        models = self._models.setdefault(asyncio.get_running_loop(), {})
        if n not in models:
            models[n] = make_chat_model(self.agent, streaming=self.streaming, n=n)
        return models[n]


async def _one(model: BaseChatModel, messages: list[BaseMessage]) -> Outcome:
    start = time.perf_counter()
    try:
        message = await model.ainvoke(messages)
    except Exception as err:
        return Outcome(None, error_text(err), time.perf_counter() - start, zero_usage())
    assert isinstance(message, AIMessage)
    return _outcome_of(message, time.perf_counter() - start, _usage_of(message))


async def _batched(model: BaseChatModel, messages: list[BaseMessage], n: int) -> list[Outcome]:
    """One request with ``n``; its usage is reported once, on the first sample."""
    start = time.perf_counter()
    try:
        result = await model.agenerate([messages])
    except Exception as err:
        error = error_text(err)
        return [Outcome(None, error, time.perf_counter() - start, zero_usage()) for _ in range(n)]
    latency = time.perf_counter() - start
    generations = result.generations[0]
    outcomes = []
    for k, generation in enumerate(generations[:n]):
        message = generation.message  # type: ignore[attr-defined]
        usage = _usage_of(message) if k == 0 else zero_usage()
        outcomes.append(_outcome_of(message, latency, usage))
    for _ in range(n - len(outcomes)):
        outcomes.append(
            Outcome(
                None, f"provider returned {len(generations)} of {n} samples", latency, zero_usage()
            )
        )
    return outcomes


async def call_agent(pool: ModelPool, messages: list[BaseMessage]) -> tuple[list[Outcome], int]:
    """Draw ``agent.n`` samples: one request with ``n`` where the provider allows it, else n.

    Returns the samples and how many requests were made.
    """
    n = pool.agent.n
    if n == 1:
        return [await _one(pool.get(), messages)], 1
    if supports_n(pool.agent):
        return await _batched(pool.get(n), messages, n), 1
    model = pool.get()
    return list(await asyncio.gather(*(_one(model, messages) for _ in range(n)))), n


def usage_update(model: str, outcomes: list[Outcome], requests: int, prices: PriceTable) -> Usage:
    """The state's usage delta for these outcomes (a failed request counts, with 0 tokens)."""
    prompt = sum(o.usage["prompt_tokens"] for o in outcomes)
    completion = sum(o.usage["completion_tokens"] for o in outcomes)
    total = sum(o.usage["total_tokens"] for o in outcomes)
    delta: Usage = {
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "total_tokens": 0,
        "cost_usd": None,
        "unpriced": [],
        "by_model": {
            model: {
                "calls": requests,
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": total,
                "cost_usd": prices.cost(model, prompt, completion),
            }
        },
    }
    return add_usage(None, delta)


def call_record(agent: Agent, node: str, outcome: Outcome) -> CallRecord:
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
    }
