"""The MoA graph end to end through the real ChatOpenAI client against the fake HTTP server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.memory import InMemorySaver

from langgraph_moa import MoARunError, Topology, build_graph, load_preset
from langgraph_moa.nodes.messages import numbered
from langgraph_moa.nodes.prompts import (
    CRITIC_REQUEST_PROMPT,
    CRITIC_SYSTEM_PROMPT,
    CRITIQUE_SECTION,
    SYNTHESIZE_PROMPT,
)
from langgraph_moa.testing.fake_openai import FakeOpenAI


def topo(layers: list[list[dict]], aggregator: str = "openai:agg", **extra: object) -> Topology:
    return Topology.model_validate(
        {
            "layers": [{"proposers": layer} for layer in layers],
            "aggregator": {"model": aggregator},
            **extra,
        }
    )


async def ask(
    topology: Topology, prompt: str = "Why is the sky blue?", config: RunnableConfig | None = None
) -> dict:
    graph = build_graph(topology)
    return await graph.ainvoke({"messages": [HumanMessage(prompt)]}, config)


async def test_layer2_and_aggregator_receive_the_synthesize_prompt(fake: FakeOpenAI) -> None:
    topology = topo(
        [
            [{"model": "openai:a"}, {"model": "openai:b"}],
            [{"model": "openai:c", "system_prompt": "You are terse."}],
        ]
    )
    graph = build_graph(topology)
    state = await graph.ainvoke(
        {"messages": [SystemMessage("Answer in English."), HumanMessage("Why is the sky blue?")]}
    )

    layer1 = [r for r in fake.requests if r.model in ("a", "b")]
    assert [m["role"] for m in layer1[0].messages] == ["system", "user"]
    assert layer1[0].messages[0]["content"] == "Answer in English."  # no references in layer 1

    (c,) = fake.requests_for("c")
    refs = "1. Answer 1 from a.\n2. Answer 1 from b."
    # the shared prefix first (instructions, the user's conversation), the references last
    assert c.messages == [
        {"role": "system", "content": "You are terse.\n\nAnswer in English."},
        {"role": "user", "content": "Why is the sky blue?"},
        {"role": "user", "content": SYNTHESIZE_PROMPT.format(references=refs)},
    ]
    (agg,) = fake.requests_for("agg")
    assert agg.messages == [
        layer1[0].messages[0],
        layer1[0].messages[1],
        {"role": "user", "content": SYNTHESIZE_PROMPT.format(references="1. Answer 1 from c.")},
    ]

    final = state["messages"][-1]
    assert isinstance(final, AIMessage) and final.content == "Answer 1 from agg."
    assert [[p["node"] for p in layer] for layer in state["layers"]] == [
        ["L1/a", "L1/b"],
        ["L2/c"],
    ]
    assert state["degraded"] is False
    assert state["critique"] is None


async def test_failed_proposers_are_left_out_and_recorded(fake: FakeOpenAI) -> None:
    fake.behave("bad", always=400)
    fake.behave("empty", always="empty")
    state = await ask(
        topo([[{"model": "openai:a"}, {"model": "openai:bad"}, {"model": "openai:empty"}]])
    )
    (agg,) = fake.requests_for("agg")
    assert agg.last == SYNTHESIZE_PROMPT.format(references="1. Answer 1 from a.")
    assert "None" not in agg.last
    records = {p["name"]: p for p in state["layers"][0]}
    assert records["a"]["ok"] is True
    assert records["bad"]["ok"] is False and "400" in records["bad"]["error"]
    assert records["empty"] == records["empty"] | {"ok": False, "error": "empty completion"}
    assert state["degraded"] is True
    assert state["messages"][-1].content == "Answer 1 from agg."


async def test_a_layer_with_no_answer_stops_the_run_with_every_reason(fake: FakeOpenAI) -> None:
    fake.behave("a", always=401)
    fake.behave("b", always=404)
    with pytest.raises(
        MoARunError,
        match=r"layer 1 got 0 of 2 proposals, below its quorum of 1 "
        r"\(L1/a: HTTP 401: .*; L1/b: HTTP 404",
    ):
        await ask(topo([[{"model": "openai:a"}, {"model": "openai:b"}]]))
    assert fake.requests_for("agg") == []


async def test_failed_aggregator_fails_the_run_with_its_reason(fake: FakeOpenAI) -> None:
    fake.behave("agg", always=400)
    with pytest.raises(MoARunError, match=r"the aggregator \(openai:agg\) failed: .*400"):
        await ask(topo([[{"model": "openai:a"}]]))


async def test_paper_moa_preset_makes_13_calls(fake: FakeOpenAI) -> None:
    state = await ask(load_preset("moa"))
    assert len(fake.requests) == 13
    assert sum(len(layer) for layer in state["layers"]) == 12
    assert state["usage"]["by_model"]["together:Qwen/Qwen1.5-110B-Chat"]["calls"] == 3
    # every model of the preset has a list price, so the query has a cost
    assert state["usage"]["unpriced"] == []
    assert state["usage"]["cost_usd"] > 0
    assert all(r.body["temperature"] == 0.7 and r.body["max_tokens"] == 512 for r in fake.requests)


async def test_layer_wall_time_is_its_slowest_proposer(fake: FakeOpenAI) -> None:
    latencies = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
    for k, latency in enumerate(latencies):
        fake.behave(f"p{k}", latency_s=latency)
    topology = topo([[{"model": f"openai:p{k}"} for k in range(6)]])
    await ask(topology)  # warm up the client
    start = time.perf_counter()
    await ask(topology)
    elapsed = time.perf_counter() - start
    # Concurrent, not one after the other (the sum would be 2.1 s). The margin is for a busy
    # 2-core machine; speed itself is measured in bench/, not here.
    assert elapsed < 1.6, elapsed
    assert elapsed >= 0.6


async def test_critique_chain(fake: FakeOpenAI) -> None:
    topology = Topology.model_validate(
        {
            "layers": [{"proposers": [{"model": "openai:gen", "n": 3, "temperature": 1.0}]}],
            "critic": {"model": "openai:critic"},
            "aggregator": {"model": "openai:final"},
        }
    )
    state = await ask(topology, "Name a prime.")
    assert [r.model for r in fake.requests] == ["gen", "critic", "final"]
    gen, critic, final = fake.requests
    assert gen.body["n"] == 3 and gen.body["temperature"] == 1.0
    candidates = ["Answer 1.1 from gen.", "Answer 1.2 from gen.", "Answer 1.3 from gen."]
    assert critic.messages == [
        {"role": "system", "content": CRITIC_SYSTEM_PROMPT},
        {
            "role": "user",
            "content": CRITIC_REQUEST_PROMPT.format(
                conversation="[User]\nName a prime.", candidates=numbered(candidates)
            ),
        },
    ]
    assert final.last == SYNTHESIZE_PROMPT.format(
        references=numbered(candidates)
    ) + CRITIQUE_SECTION.format(critique="Answer 1 from critic.")
    assert state["critique"]["text"] == "Answer 1 from critic." and state["critique"]["ok"]
    assert [p["sample"] for p in state["layers"][0]] == [0, 1, 2]


async def test_failed_critic_does_not_block_the_answer(fake: FakeOpenAI) -> None:
    fake.behave("critic", always=400)
    topology = topo([[{"model": "openai:a"}]], critic={"model": "openai:critic"})
    state = await ask(topology)
    (final,) = fake.requests_for("agg")
    assert final.last == SYNTHESIZE_PROMPT.format(references="1. Answer 1 from a.")
    assert state["critique"]["ok"] is False and "400" in state["critique"]["error"]
    assert state["degraded"] is True
    assert state["messages"][-1].content == "Answer 1 from agg."


async def test_n_in_one_request_where_supported(fake: FakeOpenAI) -> None:
    state = await ask(topo([[{"model": "openai:s", "n": 4}]]))
    (request,) = fake.requests_for("s")
    assert request.body["n"] == 4
    texts = [p["text"] for p in state["layers"][0]]
    assert texts == [f"Answer 1.{k} from s." for k in range(1, 5)]
    assert state["usage"]["by_model"]["openai:s"]["calls"] == 1
    # one request's usage counted once, not once per sample
    assert state["usage"]["by_model"]["openai:s"]["completion_tokens"] == 16


async def test_n_as_separate_requests_where_not_supported(fake: FakeOpenAI) -> None:
    fake.behave("llama", supports_n=False)  # as Groq: n > 1 is a 400
    state = await ask(topo([[{"model": "groq:llama", "n": 3}]]))
    requests = fake.requests_for("llama")
    assert len(requests) == 3
    assert all(r.body.get("n", 1) == 1 for r in requests)
    assert all(p["ok"] for p in state["layers"][0])
    assert state["usage"]["by_model"]["groq:llama"]["calls"] == 3
    assert len(fake.requests_for("agg")[0].last.split("\n1. ")) == 2


async def test_multi_turn_sees_the_first_turn_and_its_answer(fake: FakeOpenAI) -> None:
    graph = build_graph(topo([[{"model": "openai:a"}]]), checkpointer=InMemorySaver())
    config: RunnableConfig = {"configurable": {"thread_id": "mt-bench-1"}}
    await graph.ainvoke({"messages": [HumanMessage("Write a haiku.")]}, config)
    state = await graph.ainvoke({"messages": [HumanMessage("Now make it sadder.")]}, config)

    second_a = fake.requests_for("a")[1]
    assert second_a.messages == [
        {"role": "user", "content": "Write a haiku."},
        {"role": "assistant", "content": "Answer 1 from agg."},
        {"role": "user", "content": "Now make it sadder."},
    ]
    assert [m.type for m in state["messages"]] == ["human", "ai", "human", "ai"]
    # the record is of this turn only
    assert len(state["layers"]) == 1 and len(state["layers"][0]) == 1
    assert state["usage"]["by_model"]["openai:a"]["calls"] == 1


async def test_usage_and_cost_from_an_extensible_price_table(fake: FakeOpenAI) -> None:
    topology = topo(
        [[{"model": "openai:a"}, {"model": "openai:b"}]],
        prices={"openai:a": {"input_per_mtok": 1_000_000, "output_per_mtok": 2_000_000}},
    )
    state = await ask(topology, "one two three")
    usage = state["usage"]
    a = usage["by_model"]["openai:a"]
    assert (a["prompt_tokens"], a["completion_tokens"]) == (3, 4)  # the server counts words
    assert a["cost_usd"] == pytest.approx(3 * 1 + 4 * 2)
    assert usage["unpriced"] == ["openai:b", "openai:agg"]
    assert usage["cost_usd"] == pytest.approx(11)
    assert usage["total_tokens"] == sum(m["total_tokens"] for m in usage["by_model"].values())
    record = state["layers"][0][0]
    assert record["usage"] == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}


async def test_aggregator_streams_tokens(fake: FakeOpenAI) -> None:
    fake.behave("agg", reply=lambda body, n, k: "one two three four")
    graph = build_graph(topo([[{"model": "openai:a"}]]))
    tokens = []
    # stream_mode="messages" yields (message, metadata) pairs; langgraph types them dict | Any
    parts = graph.astream({"messages": [HumanMessage("count")]}, stream_mode="messages")
    async for message, meta in cast(AsyncIterator[tuple[BaseMessage, dict[str, Any]]], parts):
        if meta["langgraph_node"] == "aggregator" and message.content:
            tokens.append(message.content)
    assert tokens == ["one", " two", " three", " four"]
    assert fake.requests_for("agg")[0].body["stream"] is True
    assert fake.requests_for("a")[0].body.get("stream") in (None, False)


async def test_empty_prompt_is_refused_before_any_call(fake: FakeOpenAI) -> None:
    from langgraph_moa import MoAInputError

    with pytest.raises(MoAInputError, match="the prompt is empty"):
        await ask(topo([[{"model": "openai:a"}]]), "   ")
    assert fake.requests == []


async def test_missing_key_is_reported_before_any_call(
    fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    from langgraph_moa import MissingCredentialsError

    monkeypatch.delenv("TOGETHER_API_KEY")
    with pytest.raises(MissingCredentialsError, match="TOGETHER_API_KEY is not set"):
        await ask(topo([[{"model": "openai:a"}, {"model": "together:x"}]]))
    assert fake.requests == []


def test_nodes_are_the_topology() -> None:
    graph = build_graph(load_preset("openpipe"))
    nodes = set(graph.get_graph().nodes)
    assert nodes == {
        "__start__",
        "prepare",
        "L1/gpt-4o",
        "L1/join",
        "critic",
        "aggregator",
        "__end__",
    }
    moa = build_graph(load_preset("moa")).get_graph(xray=True)
    proposers = [n for n in moa.nodes if n.startswith("L") and not n.endswith("/join")]
    assert len(proposers) == 12 and "L2/dbrx" in proposers


async def test_concurrent_queries_share_nothing(fake: FakeOpenAI) -> None:
    graph = build_graph(topo([[{"model": "openai:a"}]]))
    states = await asyncio.gather(
        *(graph.ainvoke({"messages": [HumanMessage(f"q{k}")]}) for k in range(5))
    )
    assert all(len(s["messages"]) == 2 for s in states)
    assert len(fake.requests_for("agg")) == 5


def test_langgraph_json_serves_every_preset() -> None:
    import importlib
    import json
    from pathlib import Path

    from langgraph_moa import list_presets

    config = json.loads((Path(__file__).parents[2] / "langgraph.json").read_text())
    assert set(config["graphs"]) == set(list_presets()) | {"moa-custom"}
    for graph_id, target in config["graphs"].items():
        if graph_id == "moa-custom":
            continue  # a factory: tests/test_server.py runs it through the server
        path, attr = target.split(":")
        module = importlib.import_module(
            path.removeprefix("./").removesuffix(".py").replace("/", ".")
        )
        graph = getattr(module, attr)
        assert graph.name == graph_id
        expected = {
            f"L{i}/{a.name}"
            for i, layer in enumerate(load_preset(graph_id).layers, 1)
            for a in layer.proposers
        }
        assert expected <= set(graph.get_graph().nodes)


def test_sync_api_works_too(fake: FakeOpenAI) -> None:
    graph = build_graph(topo([[{"model": "openai:a"}, {"model": "openai:b"}]]))
    state = graph.invoke({"messages": [HumanMessage("hi")]})
    assert state["messages"][-1].content == "Answer 1 from agg."
    updates = [
        node
        for chunk in graph.stream({"messages": [HumanMessage("again")]}, stream_mode="updates")
        for node in chunk
    ]
    assert updates[0] == "prepare" and updates[-1] == "aggregator"
    assert set(updates[1:3]) == {"L1/a", "L1/b"}
