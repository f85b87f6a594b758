"""A cancelled run cancels every request it started, a dripping server cannot outlast
``timeout_s``, and a stream cut off mid-answer is a failure, not an answer.

The fake server logs a request whose client closed the connection as ``disconnected``.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from langchain_core.messages import HumanMessage

from langgraph_moa import MoARunError, Topology, build_graph
from langgraph_moa.testing.fake_openai import FakeOpenAI

FAST_RETRY = {"attempts": 1, "initial_s": 0.05, "max_s": 0.1}


def topology(**extra: object) -> Topology:
    spec: dict[str, object] = {
        "layers": [{"proposers": [{"model": "openai:a"}, {"model": "openai:b", "n": 2}]}],
        "aggregator": {"model": "openai:agg"},
        "retry": FAST_RETRY,
    }
    return Topology.model_validate(spec | extra)


async def wait_until(condition: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("stage", ["proposers", "aggregator"])
async def test_cancelling_a_run_closes_every_request_it_started(
    fake: FakeOpenAI, stage: str
) -> None:
    slow = ["a", "b"] if stage == "proposers" else ["agg"]
    for model in slow:
        fake.behave(model, latency_s=30)
    graph = build_graph(topology(), cache=False)
    run = asyncio.ensure_future(graph.ainvoke({"messages": [HumanMessage("Why?")]}))
    expected = 3 if stage == "proposers" else 1  # b has n=2 and no... one request with n
    await wait_until(lambda: sum(len(fake.requests_for(m)) for m in slow) >= min(expected, 2))
    await asyncio.sleep(0.2)
    in_flight = [r for m in slow for r in fake.requests_for(m)]
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    cancelled_at = time.perf_counter()
    await wait_until(lambda: all(r.disconnected for r in in_flight), timeout=5)
    assert time.perf_counter() - cancelled_at < 1.0  # the upstream saw them close at once
    assert all(r.status == 499 for r in in_flight)


@pytest.mark.slow
async def test_a_deadline_cancels_what_is_late_and_keeps_what_finished(fake: FakeOpenAI) -> None:
    fake.behave("b", latency_s=30)
    graph = build_graph(
        topology(
            layers=[
                {
                    "proposers": [{"model": "openai:a"}, {"model": "openai:b"}],
                    "deadline_s": 2.0,
                }
            ]
        ),
        cache=False,
    )
    state = await graph.ainvoke({"messages": [HumanMessage("Why?")]})
    a, b = state["layers"][0]
    assert a["ok"] and not b["ok"] and "deadline of 2s passed" in b["error"]
    (late,) = fake.requests_for("b")
    await wait_until(lambda: late.disconnected, timeout=5)


@pytest.mark.parametrize("streamed", [False, True])
async def test_timeout_s_bounds_the_whole_request(fake: FakeOpenAI, streamed: bool) -> None:
    """A server that drips one byte every 50 ms never trips a read timeout, but must not make a
    request with `timeout_s: 1` last longer than that."""
    model = "agg" if streamed else "a"  # the aggregator streams, proposers do not
    fake.behave(model, drip_s=0.05)
    spec = topology(timeout_s=1, fallback="best_proposal" if streamed else "fail")
    if not streamed:
        spec = topology(
            timeout_s=1,
            layers=[{"proposers": [{"model": "openai:a"}, {"model": "openai:c"}]}],
        )
    graph = build_graph(spec, cache=False)
    started = time.perf_counter()
    state = await graph.ainvoke({"messages": [HumanMessage("Why?")]})
    elapsed = time.perf_counter() - started
    assert elapsed < 3.0, elapsed  # one attempt of 1 s, not the ~15 s the drip takes
    record = state["aggregator"] if streamed else state["layers"][0][0]
    assert not record["ok"] and record["error"].startswith("timed out after 1s")
    assert state["degraded"] is True


async def streamed(graph: object) -> dict:
    """Run as every door does: with the aggregator's tokens streamed (stream_mode messages)."""
    final: dict = {}
    async for mode, data in graph.astream(  # type: ignore[attr-defined]
        {"messages": [HumanMessage("Why?")]}, stream_mode=["messages", "values"]
    ):
        if mode == "values":
            final = data
    return final


async def test_a_truncated_stream_is_a_failed_call(fake: FakeOpenAI) -> None:
    fake.behave("agg", truncate=True)
    graph = build_graph(topology(), cache=False)
    with pytest.raises(MoARunError, match="truncated stream: the connection ended after 18"):
        await streamed(graph)
    fallback = build_graph(topology(fallback="best_proposal"), cache=False)
    state = await streamed(fallback)
    assert state["aggregator"]["ok"] is False and state["degraded"] is True
    assert state["fallback"]["source"] == "L1/a"
    assert state["messages"][-1].content == "Answer 2 from a."  # the 2nd run's proposal
    fake.behave("agg", truncate=False)
    whole = await streamed(graph)
    assert whole["aggregator"]["ok"] and whole["aggregator"]["finish_reason"] == "stop"


async def test_a_run_deadline_cancels_the_whole_run(fake: FakeOpenAI) -> None:
    from langgraph_moa import ChatMixtureOfAgents

    fake.behave("b", latency_s=30)
    llm = ChatMixtureOfAgents(topology=topology(deadline_s=0.5))
    started = time.perf_counter()
    with pytest.raises(MoARunError, match=r"the run's deadline of 0\.5s passed"):
        await llm.ainvoke("Why?")
    assert time.perf_counter() - started < 3.0
    (late,) = fake.requests_for("b")
    await wait_until(lambda: late.disconnected, timeout=5)  # cancelled with the run
    assert fake.requests_for("agg") == []
