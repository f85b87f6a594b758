"""``ChatMixtureOfAgents``: a whole MoA topology as one LangChain chat model.

It drops in wherever a chat model goes (chains, agents, LangGraph's prebuilt ReAct agent):
invoke/ainvoke, stream/astream (the final answer's tokens), batch/abatch, ``bind_tools`` (the
tools reach the aggregator only; proposers see tool traffic as a short text digest) and
``with_structured_output``. ``usage_metadata`` sums every call of the run; ``response_metadata``
holds the run's record: layers, critique, usage and cost, ledger, fallback, degraded.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.language_models.chat_models import LangSmithParams
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool
from langgraph.graph.state import CompiledStateGraph
from pydantic import ConfigDict, Field, PrivateAttr

from langgraph_moa.errors import MoARunError
from langgraph_moa.graphs.builder import AGGREGATOR, FALLBACK, build_graph
from langgraph_moa.result import answer_of, result_of
from langgraph_moa.run import AnswerToken, RunFinished, stream_run
from langgraph_moa.spec.topology import DEFAULT_PRESET, Topology, load_preset
from langgraph_moa.sync_loop import iterate_sync, run_sync

__all__ = ["ChatMixtureOfAgents"]

_ANSWERING = (AGGREGATOR, FALLBACK)


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


class ChatMixtureOfAgents(BaseChatModel):
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

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        state: dict[str, Any] = {}
        async for event in stream_run(
            self.graph,
            self._inputs(messages, kwargs, stop),
            tokens=False,
            deadline_s=self.topology.deadline_s,
        ):
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

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        final: dict[str, Any] = {}
        sent: list[str] = []
        async for event in stream_run(
            self.graph, self._inputs(messages, kwargs, stop), deadline_s=self.topology.deadline_s
        ):
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

    # The sync API runs the async one on the process's shared sync loop (see sync_loop), so it
    # also works when called from code that already has a loop running.
    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        return run_sync(lambda: self._agenerate(messages, stop, None, **kwargs))

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        yield from iterate_sync(lambda: self._astream(messages, stop, None, **kwargs))
