"""Work done inside a LangChain run, attached to it as its child runs.

A chain's run manager has ``get_child()``: the callbacks for the runs it starts, parented to it.
A chat model's run manager (an LLM run's) has none, since a model is meant to be a leaf; but
``ChatMixtureOfAgents`` runs a whole graph inside its run. This module gives that graph what a
child of a chain would get, so callbacks and tracers see one tree:

- :func:`child_config`: a config whose callbacks are the parent's inheritable handlers, tags
  and metadata, parented to the parent's run, plus a tag marking every run inside;
- :func:`iterate_as_child`: drains an async iterator with that config as the ambient one.
  LangGraph merges the ambient config's callbacks into the ones it is given (so passing the
  config alone would leave the graph's runs beside the parent's run, not under it), and
  LangSmith parents runs by the ambient run; LangChain's own runnables stream a child the same
  way (``set_config_context``, then each step in a task holding that context).

Inside, the answer's tokens would arrive twice (the inner aggregator's, then the model's own), so
a caller's handlers that take tokens see the inner runs start, end and fail, but not their
tokens (:class:`_WithoutTokens`). Tracers (``BaseTracer``: LangSmith's, ``astream_log``'s) and
handlers that ignore tokens are passed on unchanged. LangChain has no way to give a handler only
some of a run's events, hence the small wrapper.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Collection
from contextlib import aclosing
from typing import Any, TypeVar
from uuid import UUID

from langchain_core.callbacks import AsyncCallbackHandler, AsyncCallbackManager
from langchain_core.callbacks.base import BaseCallbackHandler, BaseCallbackManager
from langchain_core.callbacks.manager import BaseRunManager
from langchain_core.outputs import ChatGenerationChunk, GenerationChunk
from langchain_core.runnables import RunnableConfig, ensure_config, patch_config
from langchain_core.runnables.config import set_config_context
from langchain_core.tracers import BaseTracer

T = TypeVar("T")

_NO_TOKENS = {BaseCallbackHandler.on_llm_new_token, AsyncCallbackHandler.on_llm_new_token}


class _WithoutTokens(BaseCallbackHandler):
    """A caller's handler as the runs inside see it: every event but ``on_llm_new_token``."""

    def __init__(self, handler: BaseCallbackHandler) -> None:
        self.handler = handler

    def __getattribute__(self, name: str) -> Any:
        passed = name.startswith(("on_", "ignore_")) or name in ("raise_error", "run_inline")
        if passed and name != "on_llm_new_token":
            return getattr(object.__getattribute__(self, "handler"), name)
        return object.__getattribute__(self, name)

    async def on_llm_new_token(
        self,
        token: str | list[str | dict[str, Any]],
        *,
        chunk: GenerationChunk | ChatGenerationChunk | None = None,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        """An inner call's token: not passed on (a coroutine, so the manager awaits it)."""


def _inside(handler: BaseCallbackHandler) -> BaseCallbackHandler:
    takes_tokens = type(handler).on_llm_new_token not in _NO_TOKENS
    if isinstance(handler, BaseTracer) or not takes_tokens:
        return handler
    return _WithoutTokens(handler)


def child_config(
    parent: BaseRunManager | BaseCallbackManager,
    run_id: UUID,
    *,
    tag: str,
    drop_metadata: Collection[str] = (),
) -> RunnableConfig:
    """The ambient config with callbacks for children of run ``run_id``, whose handlers,
    tags and metadata ``parent`` holds (its run manager, or the manager it was started from).

    Every run inside gets ``tag``; ``drop_metadata`` are keys describing the parent alone.
    """
    handlers = [_inside(h) for h in parent.inheritable_handlers]
    tags = [*parent.inheritable_tags, tag]
    metadata = {k: v for k, v in parent.inheritable_metadata.items() if k not in drop_metadata}
    manager = AsyncCallbackManager(
        handlers=handlers,
        inheritable_handlers=list(handlers),
        parent_run_id=run_id,
        tags=list(tags),
        inheritable_tags=tags,
        metadata=dict(metadata),
        inheritable_metadata=metadata,
    )
    return patch_config(ensure_config(), callbacks=manager)


async def _step(items: AsyncIterator[T]) -> tuple[T] | None:
    """The next item, boxed; None at the end (a task cannot end in StopAsyncIteration)."""
    async for item in items:
        return (item,)
    return None


async def iterate_as_child(items: AsyncIterator[T], config: RunnableConfig) -> AsyncIterator[T]:
    """Drain ``items`` with ``config`` as the ambient config (see the module docstring).

    Each step is a task awaited at once: cancelling the caller cancels it, and closing this
    iterator closes ``items``.
    """
    async with aclosing(items):  # type: ignore[type-var]
        with set_config_context(config) as context:
            while (step := await asyncio.create_task(_step(items), context=context)) is not None:
                yield step[0]
