"""One run loop for every door: a graph run streamed as typed events.

The CLI, ``ChatMixtureOfAgents``, ``moa serve`` and the batch runner all run a MoA graph the same
way: stream it, show progress, pass the final answer's tokens on, and end with the state, which
is the record of the turn. This module does the streaming once; each door only renders events.

Events, in the order a run produces them:

- :class:`Progress` as proposers start and finish (``{"event": "proposer_started", "node",
  "model", "samples"}`` once per proposer node, then ``{"event": "proposer_finished", "node",
  "sample", "ok", "latency_s", "error"}`` once per sample: an agent with ``n: 3`` finishes
  samples 0, 1 and 2);
- :class:`NodeFinished` with what a node wrote (proposals, critique, the aggregator's record,
  budget ledger, fallback, review), as it finishes;
- :class:`AnswerToken` for each chunk of the final answer (text and tool-call chunks) from the
  aggregator or the fallback model, when ``tokens=True``;
- :class:`ReviewPause` if the run stopped for a person's review (LangGraph ``interrupt``);
- :class:`RunFinished` last, with the final state and the wall time.

A run whose ``deadline_s`` passes ends with :class:`DeadlinePassed` (a ``MoARunError``) carrying
the state as it stood, so a door can still show what finished.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, cast

from langchain_core.messages import AIMessageChunk
from langchain_core.runnables import RunnableConfig
from langgraph.graph.state import CompiledStateGraph
from langgraph.types import Durability, StreamMode

from langgraph_moa.errors import MoARunError
from langgraph_moa.llm.text import text_of
from langgraph_moa.nodes.names import AGGREGATOR, FALLBACK, PREPARE

_ANSWERING = frozenset({AGGREGATOR, FALLBACK})


@dataclass(frozen=True)
class Progress:
    payload: dict[str, Any]

    @property
    def kind(self) -> str:
        return str(self.payload.get("event", ""))

    @property
    def node(self) -> str:
        return str(self.payload.get("node", ""))


@dataclass(frozen=True)
class NodeFinished:
    node: str
    update: dict[str, Any]


@dataclass(frozen=True)
class AnswerToken:
    chunk: AIMessageChunk
    node: str

    @property
    def text(self) -> str:
        return text_of(self.chunk)


@dataclass(frozen=True)
class ReviewPause:
    review: dict[str, Any]


@dataclass(frozen=True)
class RunFinished:
    state: dict[str, Any]
    latency_s: float


class DeadlinePassed(MoARunError):
    """The run's ``deadline_s`` passed before it finished; ``state`` is what it had produced
    (the last state LangGraph reported), ``latency_s`` the wall time."""

    def __init__(
        self, message: str, *, deadline_s: float, state: dict[str, Any], latency_s: float
    ) -> None:
        super().__init__(message)
        self.deadline_s = deadline_s
        self.state = state
        self.latency_s = latency_s


Event = Progress | NodeFinished | AnswerToken | ReviewPause | RunFinished


async def stream_run(
    graph: CompiledStateGraph[Any, Any, Any, Any],
    inputs: Any,
    config: RunnableConfig | None = None,
    *,
    tokens: bool = True,
    durability: Durability | None = None,
    deadline_s: float | None = None,
) -> AsyncIterator[Event]:
    """Run (or resume: ``inputs`` None or a ``Command``) the graph, yielding its events.

    ``tokens=False`` leaves the answer's tokens out (a door that prints only the final record).
    ``deadline_s`` (a topology's ``deadline_s``) bounds the whole run: when it passes, the run is
    cancelled with every request it started, and MoARunError says so (a checkpointed thread
    keeps what finished and can be resumed); the error is a :class:`DeadlinePassed` holding the
    state as it stood.
    """
    start = time.perf_counter()
    modes: list[StreamMode] = ["updates", "values", "custom"]
    if tokens:
        modes.append("messages")
    options: dict[str, Any] = {} if durability is None else {"durability": durability}
    state: dict[str, Any] = {}
    stream = aiter(graph.astream(inputs, config, stream_mode=modes, **options))
    deadline = None if deadline_s is None else asyncio.get_running_loop().time() + deadline_s
    while True:
        try:
            async with asyncio.timeout_at(deadline):
                part = await anext(stream)
        except StopAsyncIteration:
            break
        except TimeoutError:
            await stream.aclose()  # type: ignore[attr-defined]
            assert deadline_s is not None
            raise DeadlinePassed(
                f"the run's deadline of {deadline_s:g}s passed; what had finished is kept",
                deadline_s=deadline_s,
                state=state,
                latency_s=time.perf_counter() - start,
            ) from None
        mode, chunk = cast(tuple[str, Any], part)
        if mode == "values":
            state = chunk
        elif mode == "custom":
            if isinstance(chunk, dict):
                yield Progress(chunk)
        elif mode == "updates":
            for node, update in chunk.items():
                if node == "__interrupt__":  # the run paused: what the review shows
                    for pending in update:
                        value = pending.value
                        if isinstance(value, dict) and value.get("kind") == "review":
                            yield ReviewPause(value)
                    continue
                if node == "__metadata__":  # a resumed run's note on replayed writes
                    continue
                if node == PREPARE:  # its other writes are resets, not news
                    update = {"ledger": (update or {}).get("ledger")}
                yield NodeFinished(node, update or {})
        else:
            message, meta = chunk
            node = meta.get("langgraph_node")
            answering = node in _ANSWERING and isinstance(message, AIMessageChunk)
            if answering and (message.content or message.tool_call_chunks):
                yield AnswerToken(message, node)
    yield RunFinished(state, time.perf_counter() - start)
