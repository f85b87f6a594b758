"""An agent's chat models (:class:`ModelPool`: made on first use, kept per event loop, shared by
agents that differ only in name), the models a run will use made before it starts
(:func:`make_models`), and what one call adds to an agent's settings (:class:`CallExtras`).

Hand-written because LangChain makes a chat model per call site: one model per event loop and
provider key, shared across a topology's layers, is what keeps a run's HTTP connections few.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass
from typing import Any, ClassVar

from langchain_core.language_models import BaseChatModel
from langchain_core.runnables import Runnable

from langgraph_moa.errors import MoAInputError
from langgraph_moa.llm.chat_models import make_chat_model
from langgraph_moa.spec.agent import Agent
from langgraph_moa.spec.providers import (
    PROVIDERS,
    langchain_provider,
    provider_kind,
    requests_for,
)
from langgraph_moa.spec.topology import Topology


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
