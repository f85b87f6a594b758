"""Callbacks and tracing through ChatMixtureOfAgents, as a tracer and a caller's handlers see them.

A tracer here is a ``BaseTracer`` keeping what it is given; LangSmith itself is a fake endpoint on
loopback that a real ``LANGSMITH_TRACING=true`` process posts its runs to.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar, cast
from uuid import UUID

import pytest
from langchain.agents import create_agent
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import AIMessageChunk, BaseMessage, HumanMessage
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import Runnable, RunnableConfig
from langchain_core.tracers import BaseTracer
from langchain_core.tracers.schemas import Run

from langgraph_moa import Topology
from langgraph_moa.chat_model import INNER_TAG, ChatMixtureOfAgents
from langgraph_moa.testing.fake_openai import FakeOpenAI

ROOT = Path(__file__).resolve().parents[2]
ANSWER = "Answer 1 from agg."
MODEL = "ChatMixtureOfAgents"


def moa() -> ChatMixtureOfAgents:
    """Two proposers, b drawing two samples in one request, and an aggregator."""
    topology = Topology.model_validate(
        {
            "layers": [{"proposers": [{"model": "openai:a"}, {"model": "openai:b", "n": 2}]}],
            "aggregator": {"model": "openai:agg"},
        }
    )
    return ChatMixtureOfAgents(topology=topology, proposal_cache=False)


def chain() -> Runnable[dict[str, str], BaseMessage]:
    return ChatPromptTemplate.from_messages([("human", "{q}")]) | moa()


class Tracer(BaseTracer):
    """Keeps each finished trace: a run without a parent it knows is the root of a new trace."""

    def __init__(self) -> None:
        super().__init__()
        self.traces: list[Run] = []

    def _persist_run(self, run: Run) -> None:
        self.traces.append(run)


def walk(run: Run) -> Iterator[Run]:
    yield run
    for child in run.child_runs:
        yield from walk(child)


def one_model_run(trace: Run) -> Run:
    (model,) = [r for r in walk(trace) if r.name == MODEL]
    return model


def check_one_tree(tracer: Tracer, fake: FakeOpenAI, root: str) -> None:
    """One trace: root > ... > model run > graph > nodes > every provider call."""
    assert [t.name for t in tracer.traces] == [root]
    model = one_model_run(tracer.traces[0])
    (graph,) = model.child_runs
    assert graph.run_type == "chain" and {n.name for n in graph.child_runs} >= {
        "L1/a",
        "L1/b",
        "aggregator",
    }
    inside = list(walk(graph))
    assert all(INNER_TAG in (r.tags or []) for r in inside)
    assert INNER_TAG not in (model.tags or [])
    calls = [r for r in inside if r.run_type == "llm"]
    assert len(calls) == len(fake.requests) == 3
    # the n=2 request is there, with both samples
    (sampled,) = [c for c in calls if c.extra["invocation_params"]["n"] == 2]
    assert sampled.outputs is not None and len(sampled.outputs["generations"][0]) == 2
    assert model.outputs is not None
    assert model.outputs["generations"][0][0]["message"]["kwargs"]["content"] == ANSWER


async def call(way: str, runnable: Runnable[Any, Any], given: Any, config: RunnableConfig) -> str:
    """The answer's text, asked for one way or another (sync ways from a thread)."""
    if way == "invoke":
        return str((await asyncio.to_thread(runnable.invoke, given, config)).content)
    if way == "ainvoke":
        return str((await runnable.ainvoke(given, config)).content)
    if way == "stream":
        chunks = await asyncio.to_thread(lambda: list(runnable.stream(given, config)))
        return "".join(str(c.content) for c in chunks)
    assert way == "astream"
    return "".join([str(c.content) async for c in runnable.astream(given, config)])


WAYS = ["invoke", "ainvoke", "stream", "astream"]


@pytest.mark.parametrize("way", WAYS)
async def test_a_chain_is_one_trace_down_to_every_provider_call(fake: FakeOpenAI, way: str) -> None:
    tracer = Tracer()
    assert await call(way, chain(), {"q": "hi"}, {"callbacks": [tracer]}) == ANSWER
    check_one_tree(tracer, fake, "RunnableSequence")


@pytest.mark.parametrize("way", WAYS)
async def test_the_model_alone_is_one_trace(fake: FakeOpenAI, way: str) -> None:
    tracer = Tracer()
    assert await call(way, moa(), "hi", {"callbacks": [tracer]}) == ANSWER
    check_one_tree(tracer, fake, MODEL)


class Seen(BaseCallbackHandler):
    """A caller's plain handler: which runs start under which parent, and the tokens."""

    def __init__(self) -> None:
        self.parents: dict[UUID, UUID | None] = {}
        self.starts: list[tuple[UUID, UUID | None, list[str]]] = []
        self.tokens: list[str] = []

    def on_chain_start(
        self,
        serialized: dict[str, Any] | None,
        inputs: dict[str, Any] | Any,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        **kwargs: Any,
    ) -> None:
        self.parents[run_id] = parent_run_id

    def ancestors(self, run_id: UUID) -> list[UUID]:
        found = []
        while (parent := self.parents.get(run_id)) is not None:
            found.append(parent)
            run_id = parent
        return found

    def on_chat_model_start(
        self,
        serialized: dict[str, Any],
        messages: list[list[BaseMessage]],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        self.parents[run_id] = parent_run_id
        self.starts.append((run_id, parent_run_id, tags or []))

    def on_llm_new_token(self, token: str, **kwargs: Any) -> None:  # type: ignore[override]
        self.tokens.append(token)


async def test_a_callers_handler_sees_the_inner_runs_and_the_answer_once(
    fake: FakeOpenAI,
) -> None:
    fake.behave("agg", reply=lambda body, n, k: "one two three")
    seen = Seen()
    streamed = [c async for c in moa().astream("hi", {"callbacks": [seen]})]
    assert "".join(str(c.content) for c in streamed) == "one two three"
    model_run, parent, tags = seen.starts[0]
    assert parent is None and INNER_TAG not in tags
    inner = seen.starts[1:]
    assert len(inner) == 3 and all(INNER_TAG in t for _, _, t in inner)
    assert all(model_run in seen.ancestors(run) for run, _, _ in inner)
    # the aggregator streamed its tokens inside, but the handler has them once: the model's
    assert "".join(seen.tokens) == "one two three"


async def test_astream_events_has_the_answer_once_at_the_model(fake: FakeOpenAI) -> None:
    events = [e async for e in chain().astream_events({"q": "hi"})]
    streamed = [e for e in events if e["event"] == "on_chat_model_stream"]
    assert {e["name"] for e in streamed} == {MODEL}
    assert "".join(str(e["data"]["chunk"].content) for e in streamed) == ANSWER
    (model_start,) = [
        e for e in events if e["event"] == "on_chat_model_start" and e["name"] == MODEL
    ]
    inner = [e for e in events if e["event"] == "on_chat_model_end" and INNER_TAG in e["tags"]]
    assert len(inner) == 3  # the provider calls are there, as runs of their own
    assert all(model_start["run_id"] in e["parent_ids"] for e in inner)
    # and a UI showing only the top level filters them by their tag
    top = [e async for e in chain().astream_events({"q": "hi"}, exclude_tags=[INNER_TAG])]
    assert {e["name"] for e in top} == {"RunnableSequence", "ChatPromptTemplate", MODEL}


async def test_an_agent_streaming_messages_gets_the_answer_once(fake: FakeOpenAI) -> None:
    """LangGraph's stream_mode="messages" calls the model with invoke and a streaming
    handler: the answer streams once, from the model's node."""
    fake.behave("agg", reply=lambda body, n, k: "one two three")
    agent = create_agent(moa(), [])
    texts = []
    async for part in agent.astream({"messages": [HumanMessage("hi")]}, stream_mode="messages"):
        message, meta = cast(tuple[BaseMessage, dict[str, Any]], part)
        assert isinstance(message, AIMessageChunk), message
        assert meta["langgraph_node"] == "model"
        texts.append(str(message.content))
    assert "".join(texts) == "one two three"
    assert len([t for t in texts if t]) == 3  # token by token


class _LangSmith(BaseHTTPRequestHandler):
    """LangSmith's ingest API as far as its client needs: /info, then batches of runs."""

    batches: ClassVar[list[dict[str, Any]]] = []

    def log_message(self, *args: Any) -> None:
        pass

    def _reply(self, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        batching = {
            "use_multipart_endpoint": False,  # plain JSON batches
            "size_limit": 100,
            "size_limit_bytes": 20_000_000,
            "scale_up_qsize_trigger": 1000,
            "scale_up_nthreads_limit": 4,
            "scale_down_nempty_trigger": 4,
        }
        self._reply({"version": "test", "batch_ingest_config": batching})

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        if self.path.endswith("/runs/batch"):
            self.batches.append(json.loads(body))
        self._reply({})


@pytest.fixture
def langsmith() -> Iterator[str]:
    _LangSmith.batches = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _LangSmith)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


TRACED = """
import asyncio, sys
from langchain_core.tracers.langchain import wait_for_all_tracers
from tests.integration.test_tracing import chain, moa
if sys.argv[1] == "chain.invoke":
    chain().invoke({"q": "hi"})
elif sys.argv[1] == "model.stream":
    list(moa().stream("hi"))
else:
    asyncio.run(chain().ainvoke({"q": "hi"}))
wait_for_all_tracers()
"""


@pytest.mark.slow
@pytest.mark.parametrize("way", ["chain.invoke", "model.stream", "chain.ainvoke"])
def test_langsmith_receives_one_trace(fake: FakeOpenAI, langsmith: str, way: str) -> None:
    env = dict(os.environ)
    env |= {
        "LANGSMITH_TRACING": "true",
        "LANGSMITH_ENDPOINT": langsmith,
        "LANGSMITH_API_KEY": "ls-not-a-real-key",
    }
    done = subprocess.run(
        [sys.executable, "-c", TRACED, way],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    runs: dict[str, dict[str, Any]] = {}
    for batch in _LangSmith.batches:
        for run in [*batch.get("post", []), *batch.get("patch", [])]:
            runs.setdefault(run["id"], {}).update({k: v for k, v in run.items() if v is not None})
    assert len({r["trace_id"] for r in runs.values()}) == 1
    roots = [r for r in runs.values() if not r.get("parent_run_id")]
    assert len(roots) == 1
    assert all(r["parent_run_id"] in runs for r in runs.values() if r is not roots[0])
    (model,) = [r for r in runs.values() if r["name"] == MODEL]
    (graph,) = [r for r in runs.values() if r.get("parent_run_id") == model["id"]]
    assert INNER_TAG in graph["tags"]
    calls = [r for r in runs.values() if r["run_type"] == "llm" and r is not model]
    assert len(calls) == len(fake.requests) == 3


async def test_an_agents_events_have_the_answer_once(fake: FakeOpenAI) -> None:
    """An agent's model is invoked (not streamed): its answer still streams once, from it."""
    fake.behave("agg", reply=lambda body, n, k: "one two three")
    agent = create_agent(moa(), [])
    events = [e async for e in agent.astream_events({"messages": [HumanMessage("hi")]})]
    streamed = [e for e in events if e["event"] == "on_chat_model_stream"]
    assert {e["name"] for e in streamed} == {MODEL}
    assert "".join(str(e["data"]["chunk"].content) for e in streamed) == "one two three"
    ends = [e for e in events if e["event"] == "on_chat_model_end"]
    assert len([e for e in ends if INNER_TAG in e["tags"]]) == 3
