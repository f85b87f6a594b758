"""``AsyncChatModel``: a LangChain chat model written once, async; its sync entry points run the
async core on the process's shared sync loop (:mod:`langgraph_moa.sync_loop`).

Both chat models of the package are async at heart (``ChatMixtureOfAgents`` runs a graph, the
embedded ``ChatLocalLlama`` hands llama.cpp's blocking generation to a worker thread it can stop
between tokens). A subclass writes two coroutines, :meth:`AsyncChatModel._answer` (the whole
reply) and :meth:`AsyncChatModel._answer_chunks` (the reply as it comes); this class maps
LangChain's four entry points onto them:

- ``_agenerate``/``_generate``: the whole reply; the sync one waits for it on the shared loop.
- ``_astream``/``_stream``: the chunks; the sync one hands them to the caller's thread as they
  come, and stopping early (or an interrupt) cancels the producer with every request it started.
- Given the run's manager (LangChain passes it to ``_generate``/``_agenerate``; a model that
  answers an invoke by streaming passes it on to ``_stream``/``_astream``), the stream reports
  each chunk's token to it, on the caller's side: a sync call's handlers run in the caller's
  thread, as they would for any LangChain model.
- :meth:`AsyncChatModel._run_context` is called with the run's manager before anything runs,
  in the caller's thread, for what the core needs from the run (its children's config).

LangChain's own defaults go the other way (a sync ``_generate`` run in a thread pool for
``ainvoke``), and ``asyncio.run`` per sync call would make an event loop and HTTP clients per
call; hence this small class.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.language_models.chat_models import (
    agenerate_from_stream,
    generate_from_stream,
)
from langchain_core.messages import BaseMessage
from langchain_core.outputs import ChatGenerationChunk, ChatResult

from langgraph_moa.sync_loop import iterate_sync, run_sync

_RunManager = CallbackManagerForLLMRun | AsyncCallbackManagerForLLMRun


class AsyncChatModel(BaseChatModel):
    """A chat model whose async core serves both LangChain's async and sync entry points."""

    # -- what a subclass writes --------------------------------------------------------------
    async def _answer(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None,
        context: Any,
        kwargs: dict[str, Any],
    ) -> ChatResult:
        """The whole reply (``context``: what :meth:`_run_context` returned)."""
        raise NotImplementedError

    def _answer_chunks(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None,
        context: Any,
        kwargs: dict[str, Any],
    ) -> AsyncIterator[ChatGenerationChunk]:
        """The reply as it comes (``context``: what :meth:`_run_context` returned)."""
        raise NotImplementedError

    def _run_context(self, run_manager: _RunManager | None, kwargs: dict[str, Any]) -> Any:
        """What the core needs from the run, taken in the caller's thread (it may take its own
        plumbing out of ``kwargs``). None unless a subclass needs more."""
        return None

    def _answers_by_streaming(
        self, run_manager: _RunManager | None, kwargs: dict[str, Any]
    ) -> bool:
        """Whether a whole-reply call streams instead, to report its tokens to the run."""
        return False

    # -- LangChain's entry points --------------------------------------------------------------
    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        if self._answers_by_streaming(run_manager, kwargs):
            return await agenerate_from_stream(self._astream(messages, stop, run_manager, **kwargs))
        context = self._run_context(run_manager, kwargs)
        return await self._answer(messages, stop, context, kwargs)

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        context = self._run_context(run_manager, kwargs)
        async for chunk in self._answer_chunks(messages, stop, context, kwargs):
            if run_manager is not None:  # given the run: the tokens are ours to report
                await run_manager.on_llm_new_token(str(chunk.message.content), chunk=chunk)
            yield chunk

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        if self._answers_by_streaming(run_manager, kwargs):
            return generate_from_stream(self._stream(messages, stop, run_manager, **kwargs))
        context = self._run_context(run_manager, kwargs)
        return run_sync(lambda: self._answer(messages, stop, context, kwargs))

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        context = self._run_context(run_manager, kwargs)
        for chunk in iterate_sync(lambda: self._answer_chunks(messages, stop, context, kwargs)):
            if run_manager is not None:  # given the run: the tokens are ours to report
                run_manager.on_llm_new_token(str(chunk.message.content), chunk=chunk)
            yield chunk
