"""``ChatMixtureOfAgents``: a whole MoA topology as one LangChain chat model.

It drops in wherever a chat model goes (chains, agents, LangGraph's prebuilt ReAct agent):
invoke/ainvoke, stream/astream (the final answer's tokens), batch/abatch, ``bind_tools`` (the
tools reach the aggregator only; proposers see tool traffic as a short text digest) and
``with_structured_output``. ``usage_metadata`` sums every call of the run; ``response_metadata``
holds the run's record: layers, critique, usage and cost, ledger, fallback, degraded.

Callbacks and tracing: the graph runs as a child of the model's own run, sync or async, called
directly or in a chain (see :mod:`langgraph_moa.child_runs`), so tracers and the caller's
handlers see one tree: model run > graph > nodes > provider calls, every run inside tagged
:data:`INNER_TAG`. The answer's tokens stream once, from the model's run.

LangChain hands the run's manager to ``_generate``/``_agenerate`` only (``stream``/``astream``
and an ``invoke`` that streams for a handler call ``_stream``/``_astream`` without it). So
``stream``/``astream`` set up the run's callbacks and id first and pass the children's config
on, and an ``invoke`` with a streaming handler answers through ``_generate``/``_agenerate``,
which stream the tokens to the run themselves, as LangChain's own integrations do. The sync
entry points run the async ones on the process's shared loop
(:class:`~langgraph_moa.llm.async_chat_model.AsyncChatModel`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

from langchain_core.callbacks import (
    AsyncCallbackManager,
    AsyncCallbackManagerForLLMRun,
    CallbackManager,
    CallbackManagerForLLMRun,
)
from langchain_core.language_models import LanguageModelInput
from langchain_core.language_models.chat_models import LangSmithParams
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable, RunnableConfig, ensure_config
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool
from langchain_core.utils.uuid import uuid7
from langgraph.graph.state import CompiledStateGraph
from pydantic import ConfigDict, Field, PrivateAttr

from langgraph_moa.child_runs import child_config, iterate_as_child
from langgraph_moa.errors import MoARunError
from langgraph_moa.graphs.builder import build_graph
from langgraph_moa.graphs.names import AGGREGATOR, FALLBACK
from langgraph_moa.llm.async_chat_model import AsyncChatModel
from langgraph_moa.result import answer_of, result_of
from langgraph_moa.run import AnswerToken, Event, RunFinished, stream_run
from langgraph_moa.spec.topology import DEFAULT_PRESET, Topology, load_preset

_ANSWERING = (AGGREGATOR, FALLBACK)

INNER_TAG = "moa:inner"
"""The tag on every run inside a ChatMixtureOfAgents run: graph, nodes, provider calls."""

_CHILDREN = "moa_children_config"
"""The call option carrying the children's config from stream()/astream() to _stream/_astream."""

# The metadata LangChain adds to the model's run to describe it (provider, model, temperature):
# true of the mixture, not of the calls inside it.
_OWN_METADATA = frozenset(LangSmithParams.__annotations__)


def _usage_metadata(state: dict[str, Any]) -> UsageMetadata:
    usage = state.get("usage") or {}
    return UsageMetadata(
        input_tokens=usage.get("prompt_tokens", 0),
        output_tokens=usage.get("completion_tokens", 0),
        total_tokens=usage.get("total_tokens", 0),
    )


def _record(state: dict[str, Any]) -> dict[str, Any]:
    record = result_of(state)  # type: ignore[arg-type]
    record.pop("answer")
    record.pop("latency_s")
    return record | {"model_name": "mixture-of-agents", "cost_usd": record["usage"]["cost_usd"]}


class ChatMixtureOfAgents(AsyncChatModel):
    """A Mixture-of-Agents topology behaving as a single chat model."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    topology: Topology = Field(default_factory=lambda: load_preset(DEFAULT_PRESET))
    proposal_cache: Any = Field(
        default=True, exclude=True, description="The proposer-call cache: see build_graph(cache=)"
    )
    _graph: CompiledStateGraph[Any, Any, Any, Any] | None = PrivateAttr(default=None)

    @classmethod
    def from_preset(cls, name: str, **kwargs: Any) -> ChatMixtureOfAgents:
        return cls(topology=load_preset(name), **kwargs)

    @property
    def _llm_type(self) -> str:
        return "mixture-of-agents"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"topology": self.topology.name}

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        """What tracers show for this model: the topology's name, and the aggregator's
        sampling settings (the only stage call-time options reach)."""
        params = super()._get_ls_params(stop=stop, **kwargs)
        params["ls_provider"] = "langgraph-moa"
        params["ls_model_name"] = kwargs.get("model") or self.topology.name
        params["ls_temperature"] = kwargs.get("temperature", self.topology.aggregator.temperature)
        params["ls_max_tokens"] = kwargs.get("max_tokens", self.topology.aggregator.max_tokens)
        return params

    @property
    def graph(self) -> CompiledStateGraph[Any, Any, Any, Any]:
        """The LangGraph graph each call runs (no checkpointer: a call is self-contained)."""
        if self._graph is None:
            self._graph = build_graph(self.topology, cache=self.proposal_cache)
        return self._graph

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        *,
        tool_choice: str | dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Give the aggregator these tools; the answer may then carry ``tool_calls``."""
        formatted = [convert_to_openai_tool(t) for t in tools]
        if tool_choice == "any":
            tool_choice = "required"
        return super().bind(tools=formatted, tool_choice=tool_choice, **kwargs)

    @staticmethod
    def _inputs(
        messages: list[BaseMessage], kwargs: dict[str, Any], stop: list[str] | None = None
    ) -> dict[str, Any]:
        options = {k: kwargs[k] for k in ("temperature", "max_tokens") if kwargs.get(k) is not None}
        if stop:  # the final answer stops there (the proposals are not cut)
            options["stop"] = list(stop)
        return {
            "messages": messages,
            "tools": kwargs.get("tools") or None,
            "tool_choice": kwargs.get("tool_choice"),
            "aggregator_options": options or None,
        }

    def _run_context(
        self,
        run_manager: CallbackManagerForLLMRun | AsyncCallbackManagerForLLMRun | None,
        kwargs: dict[str, Any],
    ) -> RunnableConfig | None:
        """The config of the runs inside: made from the run's manager when given one, else the
        one stream()/astream() passed on (None when called outside LangChain's entry points)."""
        pinned: RunnableConfig | None = kwargs.pop(_CHILDREN, None)
        if run_manager is None:
            return pinned
        run_id = run_manager.run_id
        return child_config(run_manager, run_id, tag=INNER_TAG, drop_metadata=_OWN_METADATA)

    def _pin(
        self,
        config: RunnableConfig | None,
        manager_cls: type[CallbackManager | AsyncCallbackManager],
    ) -> tuple[RunnableConfig, RunnableConfig]:
        """The run's config with its callbacks set up and its id chosen, and its children's
        config (one tracer instance for both, so the children find their parent)."""
        config = ensure_config(config)
        manager = manager_cls.configure(
            config.get("callbacks"),
            inheritable_tags=config.get("tags"),
            inheritable_metadata=config.get("metadata"),
        )
        run_id = config.get("run_id") or uuid7()
        children = child_config(manager, run_id, tag=INNER_TAG)
        return {**config, "callbacks": manager, "run_id": run_id}, children

    def _get_invocation_params(
        self, stop: list[str] | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        kwargs.pop(_CHILDREN, None)  # plumbing, not an option of the call
        return super()._get_invocation_params(stop=stop, **kwargs)

    def _should_stream(
        self,
        *,
        async_api: bool,
        run_manager: CallbackManagerForLLMRun | AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> bool:
        # Asked with a run open (an invoke): answer through _agenerate/_generate, which are
        # given the run and stream to it when a handler wants tokens (see the module docstring).
        if run_manager is not None:
            return False
        return super()._should_stream(async_api=async_api, **kwargs)

    def _answers_by_streaming(
        self,
        run_manager: CallbackManagerForLLMRun | AsyncCallbackManagerForLLMRun | None,
        kwargs: dict[str, Any],
    ) -> bool:
        """Whether a handler of an invoke's run wants its tokens."""
        if run_manager is None:
            return False
        return super()._should_stream(async_api=True, run_manager=run_manager, **kwargs)

    def _events(
        self,
        messages: list[BaseMessage],
        kwargs: dict[str, Any],
        children: RunnableConfig | None,
        stop: list[str] | None,
        *,
        tokens: bool,
    ) -> AsyncIterator[Event]:
        events = stream_run(
            self.graph,
            self._inputs(messages, kwargs, stop),
            tokens=tokens,
            deadline_s=self.topology.deadline_s,
        )
        return events if children is None else iterate_as_child(events, children)

    async def _answer(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None,
        context: Any,
        kwargs: dict[str, Any],
    ) -> ChatResult:
        children: RunnableConfig | None = context
        state: dict[str, Any] = {}
        async for event in self._events(messages, kwargs, children, stop, tokens=False):
            if isinstance(event, RunFinished):
                state = event.state
        answer = state["messages"][-1]
        if not isinstance(answer, AIMessage):
            raise MoARunError("the mixture of agents produced no answer")
        message = AIMessage(
            content=answer.content,
            tool_calls=answer.tool_calls,
            usage_metadata=_usage_metadata(state),
            response_metadata=_record(state),
            id=answer.id,
        )
        return ChatResult(generations=[ChatGeneration(message=message)])

    async def _answer_chunks(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None,
        context: Any,
        kwargs: dict[str, Any],
    ) -> AsyncIterator[ChatGenerationChunk]:
        children: RunnableConfig | None = context
        final: dict[str, Any] = {}
        sent: list[str] = []
        async for event in self._events(messages, kwargs, children, stop, tokens=True):
            if isinstance(event, AnswerToken):  # only the final answer streams
                chunk = event.chunk
                sent.append(event.text)
                yield ChatGenerationChunk(
                    message=AIMessageChunk(
                        content=chunk.content, tool_call_chunks=chunk.tool_call_chunks
                    )
                )
            elif isinstance(event, RunFinished):
                final = event.state
        answer, streamed = answer_of(final), "".join(sent)  # type: ignore[arg-type]
        if answer != streamed and answer.startswith(streamed):
            # an answer that was not written token by token (a voted or selected candidate,
            # the fallback's best proposal) arrives whole
            yield ChatGenerationChunk(message=AIMessageChunk(content=answer[len(streamed) :]))
        yield ChatGenerationChunk(
            message=AIMessageChunk(
                content="",
                usage_metadata=_usage_metadata(final),
                response_metadata=_record(final),
                chunk_position="last",
            )
        )

    async def astream(
        self,
        input: LanguageModelInput,
        config: RunnableConfig | None = None,
        *,
        stop: list[str] | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[AIMessageChunk]:
        config, children = self._pin(config, AsyncCallbackManager)
        kwargs[_CHILDREN] = children
        async for chunk in super().astream(input, config, stop=stop, **kwargs):
            yield chunk

    def stream(
        self,
        input: LanguageModelInput,
        config: RunnableConfig | None = None,
        *,
        stop: list[str] | None = None,
        **kwargs: Any,
    ) -> Iterator[AIMessageChunk]:
        config, children = self._pin(config, CallbackManager)
        kwargs[_CHILDREN] = children
        yield from super().stream(input, config, stop=stop, **kwargs)
